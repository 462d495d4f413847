//! Bad input and secrets: configuration and policy files with syntax
//! errors, wrong types, unknown keys and absurd values are refused at start
//! with file:line:column and exit code 2 (no root needed: they are read
//! before anything is loaded); a live agent (root) keeps the last good
//! policy and numbers on across a kill. (No secret in any output:
//! `secrets.rs`.)

mod support;

use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, SA_DIR},
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
    let (code, stderr) = refused(&["--cri-socket", "tcp://10.0.0.1:1234"]);
    assert_eq!(code, Some(2), "a CRI endpoint that is no unix socket:\n{stderr}");
    assert!(stderr.contains("CRI socket `tcp://10.0.0.1:1234`: give the runtime's unix socket"), "{stderr}");
    let (code, stderr) = refused(&["--config", "/nonexistent/tokenwatch.yaml"]);
    assert_eq!(code, Some(2), "a missing config file is the user's to fix:\n{stderr}");
    assert!(stderr.contains("/nonexistent/tokenwatch.yaml"), "{stderr}");
    // A --host-proc that is not a /proc: the agent cannot tell its own pid
    // on the node, and guessing (pid 1, init) would hide a process.
    let not_proc = dir.path().join("not-proc");
    std::fs::create_dir(&not_proc).expect("mkdir");
    let spool = dir.path().join("spool-host-proc").display().to_string();
    let (code, stderr) =
        refused(&["--standalone", "--host-proc", &not_proc.display().to_string(), "--spool-dir", &spool]);
    assert!(code.is_some_and(|c| c != 0), "refused:\n{stderr}");
    let named = format!("cannot find the agent's own pid on the node from {}/self", not_proc.display());
    assert!(stderr.contains(&named), "{named}:\n{stderr}");
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
        "info,tokenwatch_agent::detect::policy=debug".into(),
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

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn a_runtime_socket_nobody_answers_is_named_once_at_start() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("containerd.sock");
    let agent =
        AgentProcess::start(&["--standalone".into(), "--cri-socket".into(), format!("unix://{}", socket.display())]);
    let stopped = agent.stop(Signal::SIGTERM);
    let warnings: Vec<&str> =
        stopped.stderr.lines().filter(|l| l.contains("cannot reach the container runtime")).collect();
    assert_eq!(warnings.len(), 1, "said once:\n{}", stopped.stderr);
    assert!(warnings[0].contains(&format!("socket={}", socket.display())), "naming the path: {}", warnings[0]);
}
