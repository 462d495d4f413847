//! The stage every case shares: a "pod" without containerd (the actor, in
//! a cgroup named exactly as kubelet's systemd driver and containerd name a
//! BestEffort pod's container, with the token laid out as kubelet lays it
//! out), an agent watching it, and the checks of what every alert about it
//! must say.

use std::{
    os::unix::fs::MetadataExt,
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use nix::sys::signal::Signal;
use tokenwatch_proto::v1::{alert::Evidence, Alert, ApiServerConnect, TokenRead};

use super::{
    stage,
    support::{
        self,
        actor::{Actor, SA_DIR},
        agent::{AgentProcess, StoppedAgent},
        cgroup::TestCgroup,
    },
    ALERT_TIMEOUT,
};

/// The path the settling read passes: the token, spelt so that no case
/// passes it.
pub const MARKER_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/./token";

/// One pod on the stage. Fields drop in order: the actor exits before its
/// cgroups are removed.
pub struct KubePod {
    /// The actor: the pod's only process.
    pub actor: Actor,
    /// `kubepods.slice/.../cri-containerd-<id>.scope`.
    pub cgroup: TestCgroup,
    /// The pod uid, dashed, as the API and the alert give it.
    pub uid: String,
    /// The 64-hex-digit container id.
    pub container_id: String,
    /// Settling reads done so far.
    markers: usize,
}

impl KubePod {
    /// A BestEffort pod with one container, running the actor.
    pub fn start() -> KubePod {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let pid = std::process::id();
        let uid = format!("{pid:08x}-{:04x}-4b1d-9e2f-{nanos:012x}", seq & 0xffff);
        let container_id = format!("{pid:016x}{seq:016x}{:032x}", u128::from(nanos) << 64 | 0xc0ffee);
        let slice = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
        let leaf = format!("cri-containerd-{container_id}.scope");
        let cgroup = TestCgroup::create_path(&["kubepods.slice", "kubepods-besteffort.slice", &slice, &leaf]);
        let actor = Actor::spawn(&cgroup.procs_files());
        KubePod { actor, cgroup, uid, container_id, markers: 0 }
    }

    /// The pod's cgroup directory name (`kubepods-besteffort-pod<uid>.slice`).
    pub fn slice(&self) -> String {
        format!("kubepods-besteffort-pod{}.slice", self.uid.replace('-', "_"))
    }

    /// The token's directory where the actor sees `/run` (`/var/run` is a
    /// link to it on Debian and in the test VMs).
    pub fn run_sa_dir(&self) -> String {
        format!("{}/secrets/kubernetes.io/serviceaccount", self.actor.run_dir.display())
    }

    /// An agent of the case's own that watches this pod's token
    /// (`--standalone` unless `extra` gives a `--kubeconfig`); the shared
    /// one stops first, so one agent runs at a time.
    pub fn agent(&self, extra: &[&str]) -> AgentProcess {
        stage::stop_shared();
        let agent = start_agent(extra);
        self.watched_by(&agent);
        agent
    }

    /// Waits until `agent` watches this pod's token: only then can a read
    /// of it be an alert. The line must name the actor's pid as well as
    /// its mount namespace: a shared agent logged the lines of earlier
    /// pods, whose namespace inode a new namespace may reuse.
    pub fn watched_by(&self, agent: &AgentProcess) {
        let (ns, pid) = (support::mount_ns_of(self.actor.pid), format!(" pid={} ", self.actor.pid));
        assert!(
            agent.wait_for_log(&["watching token file", &ns, &pid], ALERT_TIMEOUT),
            "the agent never found the pod's token:\n{}",
            agent.stderr()
        );
    }

    /// Reads the token once more, by a path no case uses, and waits for
    /// its alert. Every event of the cases before it was written to the
    /// ring buffer before it, and the agent handles them in order, so once
    /// it has arrived, any alert the cases caused has too: the check for
    /// "exactly one" and "none" without a blind wait.
    pub fn settle(&mut self, agent: &AgentProcess) {
        self.actor.must(&format!("open {MARKER_PATH}"));
        self.markers += 1;
        let (id, want) = (self.container_id.clone(), self.markers);
        let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
            alerts.iter().filter(|a| in_container(a, &id) && is_marker(a)).count() >= want
        });
        assert!(
            arrived,
            "the settling read of {MARKER_PATH} never alerted:\n{}\nlog:\n{}",
            describe(&agent.alerts()),
            agent.stderr()
        );
    }

    /// [`Self::settle`], then what `agent` (still running, shared) has
    /// printed and logged so far.
    pub fn observe(&mut self, agent: &AgentProcess) -> Observed {
        self.settle(agent);
        Observed { alerts: agent.alerts(), stderr: agent.stderr() }
    }

    /// The pod's alerts but for the settling reads.
    pub fn alerts<'a>(&self, alerts: &'a [Alert]) -> Vec<&'a Alert> {
        alerts.iter().filter(|a| in_container(a, &self.container_id) && !is_marker(a)).collect()
    }

    /// Checks what every alert about the pod's processes says of where
    /// they run: the container id and runtime from the scope's name, the
    /// pod uid from the slice's, the cgroup the kernel read.
    pub fn assert_placed(&self, alert: &Alert) {
        let json = serde_json::to_string(alert).unwrap_or_default();
        let container = alert.container.as_ref().unwrap_or_else(|| panic!("no container context: {json}"));
        assert_eq!(container.id, self.container_id, "the id in cri-containerd-<id>.scope: {json}");
        assert_eq!(container.runtime, "containerd", "the scope's prefix names the runtime: {json}");
        let names = &container.cgroup_names;
        let name = |at: usize| names.get(at).map(String::as_str).unwrap_or_default();
        if let Some(dir) = self.cgroup.unified_dir() {
            assert_eq!((name(0), name(1)), (self.cgroup.name.as_str(), self.slice().as_str()), "cgroup2: {json}");
            let inode = std::fs::metadata(dir).expect("the unified cgroup directory").ino();
            assert_eq!(container.cgroup_id, inode, "a cgroup2 id is its directory's inode: {json}");
        }
        if self.cgroup.has_v1_memory {
            assert_eq!((name(2), name(3)), (self.cgroup.name.as_str(), self.slice().as_str()), "v1 memory: {json}");
        }
        let kubernetes = alert.kubernetes.as_ref().unwrap_or_else(|| panic!("no kubernetes context: {json}"));
        assert_eq!(kubernetes.pod_uid, self.uid, "the uid in kubepods-besteffort-pod<uid>.slice: {json}");
    }
}

