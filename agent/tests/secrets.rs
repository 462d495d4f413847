//! The planted token: a fake token in the actor's volume, read by a plain
//! `open`, and carried on command lines the way `curl` and `kubectl` carry
//! real ones, and in a reader's environment. No output of the agent may
//! hold it: not stdout, the delivery log, the gRPC stream, OTLP, the
//! agent's own log, the inventory or the advice. What the agent writes is
//! its own alone.

mod support;

use std::{
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, FAKE_TOKEN, SA_DIR},
    agent::{held_alerts, AgentProcess},
    cgroup::TestCgroup,
    otlp_collector::Collector,
};
use tokenwatch_proto::v1::Alert;

/// An opaque (not JWT-shaped) token, as a `--token` flag may carry one.
const OPAQUE_TOKEN: &str = "opaque-planted-s3cr3t-4711";
/// First argument that turns this test binary into a planted reader.
const READER: &str = "__planted";
/// Set once the reader has re-executed itself with its case's command line.
const EXECED_ENV: &str = "TOKENWATCH_TEST_PLANTED_EXECED";
const TIMEOUT: Duration = Duration::from_secs(30);

/// The command lines and environments the token is carried on.
fn case(name: &str) -> (Vec<String>, Vec<(&'static str, String)>) {
    let args: Vec<String> = match name {
        "curl" => vec!["-H".into(), format!("Authorization: Bearer {FAKE_TOKEN}"), "https://10.96.0.1:443/api".into()],
        "kubectl" => vec!["--token".into(), FAKE_TOKEN.into(), "get".into(), "secrets".into()],
        "kubectl-equals" => vec![format!("--token={OPAQUE_TOKEN}"), "get".into(), "pods".into()],
        _ => Vec::new(),
    };
    let env = if name == "env" { vec![("TOKEN", FAKE_TOKEN.to_owned())] } else { Vec::new() };
    (args, env)
}

/// `__planted <case> <path> <release>`: re-executes itself with the
/// case's arguments appended (same pid, so the command line the agent
/// reads is the case's), then reads `path` and stays until `release`
/// exists: the agent reads `/proc` after the event, and a reader gone by
/// then has no command line to leak.
#[ctor::ctor(unsafe)]
fn planted_reader() {
    use std::os::unix::process::CommandExt;
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) != Some(READER) || args.len() < 5 {
        return;
    }
    if std::env::var_os(EXECED_ENV).is_none() {
        let (extra, env) = case(&args[2]);
        let error = Command::new(&args[0]).args(&args[1..5]).args(extra).envs(env).env(EXECED_ENV, "1").exec();
        let _ = writeln!(std::io::stdout(), "fail re-executing the planted reader: {error}");
        std::process::exit(3);
    }
    let code = match std::fs::read(&args[3]) {
        Ok(_) => {
            let _ = support::wait_for(support::scaled(TIMEOUT), || Path::new(&args[4]).exists().then_some(()));
            0
        }
        Err(error) => {
            let _ = writeln!(std::io::stdout(), "fail reading {}: {error}", args[3]);
            1
        }
    };
    std::process::exit(code);
}

fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").map_while(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.is_file() {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out
}

/// Asserts no planted secret is in `text`, which is `what`.
fn assert_clean(what: &str, text: &str) {
    for secret in [FAKE_TOKEN, OPAQUE_TOKEN, "not-a-real-token"] {
        assert!(!text.contains(secret), "a token value in {what}:\n{text}");
    }
}

