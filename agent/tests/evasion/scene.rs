//! The stage every evasion test shares: the in-test API server, a
//! containerd of the test's own, loopback listeners standing in for the
//! API server, pods that carry the helper, and an agent watching them.

use std::net::{SocketAddr, TcpListener};

use tokenwatch_proto::v1::{alert::Evidence, Alert};

use super::{actions::HELPER, support, ALERT_TIMEOUT};
use support::{
    agent::AgentProcess,
    cri::{
        api_view::{api_pod, automount_volume, NODE},
        Containerd, Pod, PodSpec, IMAGE,
    },
    fake_apiserver::FakeApiServer,
};

/// Everything a test needs; dropping it removes pods, containerd, servers.
pub struct Scene {
    /// The in-test API server's runtime (keep it alive).
    _runtime: tokio::runtime::Runtime,
    /// The in-test Kubernetes API.
    pub api: FakeApiServer,
    /// The test's own containerd.
    pub containerd: Containerd,
    /// "The API server" on IPv4 loopback (a listener; the backlog completes
    /// handshakes, nothing is served).
    pub api_v4: SocketAddr,
    /// The same on IPv6 loopback.
    pub api_v6: SocketAddr,
    /// An API-server endpoint address the agent learns only from the
    /// `default/kubernetes` EndpointSlice (on `127.0.0.2`, loopback too).
    pub api_endpoint: SocketAddr,
    _listeners: Vec<TcpListener>,
    kubeconfig: String,
}

impl Scene {
    /// Starts the API server, containerd and the loopback listeners.
    pub fn start() -> Scene {
        let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
        let api = runtime.block_on(FakeApiServer::start());
        let containerd = Containerd::start();
        let v4 = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let v6 = TcpListener::bind("[::1]:0").expect("listen on ::1");
        let endpoint = TcpListener::bind("127.0.0.2:0").expect("listen on 127.0.0.2");
        let (api_v4, api_v6) = (v4.local_addr().expect("addr"), v6.local_addr().expect("addr"));
        let api_endpoint = endpoint.local_addr().expect("addr");
        let kubeconfig = support::kubeconfig(containerd.dir(), api.url());
        let _listeners = vec![v4, v6, endpoint];
        Scene { _runtime: runtime, api, containerd, api_v4, api_v6, api_endpoint, _listeners, kubeconfig }
    }

