//! Bad input and secrets: configuration and policy files with syntax
//! errors, wrong types, unknown keys and absurd values are refused at start
//! with file:line:column and exit code 2 (no root needed: they are read
//! before anything is loaded); and a live agent (root) never writes a token
//! it saw, and keeps what it writes to itself.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, FAKE_TOKEN, SA_DIR},
    agent::AgentProcess,
    cgroup::TestCgroup,
};

/// Runs `tokenwatch agent` with `args` to completion: (exit code, stderr).
fn refused(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .arg("agent")
        .args(args)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .expect("run tokenwatch");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn bad_configuration_and_policy_files_exit_2_naming_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let cases = [
        ("config", "syntax.yaml", "stdout: json\nnode-name: \"unterminated\n", ":3:1: found unexpected end of stream"),
        (
            "config",
            "type.yaml",
            "stdout: json\nrescan-interval-seconds: soon\n",
            ":2:26: rescan-interval-seconds: invalid type",
        ),
        (
            "config",
            "unknown.yaml",
            "stdout: json\n\nrescan-intervall-seconds: 3\n",
            ":3:1: unknown field `rescan-intervall-seconds`",
        ),
        ("config", "absurd.yaml", "ring-buffer-kib: 99999999999\n", ":1:18: ring buffer size"),
        ("config", "zero.yaml", "rescan-interval-seconds: 0\n", ":1:26:"),
        (
            "policy",
            "policy-key.yaml",
            "rules:\n  token-read: { enabled: true, sevrity: high }\n",
            ":2:32: rules.token-read: unknown field `sevrity`",
        ),
        (
            "policy",
            "policy-rule.yaml",
            "rules:\n  token-reed: { enabled: false }\n",
            ":2:3: rules: unknown rule `token-reed`",
        ),
        (
            "policy",
            "policy-syntax.yaml",
            "exceptions:\n  - id: x\n   reason: bad indent\n",
            ":2:5: exceptions[0]: missing field `reason`",
        ),
    ];
    for (kind, name, text, expected) in cases {
        let path = write(name, text);
        let flag = if kind == "config" { "--config" } else { "--policy" };
        // A spool directory of its own: a policy is read after the spool
        // opens, and nothing else may be touched.
        let spool = dir.path().join(format!("spool-{name}"));
        let (code, stderr) = refused(&["--standalone", flag, &path, "--spool-dir", &spool.display().to_string()]);
        assert_eq!(code, Some(2), "{name}: exit code 2 for bad input:\n{stderr}");
        assert!(stderr.contains(&format!("{path}{expected}")), "{name}: names {path}{expected}:\n{stderr}");
    }
    let (code, stderr) = refused(&["--rescan-interval-seconds", "-1"]);
    assert_eq!(code, Some(2), "a bad flag:\n{stderr}");
    let (code, stderr) = refused(&["--config", "/nonexistent/tokenwatch.yaml"]);
    assert_eq!(code, Some(2), "a missing config file is the user's to fix:\n{stderr}");
    assert!(stderr.contains("/nonexistent/tokenwatch.yaml"), "{stderr}");
}

