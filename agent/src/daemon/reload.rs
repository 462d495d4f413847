//! SIGHUP reloads the policy file, and the gRPC server's TLS files
//! (`deliver/grpc/tls`, which also notices a change by itself). A policy
//! file that does not load is refused with its file:line:column and the
//! policy in force stays: a typo must never leave the node unwatched or
//! change what is excepted.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::detect::policy::Policy;

/// Waits for SIGHUP until cancelled; each one reloads `path` into `policy`
/// and wakes `tls` (the gRPC server's reload).
pub async fn reload_on_hangup(
    path: Option<PathBuf>,
    policy: watch::Sender<Arc<Policy>>,
    tls: Arc<Notify>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| DaemonError::Signal("SIGHUP", e))?;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            received = hangups.recv() => if received.is_none() { return Ok(()) },
        }
        tls.notify_one();
        let Some(path) = path.clone() else {
            tracing::warn!("SIGHUP: no --policy file was given; the built-in default policy stays in force");
            continue;
        };
        let loaded = tokio::task::spawn_blocking(move || Policy::load(&path))
            .await
            .map_err(|e| DaemonError::Panic(format!("policy reload: {e}")))?;
        match loaded {
            Ok(new) => {
                let disabled: Vec<&str> =
                    crate::detect::rules::ALL.iter().filter(|r| !new.rule_enabled(r.id)).map(|r| r.id).collect();
                tracing::info!(
                    exceptions = new.suppression_counts().len(),
                    blocks = new.blocks().len(),
                    disabled = ?disabled,
                    "policy reloaded"
                );
                policy.send_replace(Arc::new(new));
            }
            Err(error) => tracing::error!(%error, "policy reload refused; the previous policy stays in force"),
        }
    }
}
