//! The inventory's contents on one agent: one entry per workload and
//! ServiceAccount, with the pod UIDs already counted, all bounded.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Alert, Inventory as InventoryMessage, TokenMount, Usage, WorkloadInventory};

use super::pods::{self, Key};
use super::usage::{add_use, max_time};
use crate::metadata::kube::PodInfo;

/// Workloads kept at most; past it, the one idle longest with no pod running
/// makes room (a node runs a few hundred pods at most, so this bounds churn).
pub const MAX_WORKLOADS: usize = 10_000;
/// How stale a saved `last_pod_seen` may get before a pod sync saves it.
const LAST_SEEN_SAVE_SECONDS: i64 = 60;
/// How long a workload with no pod on the node and no use is kept: past it
/// the workload is forgotten, and its metric series go. Five weeks, so a
/// monthly CronJob is still known at its next run.
pub const RETENTION_SECONDS: i64 = 35 * 24 * 3600;
/// Pod UIDs remembered per workload, so a pod seen again (after a restart of
/// the agent too) is not counted twice.
pub const MAX_POD_UIDS: usize = 512;

/// One workload's record and the pods already counted.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// What the API shows (without `pods_running`, which is `running`).
    pub usage: WorkloadInventory,
    /// UIDs of pods already counted in `pods_seen`, oldest first.
    pub pod_uids: VecDeque<String>,
    /// Pods on the node at the last pod sync; not saved.
    pub running: u64,
}

/// Everything one agent keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Book {
    node: String,
    observed_since: Timestamp,
    entries: BTreeMap<Key, Entry>,
    dirty: bool,
}

impl Book {
    /// An empty book on `node`, observing from `since`.
    pub fn new(node: &str, since: Timestamp) -> Self {
        Book { node: node.to_owned(), observed_since: since, entries: BTreeMap::new(), dirty: true }
    }

    /// A book restored from the state file.
    pub fn restored(node: &str, since: Timestamp, entries: BTreeMap<Key, Entry>) -> Self {
        Book { node: node.to_owned(), observed_since: since, entries, dirty: false }
    }

    /// The node name to report (the configured one wins over the saved one).
    pub fn set_node(&mut self, node: &str) {
        if self.node != node {
            self.node = node.to_owned();
            self.dirty = true;
        }
    }

    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Since when this book has been kept.
    pub fn observed_since(&self) -> Timestamp {
        self.observed_since
    }

    /// The entries, for saving.
    pub fn entries(&self) -> &BTreeMap<Key, Entry> {
        &self.entries
    }

    /// How many workloads it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether it changed since the last call; clears the mark.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Marks it changed (a save failed and must be retried).
    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    /// See [`super::Inventory::record`].
    pub fn record(&mut self, alert: &Alert) {
        let reads = match alert.rule.as_str() {
            "token-read" => true,
            "apiserver-connect" => false,
            _ => return,
        };
        let Some(k8s) = alert.kubernetes.as_ref().filter(|k| !k.namespace.is_empty() && !k.pod.is_empty()) else {
            return;
        };
        let owner = k8s.workload.as_ref().map(|w| (w.kind.as_str(), w.name.as_str()));
        let key = Key::new(&k8s.namespace, owner, &k8s.pod, &k8s.service_account);
        let Some(time) = alert.time.or(alert.first_seen) else { return };
        let node = self.node.clone();
        let Some(entry) = self.entry(key, time) else { return };
        let labels: std::collections::BTreeMap<String, String> =
            k8s.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        add_pod(entry, &k8s.pod_uid, &labels);
        if entry.usage.automount_service_account_token.is_none() {
            entry.usage.automount_service_account_token = k8s.automount_service_account_token;
        }
        let usage = if reads {
            // Without pods to say how (standalone), a read proves a token.
            entry.usage.token_mounted |= entry.running == 0 && entry.usage.token_mounts.is_empty();
            entry.usage.token_reads.get_or_insert_with(Usage::default)
        } else {
            entry.usage.api_server_connects.get_or_insert_with(Usage::default)
        };
        add_use(usage, alert.count.max(1), &binary(alert), time);
        add_node(&mut entry.usage.nodes, &node);
        self.dirty = true;
    }

    /// See [`super::Inventory::observe_pods`]. How the token is mounted is
    /// what the pods running now say (so a workload already hardened is not
    /// advised again); a workload with none running keeps what its last
    /// pods said.
    pub fn observe_pods(&mut self, pods: &[Arc<PodInfo>], now: Timestamp) {
        let mut running: BTreeMap<Key, (u64, Vec<TokenMount>, Option<bool>)> = BTreeMap::new();
        let node = self.node.clone();
        let mut dirty = false;
        for pod in pods {
            let key = Key::of_pod(pod);
            let alive = pod.deleted_at.is_none();
            let Some(entry) = self.entry(key.clone(), now) else { continue };
            let uids_before = entry.pod_uids.len();
            let labels_before = entry.usage.selector_labels.clone();
            add_pod(entry, &pod.uid, &pod.labels);
            dirty |= entry.pod_uids.len() != uids_before || entry.usage.selector_labels != labels_before;
            if !entry.usage.nodes.contains(&node) {
                add_node(&mut entry.usage.nodes, &node);
                dirty = true;
            }
            if alive {
                // Saved now and then, not at every sync.
                let stale =
                    entry.usage.last_pod_seen.is_none_or(|seen| now.seconds - seen.seconds >= LAST_SEEN_SAVE_SECONDS);
                dirty |= stale;
                entry.usage.last_pod_seen = Some(now);
                let (count, mounts, automount) = running.entry(key).or_default();
                *count += 1;
                for mount in pods::token_mounts(pod) {
                    pods::add_mount(mounts, mount);
                }
                *automount = automount.or(pod.automount_service_account_token);
            } else if entry.running == 0 && entry.usage.token_mounts.is_empty() {
                // A pod seen only after its deletion still tells how it got its token.
                for mount in pods::token_mounts(pod) {
                    pods::add_mount(&mut entry.usage.token_mounts, mount);
                }
                entry.usage.token_mounted |= !entry.usage.token_mounts.is_empty();
            }
        }
        self.dirty |= dirty;
        for (key, entry) in &mut self.entries {
            let Some((count, mounts, automount)) = running.remove(key) else {
                self.dirty |= entry.running != 0;
                entry.running = 0;
                continue;
            };
            let token_mounted = !mounts.is_empty();
            let changed = entry.running != count
                || entry.usage.token_mounts != mounts
                || entry.usage.token_mounted != token_mounted
                || entry.usage.automount_service_account_token != automount;
            self.dirty |= changed;
            entry.running = count;
            entry.usage.token_mounts = mounts;
            entry.usage.token_mounted = token_mounted;
            entry.usage.automount_service_account_token = automount;
        }
        self.forget_gone(now);
    }

