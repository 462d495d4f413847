//! Pods that read their token with their first instruction, as every
//! Kubernetes client does at start-up and so does an attacker's one-shot
//! pod (`kubectl run x -- sh -c 'cat token; wget https://kubernetes...'`).
//! Real containerd pods whose entrypoint reads the token and dials the API
//! server at once, started while the agent runs with its default rescan
//! interval: no scan has found their token volume when they read it, so
//! only the kernel's own match of a token volume's layout can see the read.
//! Root only; run by `cargo xtask test`.

mod support;

use std::{net::TcpListener, time::Duration};

use nix::sys::signal::Signal;
use support::{
    agent::{AgentProcess, StoppedAgent},
    cri::{
        api_view::{automount_volume, scheduled_pod, NODE},
        Containerd, Pod, PodSpec, SA_MOUNT,
    },
    fake_apiserver::FakeApiServer,
};
use tokenwatch_proto::v1::{alert::Evidence, Alert, EnforcementAction};

const ALERT_TIMEOUT: Duration = Duration::from_secs(20);

/// A loopback listener standing in for the API server: it closes each
/// connection at once, so the pod's `nc` ends.
fn api_server() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let acceptor = listener.try_clone().expect("clone the listener");
    std::thread::spawn(move || {
        for stream in acceptor.incoming() {
            drop(stream);
        }
    });
    listener
}

/// A pod in `namespace` of ServiceAccount `ci` whose entrypoint is `script`.
fn pod_running(name: &str, namespace: &str, script: String) -> PodSpec {
    PodSpec {
        namespace: namespace.into(),
        service_account: "ci".into(),
        command: vec!["sh".into(), "-c".into(), script],
        ..PodSpec::new(name)
    }
}

/// `nc` dialling `api` (the pods share the node's network; busybox's
/// `wget` crashes in the test image).
fn dial(api: &TcpListener) -> String {
    let api = api.local_addr().expect("addr");
    format!("nc -w 1 {} {} </dev/null", api.ip(), api.port())
}

/// A one-shot pod in `namespace`: its entrypoint reads the token, dials
/// `api` and idles.
fn one_shot(name: &str, namespace: &str, api: &TcpListener) -> PodSpec {
    pod_running(name, namespace, format!("cat {SA_MOUNT}/token >/dev/null; {}; sleep 3600", dial(api)))
}

/// A one-shot pod whose entrypoint keeps what it read of the token in
/// `/tmp/stolen` and `cat`'s exit status in `/tmp/status`, then dials.
fn stealer(name: &str, namespace: &str, api: &TcpListener) -> PodSpec {
    let script = format!("cat {SA_MOUNT}/token >/tmp/stolen; echo $? >/tmp/status; {}; sleep 3600", dial(api));
    pod_running(name, namespace, script)
}

/// The agent on this node, with its default rescan interval, every event
/// its own alert; `--api-server` names `api`.
fn start_agent(containerd: &Containerd, api: &TcpListener, extra: &[&str]) -> AgentProcess {
    let socket = containerd.socket().display().to_string();
    let api = api.local_addr().expect("addr").to_string();
    let base = ["--cri-socket", &socket, "--api-server", &api, "--dedup-window-seconds", "0"];
    AgentProcess::start(&base.iter().chain(extra).map(|a| (*a).to_owned()).collect::<Vec<_>>())
}

/// The node of a cluster: the in-test API server, the runtime, the stand-in
/// API server the pods dial. Fields drop in order: pods go before the
/// runtime that runs them.
struct Cluster {
    api: TcpListener,
    containerd: Containerd,
    server: FakeApiServer,
    _runtime: tokio::runtime::Runtime,
}

impl Cluster {
    fn start() -> Cluster {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let server = runtime.block_on(FakeApiServer::start());
        Cluster { api: api_server(), containerd: Containerd::start(), server, _runtime: runtime }
    }

