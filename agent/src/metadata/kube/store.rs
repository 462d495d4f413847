//! The shared pod store the watcher writes and the event pipeline reads.
//!
//! Why not `kube::runtime::reflector`'s `Store`: the list, watch and relist
//! are already kube-runtime's (`watch.rs` runs its `watcher`); what stays
//! here is what its store cannot do. It removes a pod on the DELETED event,
//! and a process's last token read often reaches the pipeline after that
//! event: this store keeps a deleted pod for a grace period, so the alert
//! still names the pod. It also holds the [`PodInfo`] an alert needs (with
//! the owner resolved by API lookups outside the lock), not whole `Pod`
//! objects with their managed fields, and it wakes the enforcer on every
//! pod that appears.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use super::pod::PodInfo;

/// Pods of this node by UID, shared and cheaply clonable.
///
/// Readers take a read lock only long enough to clone an `Arc`; the watcher
/// takes the write lock only to swap entries (conversion and API lookups
/// happen outside it), so a reader never waits on the network.
///
/// A deleted pod stays resolvable for `deleted_grace` after its deletion was
/// seen: a process's last token read can reach the pipeline after the pod's
/// DELETED event. Expired entries are invisible at once ([`PodStore::get`]
/// checks the time) and are dropped by the watcher loop.
#[derive(Clone, Debug)]
pub struct PodStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pods: RwLock<HashMap<String, Arc<PodInfo>>>,
    deleted_grace: Duration,
    /// Bumped on every added or changed pod: the enforcer covers a pod the
    /// moment the API puts it on the node, not a reconcile later.
    generation: tokio::sync::watch::Sender<u64>,
    /// Set once the first list of the node's pods is complete.
    listed: std::sync::atomic::AtomicBool,
}

/// Waits until `changes` (from [`PodStore::changes`]) sees a pod added or
/// changed. Without a store (`None`, standalone), or once the store is
/// gone, it never returns, so a `select!` arm on it simply never fires.
pub async fn next_change(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) {
    if let Some(receiver) = changes {
        if receiver.changed().await.is_ok() {
            return;
        }
        *changes = None;
    }
    std::future::pending().await
}

impl PodStore {
    /// An empty store whose deleted pods stay resolvable for `deleted_grace`.
    pub fn new(deleted_grace: Duration) -> Self {
        let generation = tokio::sync::watch::Sender::new(0);
        let listed = std::sync::atomic::AtomicBool::new(false);
        PodStore { inner: Arc::new(Inner { pods: RwLock::new(HashMap::new()), deleted_grace, generation, listed }) }
    }

    /// A receiver that sees a change each time a pod is added or changed;
    /// wait on it with [`next_change`].
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// The pod with this UID, if it is on the node or was deleted less than
    /// the grace period ago.
    pub fn get(&self, uid: &str) -> Option<Arc<PodInfo>> {
        let now = Instant::now();
        let found = self.read().get(uid).filter(|pod| self.visible(pod, now)).cloned();
        crate::metrics::global().cache_lookup(crate::metrics::Cache::Pods, found.is_some());
        found
    }

    /// How many pods [`PodStore::get`] would resolve now.
    pub fn len(&self) -> usize {
        let now = Instant::now();
        self.read().values().filter(|pod| self.visible(pod, now)).count()
    }

    /// Whether no pod is resolvable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every resolvable pod, for callers that derive something from all of
    /// them (which token paths exist on the node); order is unspecified.
    pub fn snapshot(&self) -> Vec<Arc<PodInfo>> {
        let now = Instant::now();
        self.read().values().filter(|pod| self.visible(pod, now)).cloned().collect()
    }

    /// Whether the API's first list of this node's pods is complete: until
    /// then, an empty store says nothing about the node name.
    pub fn listed(&self) -> bool {
        self.inner.listed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Notes that a list of the node's pods is complete.
    pub(crate) fn mark_listed(&self) {
        self.inner.listed.store(true, std::sync::atomic::Ordering::Release);
    }

    /// How long deleted pods stay resolvable.
    pub fn deleted_grace(&self) -> Duration {
        self.inner.deleted_grace
    }

    /// Adds or replaces a pod (a pod listed again after being marked deleted
    /// is alive after all: its `deleted_at` is whatever `pod` says).
    pub(crate) fn upsert(&self, pod: PodInfo) {
        self.write().insert(pod.uid.clone(), Arc::new(pod));
        self.inner.generation.send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    /// Marks a pod deleted at `at`, storing `last` (its final state) if the
    /// store did not know it. An earlier deletion time is kept.
    pub(crate) fn mark_deleted(&self, last: PodInfo, at: Instant) {
        let mut pods = self.write();
        let entry = match pods.get(&last.uid) {
            Some(known) if known.deleted_at.is_some() => return,
            Some(known) => PodInfo { deleted_at: Some(at), ..PodInfo::clone(known) },
            None => PodInfo { deleted_at: Some(at), ..last },
        };
        pods.insert(entry.uid.clone(), Arc::new(entry));
    }

    /// After a relist: every live pod whose UID the new list did not contain
    /// was deleted while the watch was down. Returns how many were marked.
    pub(crate) fn mark_missing(&self, listed: &HashSet<String>, at: Instant) -> usize {
        let mut pods = self.write();
        let mut marked = 0;
        for (uid, pod) in pods.iter_mut() {
            if pod.deleted_at.is_none() && !listed.contains(uid) {
                *pod = Arc::new(PodInfo { deleted_at: Some(at), ..PodInfo::clone(pod) });
                marked += 1;
            }
        }
        marked
    }

    /// Drops deleted pods whose grace period is over.
    pub(crate) fn prune(&self, now: Instant) {
        let grace = self.inner.deleted_grace;
        self.write().retain(|_, pod| pod.deleted_at.is_none_or(|at| now.saturating_duration_since(at) < grace));
    }

    fn visible(&self, pod: &PodInfo, now: Instant) -> bool {
        pod.deleted_at.is_none_or(|at| now.saturating_duration_since(at) < self.inner.deleted_grace)
    }

    // A panic while holding the lock leaves the map consistent (every write
    // is one insert or retain), so a poisoned lock is still usable.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<String, Arc<PodInfo>>> {
        self.inner.pods.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<String, Arc<PodInfo>>> {
        self.inner.pods.write().unwrap_or_else(PoisonError::into_inner)
    }
}
