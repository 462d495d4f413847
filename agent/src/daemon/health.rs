//! Watches the kernel's drop counters and raises an `agent-degraded` alert
//! for each second in which matched events were lost: how many, on which
//! hooks, and when. A flood meant to blind the agent is itself reported.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokenwatch_common::Counter;
use tokenwatch_proto::v1::Alert;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::{
    detect::health::{HealthAlerts, Problem},
    kernel::counters::CounterMap,
};

/// How often the drop counters are compared.
pub const LOSS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Sends a loss alert to the pipeline whenever the drop counters moved
/// since the last look; a last look at cancellation catches the tail.
///
/// The counters start at zero: this agent created the map when it loaded
/// the programs (nothing is pinned), so every drop since `attached`, the
/// moment the hooks went live, is reported, including those made before
/// this task first ran. Taking a first reading as the baseline instead hid
/// the drops of a flood that began while the agent was still starting.
pub async fn watch_losses(
    counters: Arc<CounterMap>,
    attached: SystemTime,
    mut alerts: HealthAlerts,
    pipeline: mpsc::Sender<Alert>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let mut seen: HashMap<&'static str, u64> = HashMap::new();
    let mut since = attached;
    let mut ticker = tokio::time::interval(LOSS_CHECK_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last_look = tokio::select! {
            () = cancel.cancelled() => true,
            _ = ticker.tick() => false,
        };
        let Some(now) = dropped_by_hook(&counters) else {
            if last_look {
                return Ok(());
            }
            continue;
        };
        let lost: Vec<(&'static str, u64)> = now
            .iter()
            .map(|(hook, total)| (*hook, total.saturating_sub(seen.get(hook).copied().unwrap_or(0))))
            .filter(|(_, lost)| *lost > 0)
            .collect();
        let until = SystemTime::now();
        if !lost.is_empty() {
            let alert = alerts.alert(&Problem::EventsLost { by_hook: lost, since, until });
            tracing::warn!(summary = %alert.summary, "events lost in the kernel");
            // The pipeline may be gone at shutdown; the log line above and
            // the kernel counters line still say it.
            let _ = pipeline.send(alert).await;
        }
        (seen, since) = (now, until);
        if last_look {
            return Ok(());
        }
    }
}

/// `EventsDropped` per hook, summed over CPUs; `None` (and a warning) if
/// the map cannot be read, so a failed look never counts as a loss.
fn dropped_by_hook(counters: &CounterMap) -> Option<HashMap<&'static str, u64>> {
    match counters.read() {
        Ok(readings) => Some(
            readings
                .readings
                .iter()
                .filter(|r| r.counter == Counter::EventsDropped)
                .map(|r| (r.hook.name(), r.total()))
                .collect(),
        ),
        Err(error) => {
            tracing::warn!(%error, "reading the kernel's drop counters");
            None
        }
    }
}