    /// The agent in cluster mode with `extra`, once it watches the pods.
    fn agent(&self, extra: &[&str]) -> AgentProcess {
        let config = support::kubeconfig(self.containerd.dir(), self.server.url());
        let mut args = vec!["--kubeconfig", &config, "--node-name", NODE];
        args.extend(extra);
        let agent = start_agent(&self.containerd, &self.api, &args);
        assert!(
            support::wait_for(ALERT_TIMEOUT, || (self.server.watch_requests() > 0).then_some(())).is_some(),
            "the agent never watched the pods:\n{}",
            agent.stderr()
        );
        agent
    }

    /// Puts `spec` on the node in the API, as the scheduler does, then
    /// starts it, as kubelet does.
    fn schedule_and_run(&self, spec: &PodSpec) -> Pod<'_> {
        self.server.add_pod(scheduled_pod(spec, automount_volume(), None));
        self.containerd.run_pod(spec)
    }
}

fn describe(alerts: &[Alert]) -> String {
    alerts.iter().map(|a| serde_json::to_string(a).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The alerts about `pod`'s container.
fn alerts_of<'a>(alerts: &'a [Alert], pod: &Pod<'_>) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.container.as_ref().is_some_and(|c| c.id == pod.container_id())).collect()
}

/// Waits for the read, the dial and the chain of `pod`, then stops the agent.
fn read_dial_and_chain(agent: AgentProcess, pod: &Pod<'_>) -> StoppedAgent {
    let done = |alerts: &[Alert]| {
        let rules: Vec<&str> = alerts_of(alerts, pod).iter().map(|a| a.rule.as_str()).collect();
        ["token-read", "apiserver-connect", "token-theft-chain"].iter().all(|rule| rules.contains(rule))
    };
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, done);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    stopped
}