/// Every file under `dir`, with its content.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
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

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn no_token_value_reaches_a_log_an_alert_or_a_file_and_the_files_are_the_agents_alone() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let work = dir.path().join("agent");
    let spool = work.join("spool");
    let cgroup = TestCgroup::create("hygiene");
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
        format!("unix:{}", work.join("grpc.sock").display()),
    ]);
    actor.must(&format!("open {SA_DIR}/token"));
    actor.must(&format!("openat2 {SA_DIR}/token"));
    let seen = agent.wait_for_alerts(Duration::from_secs(15), |alerts| {
        alerts.iter().filter(|a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid)).count() >= 2
    });
    let socket_mode = std::fs::metadata(work.join("grpc.sock")).ok().map(|m| m.permissions().mode() & 0o777);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(seen, "the actor's reads were missed:\n{}", stopped.stderr);
    assert!(!stopped.stderr.contains(FAKE_TOKEN), "a token value in the agent's log");
    for alert in &stopped.alerts {
        assert!(!serde_json::to_string(alert).expect("json").contains(FAKE_TOKEN), "a token value in an alert");
    }
    let files = files_under(&work);
    assert!(!files.is_empty(), "the agent wrote its delivery log");
    for (path, content) in &files {
        let text = String::from_utf8_lossy(content);
        assert!(!text.contains(FAKE_TOKEN), "a token value in {}", path.display());
        let mode = std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:o}: readable by others", path.display());
    }
    let spool_mode = std::fs::metadata(&spool).expect("spool dir").permissions().mode() & 0o777;
    assert_eq!(spool_mode, 0o700, "the delivery log's directory is the agent's alone");
    assert_eq!(socket_mode.map(|m| m & 0o077), Some(0), "the gRPC socket is the agent's alone: {socket_mode:?}");
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_policy_reload_with_an_error_keeps_the_old_policy_and_says_why() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.yaml");
    // The actor is this test binary, re-executed: excepted by its exe.
    let exe = std::env::current_exe().expect("the test binary");
    let excepting = format!("exceptions:\n  - id: the-actor\n    reason: test\n    binaries: ['{}']\n", exe.display());
    std::fs::write(&policy, &excepting).expect("write the policy");
    let cgroup = TestCgroup::create("reload");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&[
        "--standalone".into(),
        "--dedup-window-seconds".into(),
        "0".into(),
        "--policy".into(),
        policy.display().to_string(),
        "--log".into(),
        "info,tokenwatch_agent::daemon=debug".into(),
    ]);
    let hangup =
        || nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    let timeout = Duration::from_secs(15);
    let suppressed = |n: usize| {
        support::wait_for(timeout, || (agent.stderr().matches("suppressed by policy").count() >= n).then_some(()))
            .is_some()
    };
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(suppressed(1), "the exception holds:\n{}", agent.stderr());

    std::fs::write(&policy, "exceptions:\n  - id: broken\n    binaries: [\n").expect("write a broken policy");
    hangup();
    let refused = format!("{}:", policy.display());
    assert!(agent.wait_for_log(&["policy reload refused", &refused], timeout), "{}", agent.stderr());
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(suppressed(2), "the old policy stays in force after a bad reload:\n{}", agent.stderr());

    std::fs::write(&policy, "exceptions: []\n").expect("write a policy without exceptions");
    hangup();
    assert!(agent.wait_for_log(&["policy reloaded"], timeout), "{}", agent.stderr());
    actor.must(&format!("open {SA_DIR}/token"));
    let alerted = agent.wait_for_alerts(timeout, |alerts| {
        alerts.iter().any(|a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid))
    });
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(alerted, "the new policy alerts on the actor:\n{}", stopped.stderr);
    let mine = stopped.alerts.iter().filter(|a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid)).count();
    assert_eq!(mine, 1, "only the read after the good reload alerts");
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn after_sigkill_mid_flow_every_alert_written_is_delivered_and_numbering_goes_on() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool").display().to_string();
    let cgroup = TestCgroup::create("crash");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let start = |socket: &str| {
        AgentProcess::start(&[
            "--standalone".into(),
            "--dedup-window-seconds".into(),
            "0".into(),
            "--spool-dir".into(),
            spool.clone(),
            "--grpc-listen".into(),
            format!("unix:{}", dir.path().join(socket).display()),
        ])
    };
    let first = start("first.sock");
    actor.must(&format!("open-many {SA_DIR}/token 3000"));
    let flowing = first.wait_for_alerts(Duration::from_secs(15), |alerts| alerts.len() >= 100);
    let killed = first.stop(Signal::SIGKILL);
    assert!(flowing, "alerts were flowing:\n{}", killed.stderr);
    let printed = killed.alerts.len();
    assert!(printed < 3000, "the kill came while alerts were still flowing ({printed} of 3000 printed)");
    // Printed on stdout means appended to the delivery log first.
    let printed_ids: Vec<(u64, String)> = killed.alerts.iter().map(|a| (a.sequence, a.id.clone())).collect();

    let second = start("second.sock");
    let held = support::agent::held_alerts(&dir.path().join("second.sock"), &[]);
    let held_ids: std::collections::BTreeMap<u64, &str> = held.iter().map(|a| (a.sequence, a.id.as_str())).collect();
    for (sequence, id) in &printed_ids {
        assert_eq!(held_ids.get(sequence), Some(&id.as_str()), "alert {sequence} was written, then lost by SIGKILL");
    }
    let sequences: Vec<u64> = held.iter().map(|a| a.sequence).collect();
    let expected: Vec<u64> = (1..=sequences.len() as u64).collect();
    assert_eq!(sequences, expected, "the log reads back whole, without gaps ({printed} printed before the kill)");
    actor.must(&format!("open {SA_DIR}/token"));
    let mine = |a: &tokenwatch_proto::v1::Alert| {
        a.process.as_ref().is_some_and(|p| p.pid == actor.pid) && a.sequence > sequences.len() as u64
    };
    let resumed = second.wait_for_alerts(Duration::from_secs(15), |alerts| alerts.iter().any(mine));
    let stopped = second.stop(Signal::SIGTERM);
    assert!(resumed, "after the restart new alerts number on from {}:\n{}", sequences.len(), stopped.stderr);
    drop(actor);
}
