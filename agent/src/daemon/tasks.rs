//! The agent's long-running tasks besides the reader: the token-file scanner
//! and the alert pipeline.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokenwatch_proto::v1::Alert;

use tokio::sync::{mpsc, watch, Notify};
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
    kernel::{
        watchlist::{self, FileMaps, Wanted},
        KernelEvent,
    },
    metadata::{
        enrich::Enricher,
        kube::PodStore,
        token_files::{self, TokenFiles},
    },
};

/// Rescans the node for token files and keeps the kernel map in step.
pub struct Scanner {
    paths: Vec<PathBuf>,
    proc: PathBuf,
    maps: FileMaps,
    current: Arc<TokenFiles>,
    pods: Option<PodStore>,
}

impl Scanner {
    /// A scanner of `paths` in every mount namespace listed under `proc`.
    /// With `pods`, each pod's token mounts (projected volumes at their own
    /// mountPath, legacy Secret tokens) are resolved too.
    pub fn new(paths: Vec<PathBuf>, proc: PathBuf, maps: FileMaps, pods: Option<PodStore>) -> Self {
        Scanner { paths, proc, maps, current: Arc::default(), pods }
    }

    /// One scan: find the files and update the kernel's map. The caller
    /// publishes the result to the enricher, then calls [`Self::announce`].
    pub async fn scan_once(&mut self) -> Result<Arc<TokenFiles>, DaemonError> {
        // The names first, before the walk of every namespace: a pod just
        // put on the node may start while it runs.
        let paths = self.sync_names()?;
        let proc = self.proc.clone();
        let found = tokio::task::spawn_blocking(move || token_files::scan(&proc, &paths))
            .await
            .map_err(|error| DaemonError::Panic(format!("scanner: {error}")))?;
        let wanted = Wanted {
            files: found.keys().copied().collect(),
            volumes: found.iter().filter_map(|(key, file)| Some((key.dev, file.volume_name.clone()?))).collect(),
        };
        let (added, removed) = watchlist::sync_files(&mut self.maps, &wanted)?;
        if added + removed > 0 {
            tracing::debug!(added, removed, watched = found.len(), "token files rescanned");
        }
        Ok(Arc::new(found))
    }

    /// The paths to resolve (the configured ones and every pod's token
    /// mounts), after making the kernel's token names theirs; cheap, no
    /// walk of the node's processes.
    fn sync_names(&mut self) -> Result<Vec<PathBuf>, DaemonError> {
        let mut paths = self.paths.clone();
        for pod in self.pods.iter().flat_map(PodStore::snapshot) {
            for mount in pod.containers.iter().flat_map(|c| &c.token_mounts) {
                if let Some(path) = mount.token_path().map(PathBuf::from).filter(|p| !paths.contains(p)) {
                    paths.push(path);
                }
            }
        }
        let names = paths.iter().filter_map(|path| Some(path.file_name()?.to_str()?.to_owned())).collect();
        watchlist::sync_names(&mut self.maps.names, &names)?;
        Ok(paths)
    }

    /// Logs each file `found` holds that the last scan did not, once the
    /// enricher has `found`: after the line, a read of the file is
    /// attributed to that namespace's pod. A file whose device and inode a
    /// gone pod's file had (a new tmpfs reuses both) is new too.
    pub fn announce(&mut self, found: &Arc<TokenFiles>) {
        for (key, file) in found.iter() {
            let before = self.current.get(key).map(|seen| (seen.mount_ns, seen.pid));
            if before != Some((file.mount_ns, file.pid)) {
                tracing::info!(
                    path = %file.path.display(), mount_ns = file.mount_ns, pid = file.pid,
                    device = format!("{}:{}", key.dev >> 20, key.dev & 0xf_ffff), inode = key.ino,
                    "watching token file"
                );
            }
        }
        self.current = Arc::clone(found);
    }

    /// Rescans every `interval`, and when `rescan` is notified (an open
    /// matched a token no scan had found) or the pod store changes, at most
    /// once per [`MIN_WOKEN_RESCAN_GAP`], until cancelled, publishing each
    /// result. A pod store change makes the kernel's token names the pods'
    /// at once, whatever the gap: a pod the API put on the node may bring a
    /// name of its own (a custom projection's `path`), and kubelet may
    /// start it at any moment.
    pub async fn run(
        mut self,
        interval: Duration,
        snapshots: watch::Sender<Arc<TokenFiles>>,
        rescan: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut pod_changes = self.pods.as_ref().map(PodStore::changes);
        let mut woken_not_before = Instant::now();
        loop {
            let pod_changed = async {
                match pod_changes.as_mut() {
                    Some(changes) => changes.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            // Reads of a file no scan can find (its namespace gone) must
            // not keep the scanner busy: an ask waits out the gap.
            let asked = async {
                tokio::time::sleep_until(woken_not_before.into()).await;
                rescan.notified().await;
            };
            let woken = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => false,
                () = asked => true,
                alive = pod_changed => {
                    if !alive {
                        pod_changes = None;
                    }
                    self.sync_names()?;
                    if Instant::now() < woken_not_before {
                        continue;
                    }
                    true
                }
            };
            let found = self.scan_once().await?;
            snapshots.send_replace(Arc::clone(&found));
            self.announce(&found);
            if woken {
                woken_not_before = Instant::now() + MIN_WOKEN_RESCAN_GAP;
                ticker.reset();
            }
        }
    }
}

/// The least time between two scans not due to the interval.
const MIN_WOKEN_RESCAN_GAP: Duration = Duration::from_millis(250);

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
