//! Enforcement (issue 11), with real containerd pods: a policy's `blocks`
//! make the node refuse an API-server connect (`EPERM`) and stop a token
//! read before the process gets a byte (`SIGKILL` at the open's return),
//! in the pods they cover and only there; a dry run refuses nothing and
//! reports everything; a policy change is in force within a second, and
//! nothing stays refused once the agent is gone.
//!
//! The stage is the evasion tests' (`../evasion/scene.rs`): the in-test API
//! server (no kube-apiserver can be installed here) tells the agent the
//! pods' namespaces and ServiceAccounts, the pods use the node's network,
//! and "the API server" is a loopback listener of the test's own. The
//! pods' containers run this test binary as the helper that connects and
//! reads (`../evasion/actions.rs`), through CRI ExecSync, as `kubectl exec`
//! would: so the helper is an exec'd process, and the pod's entrypoint
//! (`reader_command`) is not. Root only; run by `cargo xtask test`.

#[path = "../support/mod.rs"]
mod support;

#[allow(dead_code, reason = "shared with the evasion tests; this target uses part of it")]
#[path = "../evasion/actions.rs"]
mod actions;
#[allow(dead_code, reason = "shared with the evasion tests; this target uses part of it")]
#[path = "../evasion/scene.rs"]
mod scene;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use actions::HELPER;
use nix::{sys::signal::Signal, unistd::Pid};
use scene::{connects_in, reads_in, Scene};
use support::cri::{Pod, PodSpec, SA_MOUNT};
use tokenwatch_proto::v1::{alert::Evidence, Alert, EnforcementAction};

/// How long an alert may take to arrive.
const ALERT_TIMEOUT: Duration = Duration::from_secs(20);

/// Connects from `shop` are refused; token reads by processes exec'd into
/// `shop`'s pods are stopped (the entrypoint's are not).
const BLOCKS: &str = "\
blocks:
  - id: no-api-from-shop
    reason: shop's pods never call the API server
    actions: [apiserver-connect]
    namespaces: [shop]
    service_accounts: [ci]
  - id: no-exec-token-reads
    reason: nobody exec'd into shop reads its token
    actions: [token-read]
    namespaces: [shop]
    exec: true