    /// Runs `spec` with the helper mounted (plus the host's libraries it
    /// links against) and tells the API about the pod.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod<'_> {
        let mut spec = spec.clone();
        spec.extra_mounts.extend(helper_mounts());
        let pod = self.containerd.run_pod(&spec);
        self.api.add_pod(api_pod(&pod, automount_volume(), None));
        pod
    }

    /// An agent for `pods`, once it watches their tokens, the API server's
    /// addresses and the pods: every event alerts (no merging).
    pub fn agent(&self, pods: &[&Pod<'_>]) -> AgentProcess {
        self.agent_with(pods, &[])
    }

    /// [`Self::agent`] with more flags.
    pub fn agent_with(&self, pods: &[&Pod<'_>], extra: &[&str]) -> AgentProcess {
        self.agent_started(pods, extra, AgentProcess::start)
    }

    /// [`Self::agent_with`], the agent run as the DaemonSet runs it: a pid
    /// namespace of its own, the host's `/proc` at `--host-proc`.
    #[allow(dead_code, reason = "the evasion tests run the agent on the host")]
    pub fn agent_as_daemonset_with(&self, pods: &[&Pod<'_>], extra: &[&str]) -> AgentProcess {
        self.agent_started(pods, extra, AgentProcess::start_as_daemonset)
    }

    fn agent_started(&self, pods: &[&Pod<'_>], extra: &[&str], start: fn(&[String]) -> AgentProcess) -> AgentProcess {
        let socket = self.containerd.socket().display().to_string();
        let (v4, v6) = (self.api_v4.to_string(), self.api_v6.to_string());
        let mut args = vec![
            "--cri-socket",
            &socket,
            "--kubeconfig",
            &self.kubeconfig,
            "--node-name",
            NODE,
            "--rescan-interval-seconds",
            "1",
            "--dedup-window-seconds",
            "0",
            "--api-server",
            &v4,
            "--api-server",
            &v6,
        ];
        args.extend(extra);
        let agent = start(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
        for pod in pods {
            assert!(
                agent.wait_for_log(&["watching token file", &support::mount_ns_of(pod.pid())], ALERT_TIMEOUT),
                "the agent never found the token of pod {}:\n{}",
                pod.spec().name,
                agent.stderr()
            );
        }
        let endpoint = format!("endpoint={v4}");
        assert!(agent.wait_for_log(&["watching API-server endpoint", &endpoint], ALERT_TIMEOUT), "{}", agent.stderr());
        let watching = || (self.api.watch_requests() > 0).then_some(());
        assert!(support::wait_for(ALERT_TIMEOUT, watching).is_some(), "the agent never watched the API");
        agent
    }

    /// Runs the helper's `action` in `pod`'s container (CRI ExecSync, as
    /// `kubectl exec`); returns the helper's pid in the container.
    pub fn act(&self, pod: &Pod<'_>, action: &[&str]) -> u32 {
        let mut cmd = vec![HELPER, "__evade"];
        cmd.extend(action);
        helper_pid(action, pod.exec(&cmd))
    }
}

/// The helper's pid from its `ok <pid>` line; panics on anything else.
pub fn helper_pid(action: &[&str], (code, stdout, stderr): (i32, String, String)) -> u32 {
    assert_eq!(code, 0, "{action:?} failed: {stdout}{stderr}");
    stdout
        .trim()
        .strip_prefix("ok ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("{action:?}: unexpected output {stdout:?}"))
}

/// This test binary at [`HELPER`], and the host's library directories it
/// was linked against at the paths its loader looks in.
pub fn helper_mounts() -> Vec<(String, String)> {
    let exe = std::env::current_exe().expect("the test binary's path").display().to_string();
    let mut mounts = vec![(exe, HELPER.to_owned())];
    for (host, container) in [("/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu"), ("/lib64", "/lib64")] {
        let host = std::fs::canonicalize(host).unwrap_or_else(|e| panic!("{host}: {e}"));
        mounts.push((host.display().to_string(), container.to_owned()));
    }
    mounts
}

/// Every alert, one JSON line each, for failure messages.
pub fn describe(alerts: &[Alert]) -> String {
    alerts.iter().map(|a| serde_json::to_string(a).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

fn in_container<'a>(alerts: &'a [Alert], id: &str, rule: &str) -> Vec<&'a Alert> {
    alerts.iter().filter(|a| a.rule == rule && a.container.as_ref().is_some_and(|c| c.id == id)).collect()
}

/// The `token-read` alerts of `pod`'s container.
pub fn reads_in<'a>(alerts: &'a [Alert], pod: &Pod<'_>) -> Vec<&'a Alert> {
    in_container(alerts, pod.container_id(), "token-read")
}

/// The `apiserver-connect` alerts of `pod`'s container.
pub fn connects_in<'a>(alerts: &'a [Alert], pod: &Pod<'_>) -> Vec<&'a Alert> {
    in_container(alerts, pod.container_id(), "apiserver-connect")
}

/// The alert names `pod`, its container, image and ServiceAccount, and the
/// helper as the process, with nothing missing.
pub fn assert_in_pod(alert: &Alert, pod: &Pod<'_>) {
    let spec = pod.spec();
    let json = serde_json::to_string(alert).unwrap_or_default();
    assert!(alert.missing.is_empty(), "nothing missing: {json}");
    let k8s = alert.kubernetes.as_ref().expect("kubernetes context");
    assert_eq!((k8s.namespace.as_str(), k8s.pod.as_str()), (spec.namespace.as_str(), spec.name.as_str()), "{json}");
    assert_eq!((k8s.container.as_str(), k8s.image.as_str()), (spec.container_name.as_str(), IMAGE), "{json}");
    assert_eq!(k8s.service_account, spec.service_account, "{json}");
    let process = alert.process.as_ref().expect("process context");
    assert_eq!(process.comm, "tokenwatch-evad", "the helper, not an io_uring worker: {json}");
    assert!(matches!(alert.evidence, Some(Evidence::TokenRead(_)) | Some(Evidence::ApiServerConnect(_))), "{json}");
}