/// What an agent had printed and logged when a case looked.
pub struct Observed {
    /// Every alert, of every pod.
    pub alerts: Vec<Alert>,
    /// Its log.
    pub stderr: String,
}

/// Starts an agent with the matrix's settings (every event its own alert,
/// token files rescanned each second unless `extra` says) and `extra`; `--standalone` unless
/// `extra` gives a `--kubeconfig`.
pub fn start_agent(extra: &[&str]) -> AgentProcess {
    AgentProcess::start(&agent_args(extra))
}

/// The matrix's agent arguments with `extra`: no merging of repeats, a
/// rescan every second, standalone unless given a kubeconfig.
pub fn agent_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["--dedup-window-seconds", "0"];
    if !extra.contains(&"--rescan-interval-seconds") {
        args.extend(["--rescan-interval-seconds", "1"]);
    }
    if !extra.contains(&"--kubeconfig") {
        args.push("--standalone");
    }
    args.extend(extra);
    args.iter().map(|a| (*a).to_owned()).collect()
}

/// Stops `agent` with SIGTERM; it must exit 0 having detached its hooks.
pub fn stop(agent: AgentProcess) -> StoppedAgent {
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "agent exit {:?}:\n{}", stopped.status, stopped.stderr);
    assert!(stopped.stderr.contains("hooks detached"), "{}", stopped.stderr);
    stopped
}

fn in_container(alert: &Alert, id: &str) -> bool {
    alert.container.as_ref().is_some_and(|c| c.id == id)
}

/// Whether `alert` is a settling read's.
pub fn is_marker(alert: &Alert) -> bool {
    token_read(alert).is_some_and(|read| read.requested_path == MARKER_PATH)
}

/// The token read an alert reports, if it reports one.
pub fn token_read(alert: &Alert) -> Option<&TokenRead> {
    match &alert.evidence {
        Some(Evidence::TokenRead(read)) => Some(read),
        _ => None,
    }
}

/// The connect an alert reports, if it reports one.
pub fn dial(alert: &Alert) -> Option<&ApiServerConnect> {
    match &alert.evidence {
        Some(Evidence::ApiServerConnect(dial)) => Some(dial),
        _ => None,
    }
}

/// The pid an alert names (0 without a process).
pub fn pid_of(alert: &Alert) -> u32 {
    alert.process.as_ref().map_or(0, |p| p.pid)
}

/// Every alert, one JSON line each, for failure messages.
pub fn describe<A: std::borrow::Borrow<Alert>>(alerts: &[A]) -> String {
    alerts.iter().map(|a| serde_json::to_string(a.borrow()).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// The token's path as the pod sees it.
pub fn token() -> String {
    format!("{SA_DIR}/token")
}