";

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn forbidden_connect_gets_eperm_forbidden_read_gets_no_byte_and_other_pods_are_untouched() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let allowed = scene.run_pod(&PodSpec::new("web-6f7c9d8b5-a1b2c"));
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), BLOCKS);
    let policy = policy.display().to_string();
    let agent = scene.agent_with(&[&allowed], &["--policy", &policy, "--metrics-listen", "127.0.0.1:0"]);
    // A pod that starts after the policy is loaded is covered too.
    let shop = scene.run_pod(&shop_spec("ctl-5d8f7c9b4-x9y8z"));
    wait_covered(&agent, &shop);
    assert!(
        agent.wait_for_log(&["watching token file", &support::mount_ns_of(shop.pid())], ALERT_TIMEOUT),
        "{}",
        agent.stderr()
    );
    let api = scene.api_v4.to_string();

    let (code, out, err) = helper(&shop, "connect", &api);
    assert_eq!(code, 1, "the connect is refused: {out}{err}");
    assert!(out.contains("Operation not permitted"), "EPERM: {out}{err}");
    let (code, out, err) = helper(&shop, "connect", &scene.api_v6.to_string());
    assert!(code == 1 && out.contains("Operation not permitted"), "IPv6 too (connect6): {out}{err}");
    // io_uring's connect has no connect(2): the same fence refuses it, and
    // the cgroup hook that reports it says so.
    let (code, out, err) = helper(&shop, "uring-connect", &api);
    assert!(code != 0 && out.contains("errno 1"), "io_uring's connect is refused with EPERM: {out}{err}");
    let (code, out, err) = helper(&shop, "uring-openat", &format!("{SA_MOUNT}/token"));
    assert!(code != 0 && !out.contains("ok "), "an io_uring open is stopped too: {out}{err}");
    let (code, out, err) = helper(&shop, "read-print", &format!("{SA_MOUNT}/token"));
    assert_ne!(code, 0, "the reader is killed: {out}{err}");
    assert!(!out.contains(shop.token()) && !out.contains("ok "), "not a byte of the token reached it: {out:?}");
    shop.trigger(); // the entrypoint is not exec'd: its reads go on
    let (code, out, err) = helper(&allowed, "connect", &api);
    assert_eq!(code, 0, "another namespace's pod connects: {out}{err}");
    let (code, out, err) = helper(&allowed, "read-print", &format!("{SA_MOUNT}/token"));
    assert!(code == 0 && out.contains(allowed.token()), "and reads its token: {out}{err}");

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        connects_in(alerts, &shop).len() + connects_in(alerts, &allowed).len() >= 4
            && reads_in(alerts, &shop).len() >= 3
            && !reads_in(alerts, &allowed).is_empty()
    });
    let metrics = support::metrics_addr(&agent.stderr()).map(|addr| support::http_get(&addr, "/metrics").1);
    let stopped = agent.stop(Signal::SIGTERM);
    let all = &stopped.alerts;
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(all), stopped.stderr);

    let connects = connects_in(all, &shop);
    assert_eq!(connects.len(), 3, "{}", scene::describe(all));
    let dial = |alert: &Alert| match &alert.evidence {
        Some(Evidence::ApiServerConnect(dial)) => dial.clone(),
        _ => panic!("a connect"),
    };
    let (syscall, uring): (Vec<&Alert>, Vec<&Alert>) = connects.into_iter().partition(|a| dial(a).hook == "connect");
    for alert in syscall.iter().chain(&uring) {
        assert_eq!(done(alert), Some((EnforcementAction::Blocked, "no-api-from-shop")), "{}", scene::describe(all));
        assert!(alert.summary.contains("refused (EPERM) by block `no-api-from-shop`"), "{}", alert.summary);
    }
    assert_eq!((syscall.len(), uring.len()), (2, 1), "connect(2) v4 and v6, io_uring's: {}", scene::describe(all));
    let syscall = dial(syscall[0]);
    assert_eq!((syscall.result, syscall.outcome.as_str()), (-1, "failed: EPERM"), "the connect's own result");

    let reads = reads_in(all, &shop);
    let killed: Vec<_> = reads.iter().filter(|a| done(a).is_some()).collect();
    assert_eq!(killed.len(), 2, "only the exec'd readers (read(2), io_uring): {}", scene::describe(all));
    for alert in &killed {
        assert_eq!(done(alert), Some((EnforcementAction::Killed, "no-exec-token-reads")));
        assert_eq!(alert.process.as_ref().map(|p| p.comm.as_str()), Some("tokenwatch-evad"));
        assert!(alert.summary.contains("process killed before it could read"), "{}", alert.summary);
    }
    assert!(reads.iter().any(|a| done(a).is_none() && a.process.as_ref().is_some_and(|p| p.comm == "cat")));

    let metrics = metrics.unwrap_or_default();
    for (series, want) in [
        ("tokenwatch_enforcement_actions_total{action=\"ENFORCEMENT_ACTION_BLOCKED\",block=\"no-api-from-shop\"}", 3),
        ("tokenwatch_enforcement_actions_total{action=\"ENFORCEMENT_ACTION_KILLED\",block=\"no-exec-token-reads\"}", 2),
        ("tokenwatch_enforcement_fences", 1),
    ] {
        assert_eq!(support::metric_sample(&metrics, series), Some(want), "{series}:\n{metrics}");
    }

    let untouched: Vec<&Alert> = connects_in(all, &allowed).into_iter().chain(reads_in(all, &allowed)).collect();
    assert!(untouched.len() >= 2 && untouched.iter().all(|a| a.enforcement.is_none()), "{}", scene::describe(all));
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn dry_run_blocks_nothing_and_reports_everything() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let shop = scene.run_pod(&shop_spec("ctl-5d8f7c9b4-d7r9n"));
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), &format!("enforcement: {{ mode: dry-run }}\n{BLOCKS}"));
    let agent = scene.agent_with(&[&shop], &["--policy", &policy.display().to_string()]);
    wait_covered(&agent, &shop);

    let (code, out, err) = helper(&shop, "connect", &scene.api_v4.to_string());
    assert_eq!(code, 0, "a dry run refuses nothing: {out}{err}");
    let (code, out, err) = helper(&shop, "read-print", &format!("{SA_MOUNT}/token"));
    assert!(code == 0 && out.contains(shop.token()), "and kills nothing: {out}{err}");

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        !connects_in(alerts, &shop).is_empty() && !reads_in(alerts, &shop).is_empty()
    });
    let stopped = agent.stop(Signal::SIGTERM);
    let all = &stopped.alerts;
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(all), stopped.stderr);
    let connect = connects_in(all, &shop);
    assert_eq!(done(connect[0]), Some((EnforcementAction::WouldBlock, "no-api-from-shop")));
    let Some(Evidence::ApiServerConnect(dial)) = &connect[0].evidence else { panic!("a connect") };
    assert_eq!(dial.result, 0, "it connected");
    assert!(connect[0].summary.contains("would have been refused (dry run)"), "{}", connect[0].summary);
    let read = reads_in(all, &shop);
    assert_eq!(done(read[0]), Some((EnforcementAction::WouldKill, "no-exec-token-reads")), "{}", scene::describe(all));
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_policy_change_is_in_force_within_a_second_and_nothing_outlives_the_agent() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let shop = scene.run_pod(&shop_spec("ctl-5d8f7c9b4-k3j4h"));
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), BLOCKS);
    let agent = scene.agent_with(&[&shop], &["--policy", &policy.display().to_string()]);
    wait_covered(&agent, &shop);
    let api = scene.api_v4.to_string();
    let connects = || helper(&shop, "connect", &api).0 == 0;
    assert!(!connects(), "blocked at first:\n{}", agent.stderr());

    write_policy(dir.path(), "# no blocks\n");
    let unblocked = after_hangup(&agent, connects);
    note(&format!("policy without blocks: connects again after {unblocked:?}"));
    assert!(unblocked < Duration::from_secs(1), "unblocked after {unblocked:?}:\n{}", agent.stderr());

    write_policy(dir.path(), BLOCKS);
    let blocked = after_hangup(&agent, || !connects());
    note(&format!("blocks back: refused again after {blocked:?}"));
    assert!(blocked < Duration::from_secs(1), "blocked again after {blocked:?}:\n{}", agent.stderr());

    // Killed outright, the agent cannot clean up: the kernel does.
    let stopped = agent.stop(Signal::SIGKILL);
    assert!(connects(), "a fence outlived the agent:\n{}", stopped.stderr);
    let (code, out, err) = helper(&shop, "read-print", &format!("{SA_MOUNT}/token"));
    assert!(code == 0 && out.contains(shop.token()), "a kill outlived the agent: {out}{err}");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn an_image_block_covers_the_containers_of_that_image_only() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let pod = scene.run_pod(&PodSpec::new("web-6f7c9d8b5-i4m6g"));
    let dir = tempfile::tempdir().expect("tempdir");
    // One entry matches this image (a per-container entry: the kernel finds
    // it below the pod's cgroup), one matches none of the node's.
    let text = format!(
        "blocks:\n  - id: no-api-from-busybox\n    reason: r\n    actions: [apiserver-connect]\n    images: [\"{}\"]\n  \
         - id: other-image\n    reason: r\n    actions: [token-read]\n    images: [\"registry.example.com/*:*\"]\n",
        support::cri::IMAGE
    );
    let policy = write_policy(dir.path(), &text);
    let agent = scene.agent_with(&[&pod], &["--policy", &policy.display().to_string()]);
    let pod_name = format!("pod=default/{}", pod.spec().name);
    assert!(
        agent.wait_for_log(&["block entry covers pod", &pod_name, "block=no-api-from-busybox"], ALERT_TIMEOUT),
        "{}",
        agent.stderr()
    );
    let (code, out, err) = helper(&pod, "connect", &scene.api_v4.to_string());
    assert!(code == 1 && out.contains("Operation not permitted"), "refused by the image's entry: {out}{err}");
    let (code, out, err) = helper(&pod, "read-print", &format!("{SA_MOUNT}/token"));
    assert!(code == 0 && out.contains(pod.token()), "the other image's entry covers nothing here: {out}{err}");
    let stopped = agent.stop(Signal::SIGTERM);
    let other = stopped.stderr.lines().any(|l| l.contains("block entry covers pod") && l.contains("block=other-image"));
    assert!(!other, "{}", stopped.stderr);
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_binaries_block_covers_those_executables_and_no_other() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let shop = scene.run_pod(&shop_spec("ctl-5d8f7c9b4-b1n4r"));
    // Tools in the container's writable layer (overlayfs), as an image
    // would ship them: a busybox `cat` and the helper, each a file of its own.
    let copy = format!("mkdir -p /opt/tools && cp /bin/busybox /opt/tools/cat && cp {HELPER} /opt/tools/helper");
    let (code, out, err) = shop.exec(&["sh", "-c", &copy]);
    assert_eq!(code, 0, "copying the tools: {out}{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = "blocks:\n  - id: no-tools\n    reason: the tools never touch the API\n    \
                actions: [token-read, apiserver-connect]\n    namespaces: [shop]\n    binaries: [\"/opt/tools/*\"]\n";
    let policy = write_policy(dir.path(), text);
    // As the DaemonSet runs it: its own /proc is not the node's, and the
    // containers' executables are found through --host-proc.
    let agent = scene.agent_as_daemonset_with(
        &[&shop],
        &["--policy", &policy.display().to_string(), "--metrics-listen", "127.0.0.1:0"],
    );
    let pod_name = format!("pod=shop/{}", shop.spec().name);
    assert!(
        agent.wait_for_log(&["block entry covers pod", &pod_name, "block=no-tools"], ALERT_TIMEOUT),
        "{}",
        agent.stderr()
    );
    let token = format!("{SA_MOUNT}/token");
    let api = scene.api_v4.to_string();

    let (code, out, err) = shop.exec(&["/opt/tools/cat", &token]);
    assert!(
        code != 0 && !out.contains(shop.token()),
        "the listed cat is killed before a byte: {code} {out:?} {err}\n{}",
        agent.stderr()
    );
    let (code, out, err) = shop.exec(&["/bin/cat", &token]);
    assert!(code == 0 && out.contains(shop.token()), "busybox's own cat is another file: {code} {out:?} {err}");
    let (code, out, err) = shop.exec(&["/opt/tools/helper", "__evade", "connect", &api]);
    assert!(code == 1 && out.contains("Operation not permitted"), "the listed helper is refused: {out}{err}");
    let (code, out, err) = helper(&shop, "connect", &api);
    assert_eq!(code, 0, "the helper at its own path is not listed: {out}{err}");

    // A tool that appears later under the glob is covered within a second.
    let (code, out, err) = shop.exec(&["cp", "/bin/busybox", "/opt/tools/head"]);
    assert_eq!(code, 0, "{out}{err}");
    let start = Instant::now();
    while shop.exec(&["/opt/tools/head", &token]).0 == 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "never covered:\n{}", agent.stderr());
    }
    note(&format!("a new file under the glob: covered after {:?}", start.elapsed()));
    assert!(start.elapsed() < Duration::from_secs(1), "covered after {:?}", start.elapsed());

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        connects_in(alerts, &shop).len() >= 2 && reads_in(alerts, &shop).len() >= 3
    });
    let metrics = support::metrics_addr(&agent.stderr()).map(|addr| support::http_get(&addr, "/metrics").1);
    let stopped = agent.stop(Signal::SIGTERM);
    let all = &stopped.alerts;
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(all), stopped.stderr);
    let reads = reads_in(all, &shop);
    let killed: Vec<_> = reads.iter().filter(|a| done(a) == Some((EnforcementAction::Killed, "no-tools"))).collect();
    assert_eq!(killed.len(), 2, "the listed cat and the later head: {}", scene::describe(all));
    // (The exe is not asserted: a `cat` this short-lived is often gone
    // before the agent reads `/proc/<pid>/exe`.)
    let untouched = |a: &&&Alert| done(a).is_none() && a.process.as_ref().is_some_and(|p| p.comm == "cat");
    assert!(reads.iter().any(|a| untouched(&a)), "busybox's cat read, untouched: {}", scene::describe(all));
    let connects = connects_in(all, &shop);
    let refused: Vec<_> = connects.iter().filter(|a| done(a).is_some()).collect();
    assert_eq!(refused.len(), 1, "{}", scene::describe(all));
    assert_eq!(done(refused[0]), Some((EnforcementAction::Blocked, "no-tools")));
    // cat, helper and head, once for each action's slot.
    let metrics = metrics.unwrap_or_default();
    assert_eq!(support::metric_sample(&metrics, "tokenwatch_enforcement_binaries"), Some(6), "{metrics}");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn an_io_uring_open_that_posts_no_completion_is_stopped_before_a_byte() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let shop = scene.run_pod(&shop_spec("ctl-5d8f7c9b4-s9p1n"));
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = write_policy(dir.path(), BLOCKS);
    let agent = scene.agent_with(&[&shop], &["--policy", &policy.display().to_string()]);
    wait_covered(&agent, &shop);
    let token = format!("{SA_MOUNT}/token");
    // IOSQE_CQE_SKIP_SUCCESS: no completion to judge the open at; an io-wq
    // worker opens the token while the process spins on read(2) of the fd
    // it guessed, the hostile way.
    for round in 0..5 {
        let (code, out, err) = helper(&shop, "uring-openat-skip-spin", &token);
        assert!(
            code != 0 && !out.contains(shop.token()),
            "round {round}: the spinning reader got the token: {code} {out:?} {err}\n{}",
            agent.stderr()
        );
    }
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| reads_in(alerts, &shop).len() >= 5);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    for alert in reads_in(&stopped.alerts, &shop) {
        assert_eq!(
            done(alert),
            Some((EnforcementAction::Killed, "no-exec-token-reads")),
            "{}",
            scene::describe(&stopped.alerts)
        );
    }
}

