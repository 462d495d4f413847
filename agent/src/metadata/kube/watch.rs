//! The watch loop: kube-rs's watcher (list, watch from the list's
//! resourceVersion, bookmarks, relist on 410 Gone) applied to a [`PodStore`].

use std::collections::HashSet;
use std::pin::pin;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::owners::OwnerResolver;
use super::pod::PodInfo;
use super::store::PodStore;
use super::KubeError;

/// Tuning of [`watch_pods_with`]; the defaults suit a real cluster, tests
/// shorten them.
#[derive(Clone, Debug)]
pub struct WatchOptions {
    /// First delay after a failure; doubles per consecutive failure.
    pub backoff_min: Duration,
    /// Longest delay between retries.
    pub backoff_max: Duration,
    /// `timeoutSeconds` of each watch request. The server ends the watch
    /// after it and kube resumes from the last resourceVersion; kube also
    /// treats a watch silent for this plus 5 s as dead.
    pub watch_timeout_seconds: u32,
    /// How long one owner GET (ReplicaSet, Job) may take before the fallback
    /// name is used; the watch loop waits for it.
    pub owner_lookup_timeout: Duration,
}

impl WatchOptions {
    /// Delays between retries of a failing watch: `backoff_min`, doubling
    /// up to `backoff_max`, for as long as it takes; a fresh one after an
    /// event arrives.
    pub fn retry_delays(&self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.backoff_min)
            .with_max_delay(self.backoff_max.max(self.backoff_min))
            .with_factor(2.0)
            .without_max_times()
            .build()
    }
}

impl Default for WatchOptions {
    /// client-go's reflector backoff (0.8 s to 30 s) and kube's watch timeout.
    fn default() -> Self {
        WatchOptions {
            backoff_min: Duration::from_millis(800),
            backoff_max: Duration::from_secs(30),
            watch_timeout_seconds: 290,
            owner_lookup_timeout: Duration::from_secs(5),
        }
    }
}

/// Watches the pods of `node_name` into `store` until `cancel`, with default
/// [`WatchOptions`].
///
/// Transient failures (API unreachable, watch errors, 410 Gone, 403 while
/// RBAC is being fixed) never end it: they are logged at warn with the retry
/// count and retried with backoff. It returns `Ok` when cancelled and an error
/// only for a bad configuration (an empty node name).
pub async fn watch_pods(
    client: Client,
    node_name: String,
    store: PodStore,
    cancel: CancellationToken,
) -> Result<(), KubeError> {
    watch_pods_with(client, node_name, store, cancel, WatchOptions::default()).await
}

/// [`watch_pods`] with explicit tuning.
pub async fn watch_pods_with(
    client: Client,
    node_name: String,
    store: PodStore,
    cancel: CancellationToken,
    options: WatchOptions,
) -> Result<(), KubeError> {
    let node = node_name.trim();
    if node.is_empty() {
        return Err(KubeError::NoNodeName);
    }
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(options.watch_timeout_seconds.max(1));
    let mut applier = Applier {
        store: store.clone(),
        owners: OwnerResolver::new(client.clone(), options.owner_lookup_timeout),
        relisting: None,
    };
    let mut stream = pin!(watcher(Api::<Pod>::all(client), config));
    let mut prune =
        tokio::time::interval(store.deleted_grace().clamp(Duration::from_millis(100), Duration::from_secs(30)));
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures: u32 = 0;
    let mut delays = options.retry_delays();
    info!(node, "watching the node's pods");
    loop {
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            item = stream.next() => item,
            _ = prune.tick() => {
                store.prune(Instant::now());
                continue;
            }
        };
        // kube's watcher is an endless stream; an end would be a kube bug,
        // and there is nothing to do but wait for the cancellation.
        let Some(item) = item else {
            warn!("the pod watch stream ended; pod metadata is no longer updated");
            cancel.cancelled().await;
            return Ok(());
        };
        match item {
            Ok(event) => {
                if !matches!(event, Event::Init) {
                    failures = 0;
                    delays = options.retry_delays();
                }
                applier.apply(event).await;
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                let gone = matches!(&err, watcher::Error::WatchError(status) if status.code == 410);
                if gone && failures == 1 {
                    // The normal way a watch ends after a long outage or a compaction: relist now.
                    info!(error = %err, "pod watch resourceVersion expired; relisting");
                    continue;
                }
                let delay = delays.next().unwrap_or(options.backoff_max);
                warn!(retry = failures, delay_ms = delay.as_millis() as u64, error = %err, "pod watch failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Applies watcher events to the store.
struct Applier {
    store: PodStore,
    owners: OwnerResolver,
    /// UIDs listed since the last `Init`, while a (re)list is in progress.
    relisting: Option<HashSet<String>>,
}

impl Applier {
    async fn apply(&mut self, event: Event<Pod>) {
        match event {
            Event::Init => {
                debug!("pod list started");
                self.relisting = Some(HashSet::new());
            }
            Event::InitApply(pod) => {
                if let Some(uid) = self.upsert(&pod).await {
                    if let Some(listed) = &mut self.relisting {
                        listed.insert(uid);
                    }
                }
            }
            Event::InitDone => {
                let listed = self.relisting.take().unwrap_or_default();
                let gone = self.store.mark_missing(&listed, Instant::now());
                self.store.mark_listed();
                info!(pods = listed.len(), deleted_while_unwatched = gone, "pod list complete");
                release_freed_memory();
            }
            Event::Apply(pod) => {
                self.upsert(&pod).await;
            }
            Event::Delete(pod) => {
                let info = PodInfo::from_pod(&pod);
                if info.uid.is_empty() {
                    return;
                }
                debug!(namespace = %info.namespace, name = %info.name, "pod deleted");
                self.store.mark_deleted(info, Instant::now());
            }
        }
    }

    /// Converts and stores a pod, resolving its workload; returns its UID.
    async fn upsert(&mut self, pod: &Pod) -> Option<String> {
        let mut info = PodInfo::from_pod(pod);
        if info.uid.is_empty() {
            debug!(name = %info.name, "pod without uid ignored");
            return None;
        }
        // Cached per owner, so a pod's MODIFIED events cost no request.
        info.workload = self.owners.resolve(&info).await;
        let uid = info.uid.clone();
        debug!(namespace = %info.namespace, name = %info.name, %uid, "pod in the store");
        self.store.upsert(info);
        Some(uid)
    }
}

/// Hands the heap the list left free back to the kernel. A list of a
/// thousand pods is parsed into megabytes of JSON values that are dropped
/// once each pod is summarised, and a full relist happens seldom enough
/// that collecting after it costs nothing that matters. The agent's
/// allocator is mimalloc (`main.rs`), which already returns freed pages
/// promptly; this also collects what this thread's heap still holds.
fn release_freed_memory() {
    // SAFETY: mi_collect only frees pages that hold no live allocation.
    unsafe { libmimalloc_sys::mi_collect(true) };
}