/// The pod's one token read, checked for what names the reader and the
/// token's owner.
fn the_read<'a>(stopped: &'a StoppedAgent, pod: &Pod<'_>) -> &'a Alert {
    let reads: Vec<&Alert> = alerts_of(&stopped.alerts, pod)
        .into_iter()
        .filter(|a| matches!(a.evidence, Some(Evidence::TokenRead(_))) && a.rule == "token-read")
        .collect();
    assert_eq!(reads.len(), 1, "the entrypoint's one read:\n{}", describe(&stopped.alerts));
    let alert = reads[0];
    let json = serde_json::to_string(alert).unwrap_or_default();
    assert_eq!(alert.process.as_ref().map(|p| p.comm.as_str()), Some("cat"), "{json}");
    let Some(Evidence::TokenRead(read)) = &alert.evidence else { panic!("a token read: {json}") };
    assert_eq!(read.owner_pod_uid, pod.spec().uid, "whose token: kubelet's volume of this pod: {json}");
    assert_eq!(read.owner_containers.len(), 1, "given to the reader's container: {json}");
    alert
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_pod_reading_its_token_at_start_is_caught_in_cluster_mode() {
    let _serial = support::serialise();
    let cluster = Cluster::start();
    let (api, agent) = (&cluster.api, cluster.agent(&[]));
    // Scheduled first, as the API has a pod before kubelet starts it.
    let spec = one_shot("ctl-run-x", "shop", api);
    let pod = cluster.schedule_and_run(&spec);
    let stopped = read_dial_and_chain(agent, &pod);

    let read = the_read(&stopped, &pod);
    let json = serde_json::to_string(read).unwrap_or_default();
    assert!(read.missing.is_empty(), "nothing missing: {json}");
    let k8s = read.kubernetes.as_ref().expect("kubernetes context");
    assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str()), ("shop", "ctl-run-x"), "{json}");
    assert_eq!((k8s.container.as_str(), k8s.service_account.as_str()), ("main", "ci"), "{json}");
    let Some(Evidence::TokenRead(token)) = &read.evidence else { panic!("a token read") };
    assert_eq!((token.owner_namespace.as_str(), token.owner_pod.as_str()), ("shop", "ctl-run-x"), "{json}");
    assert_eq!(token.owner_containers, ["main"], "named by the runtime: {json}");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_custom_projected_token_read_at_start_is_caught() {
    let _serial = support::serialise();
    let cluster = Cluster::start();
    let (api, agent) = (&cluster.api, cluster.agent(&["--log", "info,tokenwatch_agent::metadata::kube=debug"]));
    // A name no configured path has, from the pod spec: the agent watches
    // it on this pod's own volume from the moment kubelet mounts it.
    let projected = "/var/run/secrets/tokens/vault-token";
    let script = format!("cat {projected} >/dev/null; {}; sleep 3600", dial(api));
    let spec = PodSpec {
        projected: Some(("/var/run/secrets/tokens".into(), "vault-token".into())),
        ..pod_running("vault-agent-x", "vault", script)
    };
    // As on a node: the agent has the pod (and has looked for it) before
    // kubelet mounts its volumes, so only the mount itself can tell it.
    cluster.server.add_pod(scheduled_pod(&spec, automount_volume(), None));
    let known = agent.wait_for_log(&["pod in the store", "name=vault-agent-x"], ALERT_TIMEOUT);
    assert!(known, "the agent never had the pod:\n{}", agent.stderr());
    let pod = cluster.containerd.run_pod(&spec);
    let stopped = read_dial_and_chain(agent, &pod);
    let read = the_read(&stopped, &pod);
    let Some(Evidence::TokenRead(token)) = &read.evidence else { panic!("a token read") };
    assert_eq!(token.requested_path, projected, "{read:?}");
    assert!(token.resolved_path.ends_with("/vault-token"), "{read:?}");
    assert_eq!((token.owner_namespace.as_str(), token.owner_pod.as_str()), ("vault", "vault-agent-x"), "{read:?}");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_pod_reading_its_token_at_start_is_caught_standalone() {
    let _serial = support::serialise();
    let containerd = Containerd::start();
    let api = api_server();
    let agent = start_agent(&containerd, &api, &["--standalone"]);
    let spec = one_shot("ctl-run-y", "default", &api);
    let pod = containerd.run_pod(&spec);
    let stopped = read_dial_and_chain(agent, &pod);

    let read = the_read(&stopped, &pod);
    let json = serde_json::to_string(read).unwrap_or_default();
    let k8s = read.kubernetes.as_ref().expect("kubernetes context");
    // Without the API: the runtime's labels name the pod.
    assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str()), ("default", "ctl-run-y"), "{json}");
    assert_eq!((k8s.pod_uid.as_str(), k8s.container.as_str()), (spec.uid.as_str(), "main"), "{json}");
}

/// Pods created in the burst, and how fast.
const BURST: usize = 50;
/// One pod started every this often: 20 a second.
const BURST_PACE: Duration = Duration::from_millis(50);

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn fifty_pods_reading_their_tokens_at_start_in_a_burst_are_each_caught() {
    let _serial = support::serialise();
    let cluster = Cluster::start();
    let (api, agent) = (&cluster.api, cluster.agent(&[]));
    let specs: Vec<PodSpec> = (0..BURST).map(|i| one_shot(&format!("burst-{i:02}"), "shop", api)).collect();
    for spec in &specs {
        cluster.server.add_pod(scheduled_pod(spec, automount_volume(), None));
    }
    // Started from threads of their own at the pace, as kubelet starts
    // the pods of a scaled-up Deployment.
    let started = std::time::Instant::now();
    let pods: Vec<Pod<'_>> = std::thread::scope(|scope| {
        let runs: Vec<_> = (0..BURST)
            .zip(&specs)
            .map(|(i, spec)| {
                let containerd = &cluster.containerd;
                scope.spawn(move || {
                    let due = BURST_PACE * u32::try_from(i).expect("small");
                    std::thread::sleep(due.saturating_sub(started.elapsed()));
                    containerd.run_pod(spec)
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().expect("a pod started")).collect()
    });

    let done = |alerts: &[Alert]| {
        pods.iter().all(|pod| {
            let rules: Vec<&str> = alerts_of(alerts, pod).iter().map(|a| a.rule.as_str()).collect();
            ["token-read", "apiserver-connect", "token-theft-chain"].iter().all(|rule| rules.contains(rule))
        })
    };
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT * 3, done);
    let stopped = agent.stop(Signal::SIGTERM);
    let caught = pods.iter().filter(|pod| alerts_of(&stopped.alerts, pod).len() >= 3).count();
    assert!(arrived, "{caught} of {BURST} pods caught:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    for pod in &pods {
        let read = the_read(&stopped, pod);
        let k8s = read.kubernetes.as_ref().expect("kubernetes context");
        assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str()), ("shop", pod.spec().name.as_str()), "{read:?}");
        assert_eq!((k8s.container.as_str(), k8s.service_account.as_str()), ("main", "ci"), "{read:?}");
    }
    let degraded: Vec<&Alert> = stopped.alerts.iter().filter(|a| a.rule == "agent-degraded").collect();
    assert!(degraded.is_empty(), "nothing lost, nothing degraded:\n{}", describe(&stopped.alerts));
}