/// One line for the test log (`--nocapture`): timings worth knowing.
#[expect(clippy::print_stderr, reason = "the timings are reported on the test's stderr")]
fn note(line: &str) {
    eprintln!("enforce: {line}");
}

/// Pod `name` in namespace `shop` with ServiceAccount `ci`.
fn shop_spec(name: &str) -> PodSpec {
    PodSpec { namespace: "shop".to_owned(), service_account: "ci".to_owned(), ..PodSpec::new(name) }
}

fn write_policy(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("policy.yaml");
    std::fs::write(&path, text).expect("write policy");
    path
}

/// Runs the helper's `action` in `pod` as an exec'd process.
fn helper(pod: &Pod<'_>, action: &str, arg: &str) -> (i32, String, String) {
    pod.exec(&[HELPER, "__evade", action, arg])
}

/// Waits until the agent says both entries of [`BLOCKS`] cover `pod` (the
/// ServiceAccount is known once the pod store has the pod; until then the
/// runtime's labels name only its namespace).
fn wait_covered(agent: &support::agent::AgentProcess, pod: &Pod<'_>) {
    let pod_name = format!("pod=shop/{}", pod.spec().name);
    for block in ["block=no-api-from-shop", "block=no-exec-token-reads"] {
        assert!(
            agent.wait_for_log(&["block entry covers pod", &pod_name, block], ALERT_TIMEOUT),
            "the agent never covered {pod_name} with {block}:\n{}",
            agent.stderr()
        );
    }
}

/// Sends SIGHUP and returns how long until `holds` first holds.
fn after_hangup(agent: &support::agent::AgentProcess, holds: impl Fn() -> bool) -> Duration {
    let pid = Pid::from_raw(i32::try_from(agent.pid()).expect("pid"));
    let start = Instant::now();
    nix::sys::signal::kill(pid, Signal::SIGHUP).expect("SIGHUP");
    while !holds() {
        assert!(start.elapsed() < Duration::from_secs(10), "never took effect:\n{}", agent.stderr());
    }
    start.elapsed()
}

/// The alert's enforcement as (action, block id).
fn done(alert: &Alert) -> Option<(EnforcementAction, &str)> {
    let done = alert.enforcement.as_ref()?;
    Some((EnforcementAction::try_from(done.action).ok()?, done.block_id.as_str()))
}
