//! The detect stage: turns a kernel event and what is known about its
//! process into an alert. Correlation and policy build on this later.

pub mod context;
pub mod describe;
pub mod origin;

use tokenwatch_common::OpenSyscall;
use tokenwatch_proto::v1::{alert::Evidence, Alert, ApiServerConnect, Severity, TokenRead};

use crate::{
    kernel::{clock::BootClock, ConnectRecord, KernelEvent, OpenRecord},
    metadata::enrich::Enrichment,
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
            KernelEvent::Connect(connect) => api_server_connect(connect, enrichment),
        };
        Alert {
            id: format!("{}-{}", self.run_id, self.sequence),
            time: Some(pbjson_types::Timestamp { seconds, nanos }),
            node: self.node.clone(),
            severity: severity.into(),
            rule: rule.to_owned(),
            summary,
            kubernetes: Some(context::kubernetes(
                &enrichment.cgroup,
                enrichment.container.as_ref(),
                enrichment.pod.as_ref(),
            )),
            container: Some(context::container(identity, &enrichment.cgroup)),
            process: Some(context::process(identity, &enrichment.process, enrichment.container.as_ref())),
            evidence: Some(evidence),
            missing: enrichment.missing.clone(),
        }
    }
}

/// " in pod shop/checkout-7f9c (container api)", or "" off Kubernetes.
fn place(enrichment: &Enrichment) -> String {
    let (namespace, pod, container) = match (&enrichment.pod, &enrichment.container) {
        (Some(pod), container) => {
            (pod.namespace.as_str(), pod.name.as_str(), container.as_ref().map_or("", |c| c.name.as_str()))
        }
        (None, Some(c)) => (c.pod_namespace.as_str(), c.pod_name.as_str(), c.name.as_str()),
        (None, None) => return String::new(),
    };
    match (pod.is_empty(), container.is_empty()) {
        (true, _) => String::new(),
        (false, true) => format!(" in pod {namespace}/{pod}"),
        (false, false) => format!(" in pod {namespace}/{pod} (container {container})"),
    }
}

fn token_read(open: &OpenRecord, enrichment: &Enrichment) -> (&'static str, Severity, String, Evidence) {
    let summary = format!(
        "{} (pid {}){} opened ServiceAccount token {}",
        open.identity.comm,
        open.identity.pid,
        place(enrichment),
        open.resolved_path
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

fn api_server_connect(connect: &ConnectRecord, enrichment: &Enrichment) -> (&'static str, Severity, String, Evidence) {
    let outcome = describe::connect_outcome(connect.result);
    let summary = format!(
        "{} (pid {}){} dialled the API server at {} ({outcome})",
        connect.identity.comm,
        connect.identity.pid,
        place(enrichment),
        connect.destination
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
