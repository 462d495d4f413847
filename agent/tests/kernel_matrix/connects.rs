//! API-server connects from the pod, every way a process reaches a TCP
//! peer: each is exactly one `apiserver-connect` alert naming the pod's
//! container, the process, the address as dialled and the hook that saw
//! it. "The API server" is a loopback listener of the test's own (on
//! 127.0.0.1 and ::1), given to the agent with `--api-server`: the VMs
//! have no network but loopback, and nothing leaves the machine.

use std::net::{SocketAddr, TcpListener};

use tokenwatch_proto::v1::{Alert, ApiServerConnect, Severity};

use super::{
    helper,
    pod::{self, describe, dial, pid_of, KubePod},
    stage,
    support::{self, agent::AgentProcess},
};

/// The listeners standing in for the API server; they complete handshakes
/// from their backlog and serve nothing.
pub struct ApiServer {
    /// On 127.0.0.1.
    pub v4: SocketAddr,
    /// On ::1.
    pub v6: SocketAddr,
    _listeners: [TcpListener; 2],
}

impl ApiServer {
    /// Listens on both loopback addresses.
    pub fn start() -> ApiServer {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("listen on 127.0.0.1");
        let v6 = TcpListener::bind("[::1]:0").expect("listen on ::1 (loopback IPv6 is needed)");
        let (a4, a6) = (v4.local_addr().expect("addr"), v6.local_addr().expect("addr"));
        ApiServer { v4: a4, v6: a6, _listeners: [v4, v6] }
    }

    /// An agent of the case's own watching `pod` and told both addresses
    /// are the API server; the shared one stops first.
    pub fn agent(&self, pod: &KubePod, extra: &[&str]) -> AgentProcess {
        stage::stop_shared();
        let agent = self.start_agent(extra);
        pod.watched_by(&agent);
        agent
    }

    /// An agent told both addresses are the API server, once it watches
    /// them.
    pub fn start_agent(&self, extra: &[&str]) -> AgentProcess {
        self.start_agent_by(extra, AgentProcess::start)
    }

    /// [`ApiServer::start_agent`], the agent started by `launch`.
    pub fn start_agent_by(&self, extra: &[&str], launch: fn(&[String]) -> AgentProcess) -> AgentProcess {
        let (v4, v6) = (self.v4.to_string(), self.v6.to_string());
        let mut args = vec!["--api-server", &v4, "--api-server", &v6];
        args.extend(extra);
        let agent = launch(&pod::agent_args(&args));
        for endpoint in [&v4, &v6] {
            let logged = format!("endpoint={endpoint}");
            let watching = agent.wait_for_log(&["watching API-server endpoint", &logged], super::ALERT_TIMEOUT);
            assert!(watching, "{}", agent.stderr());
        }
        agent
    }
}

/// What one connect alert must say: (address, port, family, hook).
type Expected<'a> = (&'a str, u16, &'a str, &'a str);

/// The pod's only alert (the settling read aside), an `apiserver-connect`
/// by `pid` as `want` says; returns its evidence.
fn one_connect<'a>(pod: &KubePod, alerts: &'a [Alert], pid: u32, want: Expected<'_>) -> &'a ApiServerConnect {
    let mine = pod.alerts(alerts);
    assert_eq!(mine.len(), 1, "one alert for the connect:\n{}", describe(alerts));
    let alert = mine[0];
    let json = serde_json::to_string(alert).unwrap_or_default();
    assert_eq!(alert.rule, "apiserver-connect", "{json}");
    assert_eq!(alert.severity, i32::from(Severity::Low), "{json}");
    assert_eq!(pid_of(alert), pid, "the connecting process: {json}");
    pod.assert_placed(alert);
    let dial = dial(alert).unwrap_or_else(|| panic!("connect evidence: {json}"));
    let (address, port, family, hook) = want;
    let seen = (dial.address.as_str(), dial.port, dial.family.as_str(), dial.hook.as_str());
    assert_eq!(seen, (address, u32::from(port), family, hook), "{json}");
    if hook == "cgroup_connect" {
        // Seen by the cgroup hook before there is a result.
        assert_eq!((dial.result, dial.outcome.as_str(), dial.fd), (0, "attempted", -1), "{json}");
    } else {
        assert!(dial.fd >= 0, "the socket's fd: {json}");
    }
    dial
}

