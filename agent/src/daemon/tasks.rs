//! The agent's alert pipeline, the long-running task besides the reader
//! and the scanner (`scanner.rs`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokenwatch_proto::v1::Alert;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::{
    config::StdoutFormat,
    deliver::{spool::Spool, stdout::StdoutSink},
    detect::{
        dedup::{self, Deduper},
        health::{HealthAlerts, Problem},
        policy::{Policy, Verdict},
        Judge,
    },
    inventory::Inventory,
    kernel::KernelEvent,
    metadata::enrich::Enricher,
};

/// Enriches, judges, applies the policy, merges repeats and delivers each
/// event until the reader is done; then delivers the merged counts still
/// open, so nothing accepted is lost at shutdown. Every judged event is
/// counted in the inventory first, before policy and merging, so its counts
/// are the true ones.
pub async fn pipeline(
    mut events: mpsc::Receiver<KernelEvent>,
    enricher: Enricher,
    mut judge: Judge,
    policy: watch::Receiver<Arc<Policy>>,
    dedup_window: Duration,
    delivery: Delivery,
) -> Result<(), DaemonError> {
    let Delivery { spool, format, mut health, inventory } = delivery;
    let mut sink = Sinks { spool, stdout: StdoutSink::new(format, tokio::io::stdout()), failing: None };
    let mut dedup = (!dedup_window.is_zero()).then(|| Deduper::new(dedup_window, dedup::DEFAULT_MAX_KEYS));
    loop {
        let deadline = dedup.as_ref().and_then(Deduper::next_deadline);
        tokio::select! {
            event = events.recv() => {
                let Some(event) = event else { break };
                let enrichment = enricher.enrich(&event).await;
                let alerts = judge.judge(&event, &enrichment);
                count_enforcement(alerts.first());
                for alert in alerts {
                    inventory.record(&alert);
                    let Some(alert) = apply(&policy.borrow(), alert) else { continue };
                    let out = match dedup.as_mut() {
                        Some(dedup) => dedup.offer(alert, Instant::now()),
                        None => Some(alert),
                    };
                    if let Some(alert) = out {
                        sink.write(&alert).await?;
                    }
                }
            }
            () = sleep_until(deadline), if deadline.is_some() => {
                for alert in dedup.as_mut().map(|d| d.flush(Instant::now())).unwrap_or_default() {
                    sink.write(&alert).await?;
                }
            }
            Some(alert) = health.losses.recv() => {
                let judged = apply(&policy.borrow(), alert);
                if let Some(alert) = judged {
                    sink.write(&alert).await?;
                }
            }
        }
        if let Some(error) = sink.failing.as_mut().and_then(|f| f.unreported.take()) {
            let alert = health.alerts.alert(&Problem::DeliveryLogFailing { error });
            let judged = apply(&policy.borrow(), alert);
            if let Some(alert) = judged {
                sink.stdout.write(&alert).await?;
            }
        }
    }
    while let Ok(alert) = health.losses.try_recv() {
        let judged = apply(&policy.borrow(), alert);
        if let Some(alert) = judged {
            sink.write(&alert).await?;
        }
    }
    for alert in dedup.as_mut().map(Deduper::flush_all).unwrap_or_default() {
        sink.write(&alert).await?;
    }
    for (id, reason, count) in policy.borrow().suppression_counts() {
        tracing::info!(exception = %id, %reason, suppressed = count, "policy exception");
    }
    Ok(())
}

/// Where the pipeline delivers, and what it reports on the agent itself.
pub struct Delivery {
    /// The delivery log.
    pub spool: Spool,
    /// The stdout format.
    pub format: StdoutFormat,
    /// Loss alerts in, delivery-log alerts out.
    pub health: Health,
    /// Counts every judged event (before policy and dedup) for the
    /// token usage inventory.
    pub inventory: Inventory,
}

/// What the pipeline needs to report on the agent itself.
pub struct Health {
    /// Loss alerts from [`super::health::watch_losses`].
    pub losses: mpsc::Receiver<Alert>,
    /// Builds the delivery-log alerts.
    pub alerts: HealthAlerts,
}

/// Every alert goes to the delivery log first (which gives it its
/// sequence), then to stdout. When the log cannot be written (a full disk),
/// the alert still goes to stdout, the failure is counted, and one
/// `agent-degraded` alert per episode says so; the agent keeps watching.
struct Sinks<W> {
    spool: Spool,
    stdout: StdoutSink<W>,
    /// Set while appends fail.
    failing: Option<Failing>,
}

