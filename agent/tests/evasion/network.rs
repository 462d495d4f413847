//! Reaching the API server by an address a rule written for the ClusterIP
//! misses, and reading or dialling in ways that race a userspace agent: an
//! endpoint address learnt only from the EndpointSlice, IPv6 and
//! IPv4-mapped IPv6, a process that forks, reads and exits at once, a read
//! from a thread that is not the leader, a non-blocking connect.

use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use nix::sys::signal::Signal;
use serde_json::json;
use tokenwatch_proto::v1::{alert::Evidence, Alert};

use super::{
    scene::{self, connects_in, reads_in, Scene},
    support::{
        self,
        cri::{PodSpec, SA_MOUNT},
    },
    ALERT_TIMEOUT,
};

fn by_pid<'a>(alerts: &[&'a Alert], ns_pid: u32) -> Vec<&'a Alert> {
    alerts.iter().copied().filter(|a| a.process.as_ref().is_some_and(|p| p.ns_pid == ns_pid)).collect()
}

fn dial(alert: &Alert) -> &tokenwatch_proto::v1::ApiServerConnect {
    match &alert.evidence {
        Some(Evidence::ApiServerConnect(dial)) => dial,
        _ => panic!("a connect: {alert:?}"),
    }
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_host_network_pod_dialling_the_endpoint_address_and_ipv6_is_caught() {
    let _serial = support::serialise();
    let scene = Scene::start();
    // The API server's own address, as its EndpointSlice publishes it.
    let slice: EndpointSlice = serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "kubernetes",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [scene.api_endpoint.ip().to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "protocol": "TCP", "port": scene.api_endpoint.port()}],
    }))
    .expect("an EndpointSlice");
    scene.api.add_endpointslice(slice);
    // The harness's pods are hostNetwork pods: the node's network namespace.
    let pod = scene.run_pod(&PodSpec::new("hostnet-5d8f7c9b4-q1w2e"));
    let agent = scene.agent(&[&pod]);
    let learnt = format!("endpoint={}", scene.api_endpoint);
    assert!(agent.wait_for_log(&["watching API-server endpoint", &learnt], ALERT_TIMEOUT), "{}", agent.stderr());
    let mapped = format!("[::ffff:127.0.0.1]:{}", scene.api_v4.port());
    let cases = [
        (
            scene.act(&pod, &["connect", &scene.api_endpoint.to_string()]),
            "127.0.0.2",
            scene.api_endpoint.port(),
            "connect",
        ),
        (scene.act(&pod, &["connect", &scene.api_v6.to_string()]), "::1", scene.api_v6.port(), "connect"),
        (scene.act(&pod, &["uring-connect", &scene.api_v6.to_string()]), "::1", scene.api_v6.port(), "cgroup_connect"),
        (scene.act(&pod, &["connect", &mapped]), "::ffff:127.0.0.1", scene.api_v4.port(), "connect"),
        (scene.act(&pod, &["uring-connect", &mapped]), "::ffff:127.0.0.1", scene.api_v4.port(), "cgroup_connect"),
    ];
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| connects_in(alerts, &pod).len() >= cases.len());
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let connects = connects_in(&stopped.alerts, &pod);
    assert_eq!(connects.len(), cases.len(), "one alert each:\n{}", scene::describe(&stopped.alerts));
    for (pid, address, port, hook) in cases {
        let found = by_pid(&connects, pid);
        assert_eq!(found.len(), 1, "{address} by {hook}:\n{}", scene::describe(&stopped.alerts));
        scene::assert_in_pod(found[0], &pod);
        let dial = dial(found[0]);
        assert_eq!((dial.address.as_str(), dial.port, dial.hook.as_str()), (address, u32::from(port), hook));
    }
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn fork_read_exit_a_non_leader_thread_and_a_non_blocking_connect_are_caught() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let pod = scene.run_pod(&PodSpec::new("racer-5d8f7c9b4-q1w2e"));
    let agent = scene.agent(&[&pod]);
    let token = format!("{SA_MOUNT}/token");
    let forker = scene.act(&pod, &["fork-read-exit", &token]);
    let threaded = scene.act(&pod, &["thread-read", &token]);
    let nonblocking = scene.act(&pod, &["connect-nonblocking", &scene.api_v4.to_string()]);
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        reads_in(alerts, &pod).len() >= 2 && !connects_in(alerts, &pod).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let reads = reads_in(&stopped.alerts, &pod);
    assert_eq!(reads.len(), 2, "{}", scene::describe(&stopped.alerts));

    // The child was gone before userspace could look at /proc: the kernel's
    // header still places it in the pod and names its parent.
    let child: Vec<_> = reads
        .iter()
        .filter(|a| a.process.as_ref().is_some_and(|p| p.parents.first().is_some_and(|parent| parent.ns_pid == forker)))
        .collect();
    assert_eq!(child.len(), 1, "the forked child's read:\n{}", scene::describe(&stopped.alerts));
    scene::assert_in_pod(child[0], &pod);

    let thread = by_pid(&reads, threaded);
    assert_eq!(thread.len(), 1, "the thread's read:\n{}", scene::describe(&stopped.alerts));
    scene::assert_in_pod(thread[0], &pod);
    let process = thread[0].process.as_ref().expect("process");
    assert_ne!(process.tid, process.pid, "read by a thread that is not the leader, named by the process's pid");

    let connects = by_pid(&connects_in(&stopped.alerts, &pod), nonblocking);
    assert_eq!(connects.len(), 1, "the non-blocking connect, once:\n{}", scene::describe(&stopped.alerts));
    let dial = dial(connects[0]);
    assert_eq!(dial.hook, "connect");
    assert!(["in_progress", "connected"].contains(&dial.outcome.as_str()), "{dial:?}");
}
