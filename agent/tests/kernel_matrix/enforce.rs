//! Enforcement without containerd: a policy `blocks` entry covering the
//! pod makes the node refuse its API-server connects (`EPERM`, from the
//! connect fence attached to the pod's cgroup) and kill its token readers
//! (`SIGKILL` at the open's return, before a byte is read), and the alerts
//! say so.
//!
//! The agent can only cover a pod it can name: here the API server is an
//! in-test server (`support::fake_apiserver`, the real list/watch protocol)
//! because none can be installed on the build machines or in the VMs. It
//! serves the pod on the agent's `--node-name`, with the uid in the
//! pod's cgroup name and the container id in its status, which is how the
//! agent's cgroup2 walk ties the pod's directory to its namespace.

use std::net::TcpStream;

use serde_json::json;
use tokenwatch_proto::v1::{Alert, EnforcementAction};

use super::{
    connects::ApiServer,
    pod::{describe, dial, pid_of, stop, token, token_read, KubePod},
    support::{self, actor::FAKE_TOKEN, agent::AgentProcess, fake_apiserver::FakeApiServer},
    ALERT_TIMEOUT,
};

/// The node the agent is told it runs on.
const NODE: &str = "kernel-matrix-node";
/// The pod, in namespace `shop` with ServiceAccount `ci`.
const POD: &str = "ctl-5d8f7c9b4-k8m4x";

/// Connects from `shop` are refused; token reads in `shop` are stopped.
const BLOCKS: &str = "\
blocks:
  - id: no-api-from-shop
    reason: shop's pods never call the API server
    actions: [apiserver-connect]
    namespaces: [shop]
  - id: no-token-reads-in-shop
    reason: nothing in shop reads its token
    actions: [token-read]
    namespaces: [shop]
";

/// The in-test API server serving the pod, the policy, and an agent that
/// covers the pod with `block`.
struct Stage {
    agent: AgentProcess,
    api: ApiServer,
    pod: KubePod,
    _cluster: FakeApiServer,
    _runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Stage {
    fn start(block: &str) -> Stage {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let cluster = runtime.block_on(FakeApiServer::start());
        let pod = KubePod::start();
        cluster.add_pod(api_pod(&pod));
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, BLOCKS).expect("write the policy");
        let kubeconfig = kubeconfig(dir.path(), cluster.url());
        let api = ApiServer::start();
        let policy = policy.display().to_string();
        let agent = api.agent(&pod, &["--kubeconfig", &kubeconfig, "--node-name", NODE, "--policy", &policy]);
        let covered = agent.wait_for_log(
            &["block entry covers pod", &format!("pod=shop/{POD}"), &format!("block={block}")],
            ALERT_TIMEOUT,
        );
        assert!(covered, "the agent never covered the pod with {block}:\n{}", agent.stderr());
        Stage { agent, api, pod, _cluster: cluster, _runtime: runtime, _dir: dir }
    }
}

/// A kubeconfig for the in-test API server (plain HTTP on loopback, no
/// credentials) that names a CA, as every real kubeconfig does. Without
/// one the Kubernetes client falls back to the system's trust store even
/// for plain HTTP, and refuses to start where there is none (the VMs).
fn kubeconfig(dir: &std::path::Path, server: &str) -> String {
    let ca = support::pki::write_pem(dir, "ca.pem", &support::pki::Pki::new("kernel-matrix-ca").ca_pem);
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\", \
         certificate-authority: \"{ca}\"}}}}]\nusers: [{{name: nobody, user: {{}}}}]\n\
         contexts: [{{name: fake, context: {{cluster: fake, user: nobody}}}}]\ncurrent-context: fake\n"
    );
    std::fs::write(&path, text).expect("write the kubeconfig");
    path.display().to_string()
}

/// The API's view of the pod: on [`NODE`], the token mounted as kubelet
/// mounts it, the container's id in its status.
fn api_pod(pod: &KubePod) -> k8s_openapi::api::core::v1::Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "shop", "name": POD, "uid": pod.uid},
        "spec": {
            "nodeName": NODE, "serviceAccountName": "ci",
            "containers": [{"name": "main", "image": "tokenwatch.test/ctl:1", "volumeMounts": [
                {"name": "kube-api-access-k8m4x", "mountPath": support::actor::SA_DIR, "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access-k8m4x", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
        },
        "status": {"phase": "Running", "containerStatuses": [{"name": "main", "ready": true, "restartCount": 0,
            "containerID": format!("containerd://{}", pod.container_id),
            "image": "tokenwatch.test/ctl:1", "imageID": ""}]},
    }))
    .expect("a Pod")
}

/// The alert's enforcement as (action, block id).
fn done(alert: &Alert) -> Option<(EnforcementAction, &str)> {
    let done = alert.enforcement.as_ref()?;
    Some((EnforcementAction::try_from(done.action).ok()?, done.block_id.as_str()))
}

