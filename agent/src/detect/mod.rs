//! The detect stage: turns a kernel event and what is known about its
//! process into an alert. Correlation and policy build on this later.

pub mod describe;

use tokenwatch_common::OpenSyscall;
use tokenwatch_proto::v1::{
    alert::Evidence, Alert, ApiServerConnect, ContainerContext, KubernetesContext, ProcessContext, ProcessRef,
    Severity, TokenRead,
};

use crate::{
    kernel::{clock::BootClock, ConnectRecord, Identity, KernelEvent, OpenRecord},
    metadata::{cgroup::container_id_of, process::ProcessInfo, token_files::WatchedFile},
};

/// Rule name of a token-file read.
pub const RULE_TOKEN_READ: &str = "token-read";
/// Rule name of a connection to the API server.
pub const RULE_API_SERVER_CONNECT: &str = "apiserver-connect";

/// Builds alerts, numbering them for this run.
#[derive(Debug)]
pub struct Judge {
    node: String,
    run_id: String,
    clock: BootClock,
    sequence: u64,
}

/// What the metadata stage learnt about an event.
#[derive(Clone, Debug, Default)]
pub struct Enrichment {
    /// The process, from /proc.
    pub process: ProcessInfo,
    /// The watched file an open matched, when known.
    pub watched: Option<WatchedFile>,
}

impl Judge {
    /// A judge for alerts from `node`; `run_id` makes alert ids unique.
    pub fn new(node: String, run_id: String, clock: BootClock) -> Self {
        Judge { node, run_id, clock, sequence: 0 }
    }

    /// The alert for one event.
    pub fn judge(&mut self, event: &KernelEvent, enrichment: &Enrichment) -> Alert {
        self.sequence += 1;
        let identity = event.identity();
        let (seconds, nanos) = self.clock.wall(identity.boot_time_ns);
        let (rule, severity, summary, evidence) = match event {
            KernelEvent::Open(open) => token_read(open, enrichment),
            KernelEvent::Connect(connect) => api_server_connect(connect),
        };
        Alert {
            id: format!("{}-{}", self.run_id, self.sequence),
            time: Some(pbjson_types::Timestamp { seconds, nanos }),
            node: self.node.clone(),
            severity: severity.into(),
            rule: rule.to_owned(),
            summary,
            kubernetes: Some(KubernetesContext::default()),
            container: Some(container(identity)),
            process: Some(process(identity, &enrichment.process)),
            evidence: Some(evidence),
        }
    }
}

fn token_read(open: &OpenRecord, enrichment: &Enrichment) -> (&'static str, Severity, String, Evidence) {
    let summary = format!(
        "{} (pid {}) opened ServiceAccount token {}",
        open.identity.comm, open.identity.pid, open.resolved_path
    );
    let evidence = TokenRead {
        requested_path: open.requested_path.clone(),
        resolved_path: open.resolved_path.clone(),
        resolved_path_truncated: open.resolved_path_truncated,
        syscall: match open.syscall {
            OpenSyscall::Open => "open",
            OpenSyscall::Openat => "openat",
            OpenSyscall::Openat2 => "openat2",
        }
        .to_owned(),
        dirfd: open.dirfd,
        flags: describe::open_flags(open.flags),
        fd: open.fd,
        device: format!("{}:{}", open.dev >> 20, open.dev & 0xf_ffff),
        inode: open.ino,
        watched_path: enrichment.watched.as_ref().map(|w| w.path.display().to_string()).unwrap_or_default(),
    };
    (RULE_TOKEN_READ, Severity::High, summary, Evidence::TokenRead(evidence))
}

fn api_server_connect(connect: &ConnectRecord) -> (&'static str, Severity, String, Evidence) {
    let outcome = describe::connect_outcome(connect.result);
    let summary = format!(
        "{} (pid {}) dialled the API server at {} ({outcome})",
        connect.identity.comm, connect.identity.pid, connect.destination
    );
    let evidence = ApiServerConnect {
        address: connect.destination.ip().to_string(),
        port: u32::from(connect.destination.port()),
        family: if connect.destination.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned(),
        result: connect.result,
        outcome,
        fd: connect.fd,
    };
    (RULE_API_SERVER_CONNECT, Severity::Medium, summary, Evidence::ApiServerConnect(evidence))
}

fn container(identity: &Identity) -> ContainerContext {
    ContainerContext {
        id: container_id_of(identity.cgroup_names.iter().map(String::as_str)).unwrap_or_default().to_owned(),
        cgroup_id: identity.cgroup_id,
        cgroup_names: identity.cgroup_names.to_vec(),
    }
}

fn process(identity: &Identity, info: &ProcessInfo) -> ProcessContext {
    ProcessContext {
        pid: identity.pid,
        tid: identity.tid,
        uid: identity.uid,
        gid: identity.gid,
        comm: identity.comm.clone(),
        exe: info.exe.clone(),
        args: info.args.clone(),
        parents: info
            .ancestors
            .iter()
            .map(|a| ProcessRef { pid: a.pid, comm: a.comm.clone(), exe: a.exe.clone() })
            .collect(),
    }
}