/// A run of failed appends.
struct Failing {
    /// The first error, until the pipeline has raised its alert.
    unreported: Option<String>,
    /// Appends refused so far.
    refused: u64,
}

impl<W: tokio::io::AsyncWrite + Unpin> Sinks<W> {
    async fn write(&mut self, alert: &Alert) -> Result<(), DaemonError> {
        let mut alert = alert.clone();
        let metrics = crate::metrics::global();
        match self.spool.append(&mut alert) {
            Ok(_) => {
                if let Some(failing) = self.failing.take() {
                    tracing::warn!(refused = failing.refused, "the delivery log is writable again");
                }
            }
            Err(error) => {
                crate::metrics::Metrics::bump(&metrics.spool_write_failures);
                match self.failing.as_mut() {
                    Some(failing) => failing.refused += 1,
                    None => {
                        tracing::error!(
                            %error,
                            "the delivery log cannot be written: alerts go to stdout only, and subscribers and the \
                             collector miss them until it recovers"
                        );
                        self.failing = Some(Failing { unreported: Some(error.to_string()), refused: 1 });
                    }
                }
            }
        }
        let severity = tokenwatch_proto::v1::Severity::try_from(alert.severity).unwrap_or_default();
        metrics.alert_delivered(&alert.rule, severity.as_str_name());
        self.stdout.write(&alert).await?;
        Ok(())
    }
}

/// The policy's verdict: the alert at its severity, or nothing. What the
/// node itself did (a refused connect, a killed process, or a dry run's
/// report of them) is always delivered: a disabled rule or an exception
/// must not hide an action taken.
fn apply(policy: &Policy, mut alert: Alert) -> Option<Alert> {
    let enforced = alert.enforcement.is_some();
    match policy.judge(&alert) {
        Verdict::Alert { severity } => {
            alert.severity = severity.into();
            Some(alert)
        }
        Verdict::Disabled { .. } | Verdict::Suppressed { .. } if enforced => Some(alert),
        Verdict::Disabled { rule } => {
            tracing::trace!(%rule, "rule disabled by policy");
            None
        }
        Verdict::Suppressed { exception, reason } => {
            tracing::debug!(alert = %alert.id, %exception, %reason, "suppressed by policy");
            None
        }
    }
}

/// Counts what the kernel did for one event (its first alert says; a
/// chain alert from the same event repeats it).
fn count_enforcement(alert: Option<&Alert>) {
    if let Some(done) = alert.and_then(|a| a.enforcement.as_ref()) {
        let action = tokenwatch_proto::v1::EnforcementAction::try_from(done.action).unwrap_or_default();
        crate::metrics::global().enforcement_action(action.as_str_name(), &done.block_id);
    }
}

/// Flushes the delivery log to disk every second and at shutdown: a crash
/// of the agent loses nothing written, a crash of the node at most a second.
pub async fn sync_spool(spool: Spool, cancel: CancellationToken) -> Result<(), DaemonError> {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = ticker.tick() => spool.sync()?,
        }
    }
    spool.sync()?;
    Ok(())
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokenwatch_proto::v1::{Enforcement, EnforcementAction, KubernetesContext};

    use super::*;

    /// An exception or a disabled rule drops an alert, but never one that
    /// says the node refused something: the operator must see every action.
    #[test]
    fn what_the_node_did_is_delivered_even_when_the_policy_would_drop_it() {
        let text = "rules:\n  apiserver-connect: { enabled: false }\n\
                    exceptions:\n  - id: shop\n    reason: r\n    namespaces: [shop]\n";
        let policy = Policy::parse(Path::new("p"), text).expect("valid");
        let kubernetes = Some(KubernetesContext { namespace: "shop".into(), ..KubernetesContext::default() });
        let read = Alert { rule: "token-read".into(), kubernetes, ..Alert::default() };
        let connect = Alert { rule: "apiserver-connect".into(), ..read.clone() };
        assert_eq!(apply(&policy, read.clone()), None, "excepted");
        assert_eq!(apply(&policy, connect.clone()), None, "disabled");
        let killed = Enforcement { action: EnforcementAction::Killed.into(), block_id: "b".into() };
        for alert in [read, connect] {
            let acted = Alert { enforcement: Some(killed.clone()), ..alert };
            assert_eq!(apply(&policy, acted.clone()), Some(acted));
        }
    }
}