/// The alert names the pod as the API serves it (so the agent knew it).
fn assert_named(pod: &KubePod, alert: &Alert) {
    pod.assert_placed(alert);
    let k8s = alert.kubernetes.as_ref().expect("kubernetes context");
    let seen = (k8s.namespace.as_str(), k8s.pod.as_str(), k8s.container.as_str(), k8s.service_account.as_str());
    assert_eq!(seen, ("shop", POD, "main", "ci"), "{alert:?}");
}

/// A covered pod's connects to the API server (IPv4 and IPv6) get `EPERM`
/// and `BLOCKED` alerts. The pod is known from an in-test API server: no
/// kube-apiserver can be installed here or in the VMs.
#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn enforce_connect_refused_with_eperm() {
    let _serial = support::serialise();
    let mut stage = Stage::start("no-api-from-shop");
    let mut refused = Vec::new();
    for target in [stage.api.v4, stage.api.v6] {
        let ran = stage.pod.actor.run(&["__evade", "connect", &target.to_string()]);
        assert_eq!(ran.status, "1", "the connect to {target} fails: {ran:?}");
        assert!(ran.stdout.contains("Operation not permitted"), "EPERM (connect4 and connect6 fences): {ran:?}");
        refused.push(ran.pid);
    }
    // The node itself is never covered: the same address answers it.
    TcpStream::connect(stage.api.v4).expect("a node process still connects");

    let blocked = |alerts: &[Alert]| {
        let pod = &stage.pod;
        pod.alerts(alerts).into_iter().filter(|a| refused.contains(&pid_of(a))).count() >= refused.len()
    };
    let arrived = stage.agent.wait_for_alerts(ALERT_TIMEOUT, blocked);
    let stopped = stop(stage.agent);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let alerts = stage.pod.alerts(&stopped.alerts);
    assert_eq!(alerts.len(), 2, "one alert per refused connect:\n{}", describe(&alerts));
    for (alert, pid) in alerts.iter().zip(&refused) {
        assert_eq!(pid_of(alert), *pid, "{alert:?}");
        assert_eq!(alert.rule, "apiserver-connect", "{alert:?}");
        assert_named(&stage.pod, alert);
        assert_eq!(done(alert), Some((EnforcementAction::Blocked, "no-api-from-shop")), "{alert:?}");
        assert!(alert.summary.contains("refused (EPERM) by block `no-api-from-shop`"), "{}", alert.summary);
        let dial = dial(alert).expect("a connect");
        assert_eq!((dial.hook.as_str(), dial.outcome.as_str()), ("connect", "failed: EPERM"), "{alert:?}");
    }
}

/// A covered pod's token reader is killed before it reads a byte, and the
/// alert says `KILLED`. The pod is known from an in-test API server: no
/// kube-apiserver can be installed here or in the VMs.
#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn enforce_token_reader_killed_before_a_byte() {
    let _serial = support::serialise();
    let mut stage = Stage::start("no-token-reads-in-shop");
    // The helper prints whatever it reads: none of it may come out.
    let ran = stage.pod.actor.run(&["__evade", "read-print", &token()]);
    assert_eq!(ran.status, format!("signal={}", libc::SIGKILL), "the reader is killed: {ran:?}");
    assert!(!ran.stdout.contains(FAKE_TOKEN) && ran.stdout.is_empty(), "not a byte reached it: {ran:?}");
    // A process on the node is never covered: it reads the same file.
    let path = format!("/proc/{}/root{}/token", stage.pod.actor.pid, stage.pod.run_sa_dir());
    let read = std::fs::read_to_string(&path).expect("a node process still reads the token");
    assert_eq!(read, FAKE_TOKEN);

    let killed = |alerts: &[Alert]| stage.pod.alerts(alerts).iter().any(|a| pid_of(a) == ran.pid);
    let arrived = stage.agent.wait_for_alerts(ALERT_TIMEOUT, killed);
    let stopped = stop(stage.agent);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let alerts = stage.pod.alerts(&stopped.alerts);
    assert_eq!(alerts.len(), 1, "one alert for the killed reader:\n{}", describe(&alerts));
    let alert = alerts[0];
    assert_eq!((alert.rule.as_str(), pid_of(alert)), ("token-read", ran.pid), "{alert:?}");
    assert_named(&stage.pod, alert);
    assert_eq!(done(alert), Some((EnforcementAction::Killed, "no-token-reads-in-shop")), "{alert:?}");
    assert!(alert.summary.contains("process killed before it could read"), "{}", alert.summary);
    assert_eq!(token_read(alert).map(|r| r.requested_path.as_str()), Some(token().as_str()), "{alert:?}");
}
