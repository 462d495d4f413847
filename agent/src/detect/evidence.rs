//! What was seen, as the alert's evidence, and the one-line summary.

use tokenwatch_common::{ConnectVia, OpenSyscall};
use tokenwatch_proto::v1::{alert::Evidence, ApiServerConnect, TokenRead};

use super::describe;
use crate::{
    kernel::{ConnectRecord, OpenRecord},
    metadata::{container_fs::kernel_dev_display, enrich::Enrichment},
};

/// " in pod shop/checkout-7f9c (container api)", or "" off Kubernetes.
pub fn place(enrichment: &Enrichment) -> String {
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

/// The evidence of a token read, with the token's owner when known.
pub fn token_read(open: &OpenRecord, enrichment: &Enrichment) -> Evidence {
    let owner = enrichment.owner.as_ref();
    Evidence::TokenRead(TokenRead {
        requested_path: open.requested_path.clone(),
        resolved_path: open.resolved_path.clone(),
        resolved_path_truncated: open.resolved_path_truncated,
        syscall: match open.syscall {
            OpenSyscall::Open => "open",
            OpenSyscall::Openat => "openat",
            OpenSyscall::Openat2 => "openat2",
            OpenSyscall::IoUringOpenat => "io_uring_openat",
            OpenSyscall::IoUringOpenat2 => "io_uring_openat2",
            OpenSyscall::OpenByHandleAt => "open_by_handle_at",
            OpenSyscall::PidfdGetfd => "pidfd_getfd",
        }
        .to_owned(),
        dirfd: open.dirfd,
        flags: describe::open_flags(open.flags),
        fd: open.fd,
        device: kernel_dev_display(open.dev),
        inode: open.ino,
        watched_path: enrichment.watched.as_ref().map(|w| w.path.display().to_string()).unwrap_or_default(),
        owner_pod_uid: enrichment.watched.as_ref().and_then(|w| w.pod_uid.clone()).unwrap_or_default(),
        owner_namespace: owner.map(|p| p.namespace.clone()).unwrap_or_default(),
        owner_pod: owner.map(|p| p.name.clone()).unwrap_or_default(),
        owner_service_account: owner.map(|p| p.service_account.clone()).unwrap_or_default(),
        owner_containers: enrichment.owner_containers.clone(),
    })
}

/// The evidence of an API-server connect.
pub fn api_server_connect(connect: &ConnectRecord) -> Evidence {
    Evidence::ApiServerConnect(ApiServerConnect {
        address: connect.destination.ip().to_string(),
        port: u32::from(connect.destination.port()),
        family: if connect.destination.is_ipv4() { "ipv4" } else { "ipv6" }.to_owned(),
        result: connect.result,
        outcome: outcome(connect),
        fd: connect.fd,
        hook: match connect.via {
            ConnectVia::Syscall => "connect",
            ConnectVia::CgroupSockAddr => "cgroup_connect",
        }
        .to_owned(),
    })
}

/// What became of the connect, as far as the hook that saw it knows.
fn outcome(connect: &ConnectRecord) -> String {
    match connect.via {
        ConnectVia::Syscall => describe::connect_outcome(connect.result),
        ConnectVia::CgroupSockAddr => "attempted".to_owned(),
    }
}

/// One human sentence for an alert.
pub fn summary(
    rule: &str,
    open: Option<&OpenRecord>,
    connect: Option<&ConnectRecord>,
    enrichment: &Enrichment,
) -> String {
    let place = place(enrichment);
    match (open, connect) {
        (Some(open), _) => {
            let whose = match enrichment.owner.as_ref() {
                Some(owner) if rule == super::rules::NODE_TOKEN_HARVEST.id => {
                    format!(" of pod {}/{}", owner.namespace, owner.name)
                }
                _ => String::new(),
            };
            format!(
                "{} (pid {}){place} opened ServiceAccount token {}{whose}",
                open.identity.comm, open.identity.pid, open.resolved_path
            )
        }
        (None, Some(connect)) => {
            let outcome = outcome(connect);
            let then = if rule == super::rules::TOKEN_THEFT_CHAIN.id { "read its token, then " } else { "" };
            format!(
                "{} (pid {}){place} {then}dialled the API server at {} ({outcome})",
                connect.identity.comm, connect.identity.pid, connect.destination
            )
        }
        (None, None) => String::new(),
    }
}
