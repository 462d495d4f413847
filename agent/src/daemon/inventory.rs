//! The inventory's upkeep: every few seconds it learns the node's pods from
//! the pod store (so workloads that never touch their token are counted
//! too, and pods that came and went) and saves itself when it changed.

use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::{inventory::Inventory, metadata::kube::PodStore};

/// How often the pods are looked at; the store keeps deleted pods for
/// minutes, so a pod that lives for less than this is still counted.
const POD_SYNC: Duration = Duration::from_secs(2);
/// How often the state file is rewritten at most (and only when changed):
/// a crash loses at most this much of the counts.
const SAVE_EVERY: Duration = Duration::from_secs(10);

/// Syncs pods and saves until `cancel`; the daemon saves once more after
/// the pipeline's last event. A failed save is logged and retried: the
/// watch matters more than the file.
pub async fn keep(inventory: Inventory, pods: Option<PodStore>, cancel: CancellationToken) -> Result<(), DaemonError> {
    let mut sync = tokio::time::interval(POD_SYNC);
    sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut save = tokio::time::interval(SAVE_EVERY);
    save.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = sync.tick() => {
                match &pods {
                    Some(pods) => inventory.observe_pods(&pods.snapshot(), SystemTime::now()),
                    None => inventory.forget_gone(SystemTime::now()),
                }
            }
            _ = save.tick() => {
                let book = inventory.clone();
                match tokio::task::spawn_blocking(move || book.save()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => tracing::warn!(%error, "saving the inventory; will retry"),
                    Err(error) => return Err(DaemonError::Panic(format!("inventory save: {error}"))),
                }
            }
        }
    }
}
