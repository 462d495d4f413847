//! Evasion (issue 9): an attacker who knows tokenwatch is there still gets
//! caught. Each test runs real containerd pods (`support::cri`) whose
//! containers run this test binary as a helper ([`actions`]) that reads the
//! token or dials the API server the ways syscall-tracepoint tools miss, and
//! asserts the alert the user gets, field by field.
//!
//! The pods use the node's network (the harness's pods are `hostNetwork`),
//! so "the API server" is a listener of the test's own on loopback
//! (`127.0.0.1` and `::1`): nothing leaves the machine. The agent learns it
//! from `--api-server` and, for the endpoint case, from an EndpointSlice
//! served by the in-test API server (no kube-apiserver can be installed
//! here). Root only; run by `cargo xtask test`.

#[path = "../support/mod.rs"]
mod support;

mod actions;
mod network;
mod others;
mod paths;
mod scene;

use std::time::Duration;

use scene::{connects_in, reads_in, Scene};
use support::cri::{PodSpec, SA_MOUNT};
use tokenwatch_proto::v1::alert::Evidence;

/// How long an alert may take to arrive.
const ALERT_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn io_uring_opens_and_connects_are_caught() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let pod = scene.run_pod(&PodSpec::new("uring-5d8f7c9b4-q1w2e"));
    let agent = scene.agent(&[&pod]);
    let token = format!("{SA_MOUNT}/token");
    let openat = scene.act(&pod, &["uring-openat", &token]);
    let openat2 = scene.act(&pod, &["uring-openat2", &token]);
    let direct = scene.act(&pod, &["uring-openat-direct", &token]);
    let skip = scene.act(&pod, &["uring-openat-skip", &token]);
    let skip_async = scene.act(&pod, &["uring-openat-skip-async", &token]);
    let v4 = scene.api_v4.to_string();
    let connect = scene.act(&pod, &["uring-connect", &v4]);

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        reads_in(alerts, &pod).len() >= 5 && !connects_in(alerts, &pod).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let reads = reads_in(&stopped.alerts, &pod);
    let by_pid = |pid: u32| reads.iter().filter(move |a| a.process.as_ref().is_some_and(|p| p.ns_pid == pid));
    for (pid, syscall, what) in [
        (openat, "io_uring_openat", "IORING_OP_OPENAT"),
        (openat2, "io_uring_openat2", "IORING_OP_OPENAT2"),
        (direct, "io_uring_openat", "IORING_OP_OPENAT into a direct descriptor"),
        (skip, "io_uring_openat", "IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS, a NOP linked behind"),
        (skip_async, "io_uring_openat", "IORING_OP_OPENAT with IOSQE_CQE_SKIP_SUCCESS|IOSQE_ASYNC, then read(2)"),
    ] {
        let found: Vec<_> = by_pid(pid).collect();
        assert_eq!(found.len(), 1, "{what}: one alert\n{}", scene::describe(&stopped.alerts));
        let alert = found[0];
        scene::assert_in_pod(alert, &pod);
        let Some(Evidence::TokenRead(read)) = &alert.evidence else { panic!("a token read") };
        assert_eq!(read.syscall, syscall, "{what}");
        assert_eq!(read.requested_path, token, "{what}: the path the process passed");
        assert!(read.resolved_path.ends_with("/token"), "{what}: {}", read.resolved_path);
        assert_eq!(read.flags, "O_RDONLY|O_LARGEFILE", "{what}: io_uring adds O_LARGEFILE itself");
        assert_eq!(read.dirfd, -100, "{what}: AT_FDCWD");
        assert_eq!(read.owner_pod, pod.spec().name, "{what}");
    }
    let connects = connects_in(&stopped.alerts, &pod);
    assert_eq!(connects.len(), 1, "IORING_OP_CONNECT: one alert\n{}", scene::describe(&stopped.alerts));
    let alert = connects[0];
    scene::assert_in_pod(alert, &pod);
    assert_eq!(alert.process.as_ref().map(|p| p.ns_pid), Some(connect));
    let Some(Evidence::ApiServerConnect(dial)) = &alert.evidence else { panic!("a connect") };
    assert_eq!((dial.address.as_str(), dial.port), ("127.0.0.1", u32::from(scene.api_v4.port())));
    assert_eq!((dial.hook.as_str(), dial.outcome.as_str()), ("cgroup_connect", "attempted"));
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn tcp_fast_open_without_connect_is_caught() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let pod = scene.run_pod(&PodSpec::new("fastopen-5d8f7c9b4-q1w2e"));
    let agent = scene.agent(&[&pod]);
    let (v4, v6) = (scene.api_v4.to_string(), scene.api_v6.to_string());
    let sendto = scene.act(&pod, &["tfo-sendto", &v4]);
    let sendmsg = scene.act(&pod, &["tfo-sendmsg", &v6]);
    // A plain connect(2) is reported once, by the syscall hook, with its result.
    let plain = scene.act(&pod, &["connect", &v4]);

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| connects_in(alerts, &pod).len() >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let connects = connects_in(&stopped.alerts, &pod);
    assert_eq!(connects.len(), 3, "one alert each:\n{}", scene::describe(&stopped.alerts));
    for (pid, address, port, hook, family) in [
        (sendto, "127.0.0.1", scene.api_v4.port(), "cgroup_connect", "ipv4"),
        (sendmsg, "::1", scene.api_v6.port(), "cgroup_connect", "ipv6"),
        (plain, "127.0.0.1", scene.api_v4.port(), "connect", "ipv4"),
    ] {
        let alert = connects
            .iter()
            .find(|a| a.process.as_ref().is_some_and(|p| p.ns_pid == pid))
            .unwrap_or_else(|| panic!("no alert for {hook} by pid {pid}:\n{}", scene::describe(&stopped.alerts)));
        scene::assert_in_pod(alert, &pod);
        let Some(Evidence::ApiServerConnect(dial)) = &alert.evidence else { panic!("a connect") };
        assert_eq!((dial.address.as_str(), dial.port, dial.family.as_str()), (address, u32::from(port), family));
        assert_eq!(dial.hook, hook, "{alert:?}");
        if hook == "connect" {
            assert_eq!(dial.outcome, "connected");
        }
    }
}