/// `tokenwatch <args>`, which must succeed: its stdout.
fn tokenwatch(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwatch")).args(args).output().expect("run tokenwatch");
    assert!(output.status.success(), "tokenwatch {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn no_planted_token_reaches_any_output_and_the_files_are_the_agents_alone() {
    let _serial = support::serialise();
    let collector = Collector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("agent");
    let spool = work.join("spool");
    let socket = work.join("grpc.sock");
    let cgroup = TestCgroup::create("planted");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    // Debug logs from every crate: the most the agent will ever say.
    let agent = AgentProcess::start(&[
        "--standalone".into(),
        "--log".into(),
        "debug".into(),
        "--dedup-window-seconds".into(),
        "0".into(),
        "--spool-dir".into(),
        spool.display().to_string(),
        "--grpc-listen".into(),
        format!("unix:{}", socket.display()),
        "--otlp-endpoint".into(),
        collector.endpoint(),
    ]);
    actor.must(&format!("open {SA_DIR}/token"));
    actor.must(&format!("openat2 {SA_DIR}/token"));
    let token = format!("{SA_DIR}/token");
    let mut readers = Vec::new();
    for name in ["curl", "kubectl", "kubectl-equals", "env"] {
        let release = format!("/tmp/release-{name}");
        let args = [READER, name, &token, &release];
        actor.send(&format!("run {}", args.join(" ")));
        let seen = agent.wait_for_alerts(TIMEOUT, |alerts| {
            alerts.iter().any(|a| a.process.as_ref().is_some_and(|p| p.args.get(2).map(String::as_str) == Some(name)))
        });
        // The reader's /tmp is the actor's own: reach it through its root.
        let host_release = format!("/proc/{}/root{release}", actor.pid);
        std::fs::write(&host_release, "").unwrap_or_else(|e| panic!("releasing {name} at {host_release}: {e}"));
        let ran = actor.ran(&args);
        assert!(seen, "the {name} reader's read was missed:\n{}", agent.stderr());
        assert_eq!(ran.status, "0", "the {name} reader: {ran:?}");
        readers.push((name, ran.pid));
    }
    let seen = agent.wait_for_alerts(TIMEOUT, |alerts| {
        alerts.iter().filter(|a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid)).count() >= 2
    });
    assert!(seen, "the actor's reads were missed:\n{}", agent.stderr());
    assert!(
        support::wait_for(TIMEOUT, || (collector.records().len() >= 6).then_some(())).is_some(),
        "the collector got {} records:\n{}",
        collector.records().len(),
        agent.stderr()
    );

    // What a reader of the alert sees in place of the token.
    let alerts = agent.alerts();
    let args_of = |name: &str| -> Vec<String> {
        let alert =
            alerts.iter().find(|a| a.process.as_ref().is_some_and(|p| p.args.get(2).map(String::as_str) == Some(name)));
        alert.and_then(|a| a.process.clone()).and_then(|p| p.args.get(5..).map(<[String]>::to_vec)).unwrap_or_default()
    };
    assert_eq!(args_of("curl"), ["-H", "Authorization: Bearer [REDACTED]", "https://10.96.0.1:443/api"]);
    assert_eq!(args_of("kubectl"), ["--token", "[REDACTED]", "get", "secrets"]);
    assert_eq!(args_of("kubectl-equals"), ["--token=[REDACTED]", "get", "pods"]);

    // Every output, while the agent runs: the stream, OTLP, the inventory
    // and the advice.
    let streamed = held_alerts(&socket, &[]);
    assert!(streamed.len() >= 6, "the stream holds {} alerts", streamed.len());
    assert_clean("the gRPC stream", &serde_json::to_string(&streamed).expect("json"));
    assert_clean("OTLP", &format!("{:?}", collector.records()));
    let server = format!("unix:{}", socket.display());
    assert_clean("the inventory", &tokenwatch(&["inventory", "--server", &server, "-o", "json"]));
    assert_clean("the advice", &tokenwatch(&["advise", "--server", &server, "--accept-short-window"]));
    let socket_mode = std::fs::metadata(&socket).ok().map(|m| m.permissions().mode() & 0o777);

    let stopped = agent.stop(Signal::SIGTERM);
    assert_clean("the agent's log", &stopped.stderr);
    assert_clean(
        "stdout",
        &stopped.alerts.iter().map(|a: &Alert| serde_json::to_string(a).expect("json")).collect::<String>(),
    );
    let files = files_under(&work);
    assert!(!files.is_empty(), "the agent wrote its delivery log");
    for (path, content) in &files {
        assert_clean(&path.display().to_string(), &String::from_utf8_lossy(content));
        let mode = std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}: readable by others", path.display());
    }
    let spool_mode = std::fs::metadata(&spool).expect("spool dir").permissions().mode() & 0o777;
    assert_eq!(spool_mode, 0o700, "the delivery log's directory is the agent's alone");
    assert_eq!(socket_mode.map(|m| m & 0o077), Some(0), "the gRPC socket is the agent's alone: {socket_mode:?}");
    drop(actor);
}