    /// Forgets the workloads with no pod running whose last sign of life is
    /// older than [`RETENTION_SECONDS`].
    pub fn forget_gone(&mut self, now: Timestamp) {
        let before = self.entries.len();
        self.entries.retain(|_, entry| {
            entry.running > 0 || now.seconds.saturating_sub(last_sign_of_life(entry).seconds) <= RETENTION_SECONDS
        });
        self.dirty |= self.entries.len() != before;
    }

    /// See [`super::Inventory::snapshot`].
    pub fn snapshot(&self, namespaces: &[String], now: Timestamp) -> InventoryMessage {
        let wanted: HashSet<&str> = namespaces.iter().map(String::as_str).collect();
        let workloads = self
            .entries
            .iter()
            .filter(|(key, _)| wanted.is_empty() || wanted.contains(key.namespace.as_str()))
            .map(|(_, entry)| WorkloadInventory { pods_running: entry.running, ..entry.usage.clone() })
            .collect();
        InventoryMessage {
            nodes: vec![self.node.clone()],
            observed_since: Some(self.observed_since),
            generated_at: Some(now),
            workloads,
        }
    }

    /// The entry for `key`, created (observed from `now`) if new; `None`
    /// when the book is full of workloads with pods running.
    fn entry(&mut self, key: Key, now: Timestamp) -> Option<&mut Entry> {
        if !self.entries.contains_key(&key) {
            if self.entries.len() >= MAX_WORKLOADS && !self.evict_idlest() {
                tracing::warn!(namespace = %key.namespace, workload = %key.name, "inventory full; workload not kept");
                return None;
            }
            let usage = WorkloadInventory {
                namespace: key.namespace.clone(),
                workload: Some(key.workload()),
                service_account: key.service_account.clone(),
                observed_since: Some(now),
                ..WorkloadInventory::default()
            };
            self.entries.insert(key.clone(), Entry { usage, ..Entry::default() });
            self.dirty = true;
        }
        self.entries.get_mut(&key)
    }

    /// Drops the workload with no pod running that was active longest ago.
    fn evict_idlest(&mut self) -> bool {
        let idlest = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.running == 0)
            .min_by_key(|(_, entry)| {
                let last = last_sign_of_life(entry);
                (last.seconds, last.nanos)
            })
            .map(|(key, _)| key.clone());
        idlest.is_some_and(|key| self.entries.remove(&key).is_some())
    }
}

/// The latest of a workload's first sight, last pod seen, last read and
/// last connect.
fn last_sign_of_life(entry: &Entry) -> Timestamp {
    let u = &entry.usage;
    [
        u.last_pod_seen,
        u.token_reads.as_ref().and_then(|r| r.last_seen),
        u.api_server_connects.as_ref().and_then(|c| c.last_seen),
    ]
    .into_iter()
    .flatten()
    .fold(u.observed_since.unwrap_or_default(), max_time)
}

/// Counts a pod once (the first pod's labels start the selector; each new
/// one narrows it to what they share).
fn add_pod(entry: &mut Entry, uid: &str, labels: &std::collections::BTreeMap<String, String>) {
    if uid.is_empty() || entry.pod_uids.iter().any(|known| known == uid) {
        return;
    }
    let labels = pods::selector_labels(labels);
    if entry.usage.pods_seen == 0 {
        entry.usage.selector_labels = labels;
    } else {
        pods::intersect_labels(&mut entry.usage.selector_labels, &labels);
    }
    entry.usage.pods_seen += 1;
    entry.pod_uids.push_back(uid.to_owned());
    if entry.pod_uids.len() > MAX_POD_UIDS {
        entry.pod_uids.pop_front();
    }
}

fn add_node(nodes: &mut Vec<String>, node: &str) {
    if !node.is_empty() && !nodes.iter().any(|n| n == node) {
        nodes.push(node.to_owned());
        nodes.sort();
    }
}

/// The binary that did it: the executable, with the applet for busybox-style
/// multi-call binaries, or the kernel's name when the executable is unknown.
pub fn binary(alert: &Alert) -> String {
    let Some(process) = &alert.process else { return String::new() };
    let name = process.exe.rsplit('/').next().unwrap_or_default();
    match name {
        "" => process.comm.clone(),
        "busybox" | "toybox" if !process.comm.is_empty() && process.comm != name => {
            format!("{} ({})", process.exe, process.comm)
        }
        _ => process.exe.clone(),
    }
}
