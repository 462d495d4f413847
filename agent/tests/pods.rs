//! Live tests with real containerd pods: the agent places every token read
//! in its pod through CRI (the test's own containerd) and the Kubernetes API
//! (an in-test server speaking the real list/watch protocol, since no
//! kube-apiserver can be installed here). Root only; run by
//! `cargo xtask test`.

mod support;

use std::{fs, time::Duration};

use nix::sys::signal::Signal;
use serde_json::json;
use support::{
    agent::AgentProcess,
    cri::{
        api_view::{api_pod, automount_volume, replicaset_of, NODE},
        Containerd, Pod, PodSpec, IMAGE, SA_MOUNT,
    },
    fake_apiserver::FakeApiServer,
};
use tokenwatch_proto::v1::{alert::Evidence, Alert, ProcessOrigin, Severity, Workload};

const ALERT_TIMEOUT: Duration = Duration::from_secs(20);

/// The agent on this node of the test's cluster: the harness's runtime, the
/// in-test API server (through `kubeconfig`), rescans every second.
fn start_agent(containerd: &Containerd, kubeconfig: &str, extra: &[&str]) -> AgentProcess {
    // As kubelet's --container-runtime-endpoint and crictl write it.
    let socket = format!("unix://{}", containerd.socket().display());
    let base =
        ["--cri-socket", &socket, "--kubeconfig", kubeconfig, "--node-name", NODE, "--rescan-interval-seconds", "1"];
    AgentProcess::start(&base.iter().chain(extra).map(|a| (*a).to_owned()).collect::<Vec<_>>())
}

