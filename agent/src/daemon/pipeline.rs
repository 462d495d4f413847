//! The alert pipeline: each event the reader decoded is enriched, judged,
//! counted in the inventory, passed through the policy and the merging of
//! repeats, and delivered; the agent's own health alerts join it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use tokenwatch_proto::v1::Alert;
use tokio::sync::{mpsc, watch};

use super::DaemonError;
use crate::{
    deliver::{sinks::Sinks, spool::Spool, stdout::StdoutFormat, stdout::StdoutSink},
    detect::{
        dedup::{self, Deduper},
        health::{HealthAlerts, Problem},
        policy::Policy,
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
    let mut sink = Sinks::new(spool, StdoutSink::new(format, tokio::io::stdout()));
    let mut dedup = (!dedup_window.is_zero()).then(|| Deduper::new(dedup_window, dedup::DEFAULT_MAX_KEYS));
    // The loop notes for /healthz that it turns, at each tick of its own:
    // a busy loop still takes the tick within a few turns (select is
    // fair), and no event pays for the note.
    let mut beat = tokio::time::interval(crate::metrics::PIPELINE_BEAT);
    loop {
        let deadline = dedup.as_ref().and_then(Deduper::next_deadline);
        tokio::select! {
            _ = beat.tick() => crate::metrics::global().pipeline_beat(),
            event = events.recv() => {
                let Some(event) = event else { break };
                let enrichment = enricher.enrich(&event).await;
                let alerts = judge.judge(&event, &enrichment);
                count_enforcement(alerts.first());
                for alert in alerts {
                    inventory.record(&alert);
                    let Some(alert) = policy.borrow().apply(alert) else { continue };
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
                let judged = policy.borrow().apply(alert);
                if let Some(alert) = judged {
                    sink.write(&alert).await?;
                }
            }
        }
        if let Some(error) = sink.take_failure() {
            let alert = health.alerts.alert(&Problem::DeliveryLogFailing { error });
            let judged = policy.borrow().apply(alert);
            if let Some(alert) = judged {
                sink.write_stdout(&alert).await?;
            }
        }
    }
    while let Ok(alert) = health.losses.try_recv() {
        let judged = policy.borrow().apply(alert);
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

/// Counts what the kernel did for one event (its first alert says; a
/// chain alert from the same event repeats it).
fn count_enforcement(alert: Option<&Alert>) {
    if let Some(done) = alert.and_then(|a| a.enforcement.as_ref()) {
        let action = tokenwatch_proto::v1::EnforcementAction::try_from(done.action).unwrap_or_default();
        crate::metrics::global().enforcement_action(action.as_str_name(), &done.block_id);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(deadline) = deadline {
        tokio::time::sleep_until(deadline.into()).await;
    }
}