/// Every process in `shop` is stopped from reading its token and dialling
/// the API server; in `batch`, the entrypoints (not exec'd processes) are
/// stopped from reading.
const BLOCKS: &str = "\
blocks:
  - id: shop-never-uses-the-api
    reason: nothing in shop talks to the API server
    actions: [token-read, apiserver-connect]
    namespaces: [shop]
  - id: batch-entrypoints-never-read
    reason: batch jobs run without the API
    actions: [token-read]
    namespaces: [batch]
    exec: false
";

/// What a pod's enforced alert says was done, and by which block.
fn done(alert: &Alert) -> Option<(EnforcementAction, &str)> {
    let done = alert.enforcement.as_ref()?;
    Some((EnforcementAction::try_from(done.action).ok()?, done.block_id.as_str()))
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_blocked_pod_reading_its_token_at_start_gets_no_byte() {
    let _serial = support::serialise();
    let cluster = Cluster::start();
    let policy = cluster.containerd.dir().join("policy.yaml");
    std::fs::write(&policy, BLOCKS).expect("write the policy");
    let policy = policy.display().to_string();
    let (api, agent) = (&cluster.api, cluster.agent(&["--policy", &policy]));
    let specs = [stealer("ctl-run-x", "shop", api), stealer("job-x", "batch", api)];
    let pods: Vec<Pod<'_>> = specs.iter().map(|spec| cluster.schedule_and_run(spec)).collect();
    for pod in &pods {
        let status = support::wait_for(ALERT_TIMEOUT, || std::fs::read_to_string(pod.host_path("/tmp/status")).ok());
        let stolen = std::fs::read(pod.host_path("/tmp/stolen")).unwrap_or_default();
        let name = &pod.spec().name;
        assert_eq!(status.as_deref().map(str::trim), Some("137"), "{name}'s cat was killed (SIGKILL)");
        assert!(stolen.is_empty(), "{name} got {} bytes of its token", stolen.len());
    }
    let killed = |alerts: &[Alert]| {
        pods.iter()
            .all(|pod| alerts_of(alerts, pod).iter().any(|a| done(a).map(|d| d.0) == Some(EnforcementAction::Killed)))
    };
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, killed);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    for (pod, block) in pods.iter().zip(["shop-never-uses-the-api", "batch-entrypoints-never-read"]) {
        let read = the_read(&stopped, pod);
        assert_eq!(done(read), Some((EnforcementAction::Killed, block)), "{read:?}");
    }
    // The connect fence waits for the pod's cgroup (a reconcile, 250 ms):
    // a dial this early is reported, refused or not.
    let shop_dials = alerts_of(&stopped.alerts, &pods[0]).into_iter().filter(|a| a.rule == "apiserver-connect");
    assert_eq!(shop_dials.count(), 1, "{}", describe(&stopped.alerts));
}