/// A connect(2) by the actor to `target`, which must succeed; the pod's
/// alerts once settled.
fn connect_and_settle(pod: &mut KubePod, agent: &AgentProcess, target: &str) -> Vec<Alert> {
    pod.actor.must(&format!("connect {target}"));
    pod.observe(agent).alerts
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn connect_ipv4() {
    let _serial = support::serialise();
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("bind");
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    // The same address on another port is not the API server: no alert.
    pod.actor.must(&format!("connect {}", elsewhere.local_addr().expect("addr")));
    let alerts = connect_and_settle(&mut pod, agent, &api.v4.to_string());
    let dial = one_connect(&pod, &alerts, pod.actor.pid, ("127.0.0.1", api.v4.port(), "ipv4", "connect"));
    assert_eq!((dial.result, dial.outcome.as_str()), (0, "connected"), "{dial:?}");
    let chains = pod.alerts(&alerts).into_iter().filter(|a| a.rule == "token-theft-chain").count();
    assert_eq!(chains, 0, "a connect without a token read is no chain");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn connect_ipv6() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let alerts = connect_and_settle(&mut pod, agent, &api.v6.to_string());
    let dial = one_connect(&pod, &alerts, pod.actor.pid, ("::1", api.v6.port(), "ipv6", "connect"));
    assert_eq!((dial.result, dial.outcome.as_str()), (0, "connected"), "{dial:?}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn connect_ipv4_mapped_ipv6() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    // An AF_INET6 socket dialling ::ffff:127.0.0.1 reaches the IPv4 listener.
    let alerts = connect_and_settle(&mut pod, agent, &format!("[::ffff:127.0.0.1]:{}", api.v4.port()));
    let dial = one_connect(&pod, &alerts, pod.actor.pid, ("::ffff:127.0.0.1", api.v4.port(), "ipv6", "connect"));
    assert_eq!((dial.result, dial.outcome.as_str()), (0, "connected"), "{dial:?}");
}

/// Where the cgroup connect hooks cannot be attached (here, as on a node
/// with cgroup v1 only, no cgroup2 hierarchy is mounted where the agent
/// runs; elsewhere it lacks `CAP_NET_ADMIN`), `connect(2)` is matched on
/// entry instead: still exactly one alert, with its fd and result, for
/// either family.
#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn connect_without_the_cgroup_hooks() {
    let _serial = support::serialise();
    stage::stop_shared();
    let api = ApiServer::start();
    let agent = api.start_agent_by(&[], AgentProcess::start_without_cgroup2);
    assert!(
        agent.wait_for_log(&["no cgroup2 hierarchy is mounted"], super::ALERT_TIMEOUT),
        "the cgroup hooks have nowhere to attach:\n{}",
        agent.stderr()
    );
    for (target, address, family) in [(api.v4, "127.0.0.1", "ipv4"), (api.v6, "::1", "ipv6")] {
        let mut pod = KubePod::start();
        pod.watched_by(&agent);
        let alerts = connect_and_settle(&mut pod, &agent, &target.to_string());
        let dial = one_connect(&pod, &alerts, pod.actor.pid, (address, target.port(), family, "connect"));
        assert_eq!((dial.result, dial.outcome.as_str()), (0, "connected"), "{dial:?}");
    }
    pod::stop(agent);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn connect_nonblocking() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let result: i64 = pod
        .actor
        .act(&format!("connect-nonblocking {}", api.v4))
        .expect("a non-blocking connect")
        .parse()
        .expect("connect(2)'s result");
    assert!(result == 0 || result == -i64::from(libc::EINPROGRESS), "result {result}");
    let alerts = pod.observe(agent).alerts;
    let dial = one_connect(&pod, &alerts, pod.actor.pid, ("127.0.0.1", api.v4.port(), "ipv4", "connect"));
    let outcome = if result == 0 { "connected" } else { "in_progress" };
    assert_eq!((dial.result, dial.outcome.as_str()), (result, outcome), "connect(2)'s own result: {dial:?}");
}

/// `net.ipv4.tcp_fastopen` with the client bit set for the guard's life,
/// as it was after.
struct FastOpenClient {
    before: Option<String>,
}

impl FastOpenClient {
    const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_fastopen";

    fn enable() -> FastOpenClient {
        let now = std::fs::read_to_string(Self::SYSCTL).expect("read net.ipv4.tcp_fastopen");
        let value: u32 = now.trim().parse().expect("net.ipv4.tcp_fastopen is a number");
        if value & 1 == 1 {
            return FastOpenClient { before: None };
        }
        std::fs::write(Self::SYSCTL, (value | 1).to_string()).expect("enable TCP Fast Open for clients");
        FastOpenClient { before: Some(now) }
    }
}

impl Drop for FastOpenClient {
    fn drop(&mut self) {
        if let Some(before) = &self.before {
            let _ = std::fs::write(Self::SYSCTL, before.trim());
        }
    }
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn tcp_fast_open_sendto() {
    let _serial = support::serialise();
    let _client = FastOpenClient::enable();
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    // sendto(MSG_FASTOPEN) on an unconnected socket: the SYN goes out
    // with no connect(2) at all.
    let ran = pod.actor.run(&["__evade", "tfo-sendto", &api.v4.to_string()]);
    assert_eq!(ran.status, "0", "{ran:?}");
    let alerts = pod.observe(agent).alerts;
    one_connect(&pod, &alerts, ran.pid, ("127.0.0.1", api.v4.port(), "ipv4", "cgroup_connect"));
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn io_uring_connect() {
    let _serial = support::serialise();
    if helper::io_uring_missing() {
        helper::unsupported("io_uring_connect", "io_uring_setup(2) returned ENOSYS");
        return;
    }
    let stage = stage::shared();
    let (agent, api) = (&stage.agent, &stage.api);
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let ran = pod.actor.run(&["__evade", "uring-connect", &api.v4.to_string()]);
    assert_eq!(ran.status, "0", "IORING_OP_CONNECT: {ran:?}");
    let alerts = pod.observe(agent).alerts;
    one_connect(&pod, &alerts, ran.pid, ("127.0.0.1", api.v4.port(), "ipv4", "cgroup_connect"));
}