fn describe(alerts: &[Alert]) -> String {
    alerts.iter().map(|a| serde_json::to_string(a).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The token reads (by `cat`) from one pod's container.
fn reads_in<'a>(alerts: &'a [Alert], pod: &Pod<'_>) -> Vec<&'a Alert> {
    alerts
        .iter()
        .filter(|a| a.container.as_ref().is_some_and(|c| c.id == pod.container_id()))
        .filter(|a| matches!(a.evidence, Some(Evidence::TokenRead(_))))
        .collect()
}

/// Everything an on-call engineer needs, checked field by field.
fn assert_placed(alert: &Alert, pod: &Pod<'_>, deployment: &str, origin: ProcessOrigin) {
    let spec = pod.spec();
    let json = serde_json::to_string(alert).unwrap_or_default();
    assert_eq!(alert.node, NODE, "{json}");
    assert!(alert.missing.is_empty(), "nothing missing: {json}");
    let k8s = alert.kubernetes.as_ref().expect("kubernetes context");
    assert_eq!(
        (k8s.namespace.as_str(), k8s.pod.as_str(), k8s.pod_uid.as_str()),
        (spec.namespace.as_str(), spec.name.as_str(), spec.uid.as_str())
    );
    assert_eq!((k8s.container.as_str(), k8s.image.as_str()), (spec.container_name.as_str(), IMAGE), "{json}");
    assert_eq!(k8s.service_account, spec.service_account);
    assert_eq!(k8s.workload, Some(Workload { kind: "Deployment".into(), name: deployment.into() }), "{json}");
    let process = alert.process.as_ref().expect("process context");
    assert_eq!(process.comm, "cat");
    assert_eq!(process.origin, i32::from(origin), "{json}");
    assert!(!process.parents.is_empty(), "the parent chain: {json}");
    let Some(Evidence::TokenRead(read)) = &alert.evidence else { panic!("a token read: {json}") };
    assert!(
        read.resolved_path.ends_with("/secrets/kubernetes.io/serviceaccount/token")
            || read.resolved_path.contains("/secrets/kubernetes.io/serviceaccount/..20"),
        "{json}"
    );
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn token_reads_in_real_pods_carry_pod_container_image_serviceaccount_workload_and_process() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(FakeApiServer::start());
    let containerd = Containerd::start();
    let checkout_spec = PodSpec {
        namespace: "shop".into(),
        service_account: "checkout".into(),
        container_name: "api".into(),
        ..PodSpec::new("checkout-7f9c8d6b5-x2v9q")
    };
    let checkout = containerd.run_pod(&checkout_spec);
    api.add_replicaset(replicaset_of("shop", "checkout-7f9c8d6b5", "checkout"));
    api.add_pod(api_pod(&checkout, automount_volume(), Some(("checkout", "checkout-7f9c8d6b5"))));
    let doomed_spec = PodSpec { namespace: "shop".into(), ..PodSpec::new("batch-5d8f7c9b4-q1w2e") };
    let doomed = containerd.run_pod(&doomed_spec);
    api.add_replicaset(replicaset_of("shop", "batch-5d8f7c9b4", "batch"));
    api.add_pod(api_pod(&doomed, automount_volume(), Some(("batch", "batch-5d8f7c9b4"))));

    let config = support::kubeconfig(containerd.dir(), api.url());
    let agent = start_agent(&containerd, &config, &[]);
    for pod in [&checkout, &doomed] {
        assert!(
            agent.wait_for_log(&["watching token file", &support::mount_ns_of(pod.pid())], ALERT_TIMEOUT),
            "the agent never found the token of pod {}:\n{}",
            pod.spec().name,
            agent.stderr()
        );
    }
    assert!(support::wait_for(ALERT_TIMEOUT, || (api.watch_requests() > 0).then_some(())).is_some(), "no watch");

    // The entrypoint's shell forks cat, which reads and exits at once.
    checkout.trigger();
    // kubectl exec of a shell, which reads the token: put into the
    // container from outside.
    let (code, _, stderr) = checkout.exec(&["sh", "-c", &format!("cat {SA_MOUNT}/token; true")]);
    assert_eq!(code, 0, "exec sh: {stderr}");
    // A read, then the pod is deleted from the API and the runtime at once.
    let (code, _, stderr) = doomed.exec(&["cat", &format!("{SA_MOUNT}/token")]);
    assert_eq!(code, 0, "exec cat: {stderr}");
    // A process on the node, outside any container, harvests the token
    // from the pod's volume directory.
    let harvested = checkout.volume().token_path();
    fs::read(&harvested).expect("read the pod's token from the node");
    let doomed_container = doomed.container_id().to_owned();
    api.delete_pod("shop", &doomed_spec.name);
    doomed.remove();

    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        reads_in(alerts, &checkout).len() >= 2
            && alerts.iter().any(|a| a.rule == "node-token-harvest")
            && alerts.iter().any(|a| a.container.as_ref().is_some_and(|c| c.id == doomed_container))
    });
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    assert!(stopped.status.success(), "{}", stopped.stderr);

    let reads = reads_in(&stopped.alerts, &checkout);
    assert_eq!(reads.len(), 2, "{}", describe(&stopped.alerts));
    let by_origin = |origin: ProcessOrigin| {
        reads.iter().find(|a| a.process.as_ref().is_some_and(|p| p.origin == i32::from(origin))).copied()
    };
    let entrypoint = by_origin(ProcessOrigin::Entrypoint).expect("the entrypoint's read");
    assert_placed(entrypoint, &checkout, "checkout", ProcessOrigin::Entrypoint);
    let parent = &entrypoint.process.as_ref().expect("process").parents[0];
    assert_eq!((parent.pid, parent.ns_pid), (checkout.pid(), 1), "cat's parent is the container's init");
    let exec = by_origin(ProcessOrigin::Exec).expect("the exec'd read");
    assert_placed(exec, &checkout, "checkout", ProcessOrigin::Exec);
    assert_eq!(exec.severity, i32::from(Severity::High), "token-read raised one step for the exec");
    assert_eq!(exec.severity_reasons, ["exec'd into the container (kubectl exec, nsenter)"]);
    assert_eq!(entrypoint.severity, i32::from(Severity::Medium));
    let parents = &exec.process.as_ref().expect("process").parents;
    assert_eq!(parents[0].comm, "sh", "cat's parent is the exec'd shell");
    assert_ne!(parents[0].ns_pid, parents[0].pid, "the shell is inside the container's pid namespace");
    assert_eq!(parents[1].ns_pid, parents[1].pid, "the shell's parent is a host process (the runtime)");

    let late: Vec<&Alert> =
        stopped.alerts.iter().filter(|a| a.container.as_ref().is_some_and(|c| c.id == doomed_container)).collect();
    assert_eq!(late.len(), 1, "{}", describe(&stopped.alerts));
    let k8s = late[0].kubernetes.as_ref().expect("kubernetes");
    assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str()), ("shop", doomed_spec.name.as_str()), "{late:?}");
    assert_eq!((k8s.container.as_str(), k8s.image.as_str()), ("main", IMAGE), "{late:?}");
    assert_eq!(k8s.service_account, "default");
    assert_eq!(k8s.workload, Some(Workload { kind: "Deployment".into(), name: "batch".into() }));

    let harvest: Vec<&Alert> = stopped.alerts.iter().filter(|a| a.rule == "node-token-harvest").collect();
    assert_eq!(harvest.len(), 1, "{}", describe(&stopped.alerts));
    let harvest = harvest[0];
    assert_eq!(harvest.process.as_ref().map(|p| p.pid), Some(std::process::id()));
    assert_eq!(harvest.severity, i32::from(Severity::High));
    let Some(Evidence::TokenRead(read)) = &harvest.evidence else { panic!("a token read") };
    assert_eq!(read.requested_path, harvested.display().to_string());
    assert_eq!((read.owner_namespace.as_str(), read.owner_pod.as_str()), ("shop", checkout_spec.name.as_str()));
    assert_eq!(
        (read.owner_pod_uid.as_str(), read.owner_service_account.as_str()),
        (checkout_spec.uid.as_str(), "checkout")
    );
    assert!(harvest.summary.ends_with(&format!("of pod shop/{}", checkout_spec.name)), "{}", harvest.summary);
    assert!(
        stopped
            .alerts
            .iter()
            .filter(|a| a.rule == "token-read")
            .all(|a| a.process.as_ref().is_some_and(|p| p.pid != std::process::id())),
        "the node's read is not also a plain token-read"
    );
    drop(checkout);
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_projected_token_at_its_own_mount_path_is_watched_through_rotations() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(FakeApiServer::start());
    let containerd = Containerd::start();
    let spec = PodSpec {
        namespace: "vault".into(),
        projected: Some(("/var/run/secrets/tokens".into(), "vault-token".into())),
        ..PodSpec::new("vault-agent-6b8d9f7c5-z9x8c")
    };
    let mut pod = containerd.run_pod(&spec);
    api.add_replicaset(replicaset_of("vault", "vault-agent-6b8d9f7c5", "vault-agent"));
    // The pod's author also declares "tokens" at the node's own files: a
    // pod spec must not point the agent at anything outside that pod's
    // token volumes.
    let mut declared = api_pod(&pod, automount_volume(), Some(("vault-agent", "vault-agent-6b8d9f7c5")));
    let hostile = json!({"volumes": [
        {"name": "steer-etc", "projected": {"sources": [{"serviceAccountToken": {"path": "hostname"}}]}},
        {"name": "steer-os", "projected": {"sources": [{"serviceAccountToken": {"path": "os-release"}}]}}],
        "volumeMounts": [{"name": "steer-etc", "mountPath": "/etc"}, {"name": "steer-os", "mountPath": "/usr/lib"}]});
    let spec_of = declared.spec.as_mut().expect("a pod spec");
    let extra_volumes: Vec<_> = serde_json::from_value(hostile["volumes"].clone()).expect("volumes");
    spec_of.volumes.get_or_insert_with(Vec::new).extend(extra_volumes);
    let extra_mounts: Vec<_> = serde_json::from_value(hostile["volumeMounts"].clone()).expect("mounts");
    spec_of.containers[0].volume_mounts.get_or_insert_with(Vec::new).extend(extra_mounts);
    // Every read counts here: no merging of repeats.
    api.add_pod(declared);
    let config = support::kubeconfig(containerd.dir(), api.url());
    let agent = start_agent(&containerd, &config, &["--dedup-window-seconds", "0"]);
    // Learnt from the pod spec: the projected volume's mountPath.
    assert!(
        agent.wait_for_log(&["watching token file", "path=/var/run/secrets/tokens/vault-token"], ALERT_TIMEOUT),
        "the projected token was never watched:\n{}",
        agent.stderr()
    );
    let projected = "/var/run/secrets/tokens/vault-token";
    // The node's files and the container's own, read where the spec
    // claimed tokens: before the pod's token reads, so an alert for them
    // would arrive first.
    fs::read("/etc/hostname").expect("the node's /etc/hostname");
    fs::read("/usr/lib/os-release").expect("the node's /usr/lib/os-release");
    assert_eq!(pod.exec(&["cat", "/etc/hostname"]).0, 0, "the container's /etc/hostname");
    let read = |pod: &Pod<'_>| {
        let (code, _, stderr) = pod.exec(&["cat", projected]);
        assert_eq!(code, 0, "exec cat: {stderr}");
    };
    read(&pod);
    // Rotations, read at once: no rescan has seen the new inodes.
    let first = pod.rotate_projected();
    read(&pod);
    let second = pod.rotate_projected();
    read(&pod);
    // Not token theft: the default volume's ca.crt.
    let (code, _, _) = pod.exec(&["cat", &format!("{SA_MOUNT}/ca.crt")]);
    assert_eq!(code, 0);

    let reads = |alerts: &[Alert]| reads_in(alerts, &pod).len();
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| reads(alerts) >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let steered = |path: &str| path == "/etc/hostname" || path == "/usr/lib/os-release";
    let steered_alerts: Vec<&Alert> = stopped
        .alerts
        .iter()
        .filter(|a| matches!(&a.evidence, Some(Evidence::TokenRead(r)) if steered(&r.watched_path)))
        .collect();
    assert!(steered_alerts.is_empty(), "a pod spec pointed the agent at the node's files:\n{steered_alerts:?}");
    assert!(!stopped.stderr.contains("path=/etc/hostname"), "{}", stopped.stderr);
    let alerts = reads_in(&stopped.alerts, &pod);
    assert_eq!(alerts.len(), 3, "three token reads, no ca.crt:\n{}", describe(&stopped.alerts));
    let resolved: Vec<String> = alerts
        .iter()
        .map(|a| match &a.evidence {
            Some(Evidence::TokenRead(read)) => read.resolved_path.clone(),
            _ => String::new(),
        })
        .collect();
    assert!(resolved[1].ends_with(&format!("/{first}/vault-token")), "{resolved:?}");
    assert!(resolved[2].ends_with(&format!("/{second}/vault-token")), "{resolved:?}");
    for alert in alerts {
        let Some(Evidence::TokenRead(read)) = &alert.evidence else { panic!("a token read") };
        assert_eq!(read.requested_path, projected);
        assert_eq!(read.watched_path, projected);
        assert_eq!(read.owner_pod, spec.name);
    }
    drop(pod);
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_policy_exception_silences_exactly_what_it_names() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(FakeApiServer::start());
    let containerd = Containerd::start();
    let pod_spec =
        |name: &str, sa: &str| PodSpec { namespace: "shop".into(), service_account: sa.into(), ..PodSpec::new(name) };
    let checkout = containerd.run_pod(&pod_spec("checkout-7f9c8d6b5-x2v9q", "checkout"));
    let cart = containerd.run_pod(&pod_spec("cart-5c6d7e8f9-a1b2c", "cart"));
    for (pod, deployment) in [(&checkout, "checkout"), (&cart, "cart")] {
        let replicaset = pod.spec().name.rsplit_once('-').expect("a pod-template-hash suffix").0.to_owned();
        api.add_replicaset(replicaset_of("shop", &replicaset, deployment));
        api.add_pod(api_pod(pod, automount_volume(), Some((deployment, &replicaset))));
    }
    let policy = containerd.dir().join("policy.yaml");
    fs::write(
        &policy,
        "exceptions:\n  - id: checkout-uses-the-api\n    reason: the checkout service reads its token by design\n    \
         rules: [token-read]\n    namespaces: [shop]\n    service_accounts: [checkout]\n    exec: false\n",
    )
    .expect("write the policy");
    let config = support::kubeconfig(containerd.dir(), api.url());
    let agent = start_agent(&containerd, &config, &["--policy", &policy.display().to_string()]);
    for pod in [&checkout, &cart] {
        assert!(
            agent.wait_for_log(&["watching token file", &support::mount_ns_of(pod.pid())], ALERT_TIMEOUT),
            "{}",
            agent.stderr()
        );
    }
    assert!(support::wait_for(ALERT_TIMEOUT, || (api.watch_requests() > 0).then_some(())).is_some(), "no watch");
    checkout.trigger(); // excepted: shop/checkout, by its entrypoint
    let (code, _, stderr) = checkout.exec(&["cat", &format!("{SA_MOUNT}/token")]); // not excepted: exec'd
    assert_eq!(code, 0, "{stderr}");
    cart.trigger(); // not excepted: another ServiceAccount
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        !reads_in(alerts, &checkout).is_empty() && !reads_in(alerts, &cart).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let origin = |a: &&Alert| a.process.as_ref().map(|p| p.origin).unwrap_or_default();
    let from_checkout: Vec<i32> = reads_in(&stopped.alerts, &checkout).iter().map(origin).collect();
    assert_eq!(from_checkout, [i32::from(ProcessOrigin::Exec)], "only the exec'd read: {}", describe(&stopped.alerts));
    assert_eq!(reads_in(&stopped.alerts, &cart).len(), 1, "{}", describe(&stopped.alerts));
    assert!(
        stopped.stderr.lines().any(|l| l.contains("policy exception")
            && l.contains("exception=checkout-uses-the-api")
            && l.contains("suppressed=1")),
        "the suppression is counted per entry:\n{}",
        stopped.stderr
    );
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_node_name_that_matches_no_pod_says_so_naming_the_nodes_the_api_knows() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(FakeApiServer::start());
    let containerd = Containerd::start();
    let pod = containerd.run_pod(&PodSpec { namespace: "shop".into(), ..PodSpec::new("web-7f9c8d6b5-n4m3e") });
    api.add_replicaset(replicaset_of("shop", "web-7f9c8d6b5", "web"));
    api.add_pod(api_pod(&pod, automount_volume(), Some(("web", "web-7f9c8d6b5"))));
    api.add_node(NODE);
    api.add_node("node-b");
    let config = support::kubeconfig(containerd.dir(), api.url());
    // The host name where the Node is called otherwise: the API lists no
    // pod for it, while the runtime runs one.
    let socket = containerd.socket().display().to_string();
    let agent = AgentProcess::start(
        &["--cri-socket", &socket, "--kubeconfig", &config, "--node-name", "ip-10-0-0-7.ec2.internal"]
            .map(str::to_owned),
    );
    let said = agent.wait_for_log(
        &[
            "lists no pod on this node name",
            "node=ip-10-0-0-7.ec2.internal",
            "from=\"--node-name or the config file\"",
            "pod_sandboxes=1",
        ],
        ALERT_TIMEOUT,
    );
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(said, "no warning about the node name:\n{}", stopped.stderr);
    let line = stopped.stderr.lines().find(|l| l.contains("lists no pod on this node name")).unwrap_or_default();
    assert!(line.contains(&format!("known_nodes=node-b, {NODE}")), "names the Nodes the API knows: {line}");
    assert_eq!(stopped.stderr.matches("lists no pod on this node name").count(), 1, "said once");
    drop(pod);
}
