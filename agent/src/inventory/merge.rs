//! Merging inventories of several agents into the cluster's: a workload runs
//! on many nodes, each agent sees its own pods. Counts add up, binaries and
//! nodes are united, first sights take the earliest and last sights the
//! latest, and the observation starts at the earliest agent's start (the
//! `tokenwatch inventory --server A --server B` view; a SIEM does the same
//! with the JSON of each node's `GetInventory`).

use std::collections::BTreeMap;

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Inventory, Usage, WorkloadInventory};

use super::pods::{self, Key};
use super::usage::{add_binary, max_time, min_time};

fn merge_option(
    a: Option<Timestamp>,
    b: Option<Timestamp>,
    pick: fn(Timestamp, Timestamp) -> Timestamp,
) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(pick(a, b)),
        (a, b) => a.or(b),
    }
}

/// Merges several agents' inventories into one.
pub fn merge_inventories(parts: impl IntoIterator<Item = Inventory>) -> Inventory {
    let mut merged = Inventory::default();
    let mut workloads: BTreeMap<Key, WorkloadInventory> = BTreeMap::new();
    for part in parts {
        for node in part.nodes {
            if !merged.nodes.contains(&node) {
                merged.nodes.push(node);
            }
        }
        merged.observed_since = merge_option(merged.observed_since, part.observed_since, min_time);
        merged.generated_at = merge_option(merged.generated_at, part.generated_at, max_time);
        for workload in part.workloads {
            let kind_name = workload.workload.as_ref().map(|w| (w.kind.as_str(), w.name.as_str()));
            let key = Key::new(&workload.namespace, kind_name, "", &workload.service_account);
            match workloads.get_mut(&key) {
                Some(known) => merge_workload(known, &workload),
                None => {
                    workloads.insert(key, workload);
                }
            }
        }
    }
    merged.nodes.sort();
    merged.workloads = workloads.into_values().collect();
    merged
}

/// Merges `other` (the same workload seen by another agent) into `into`.
pub fn merge_workload(into: &mut WorkloadInventory, other: &WorkloadInventory) {
    into.token_mounted |= other.token_mounted;
    for mount in &other.token_mounts {
        pods::add_mount(&mut into.token_mounts, mount.clone());
    }
    into.automount_service_account_token =
        match (into.automount_service_account_token, other.automount_service_account_token) {
            // Pods that disagree: the ones that mount a token are what matters.
            (Some(a), Some(b)) => Some(a || b),
            (a, b) => a.or(b),
        };
    merge_usage(&mut into.token_reads, other.token_reads.as_ref());
    merge_usage(&mut into.api_server_connects, other.api_server_connects.as_ref());
    into.observed_since = merge_option(into.observed_since, other.observed_since, min_time);
    into.last_pod_seen = merge_option(into.last_pod_seen, other.last_pod_seen, max_time);
    // A node that saw no pod of it knows no labels: only pods narrow the selector.
    match (into.pods_seen, other.pods_seen) {
        (0, _) => into.selector_labels.clone_from(&other.selector_labels),
        (_, 0) => {}
        _ => pods::intersect_labels(&mut into.selector_labels, &other.selector_labels),
    }
    into.pods_seen = into.pods_seen.saturating_add(other.pods_seen);
    into.pods_running = into.pods_running.saturating_add(other.pods_running);
    for node in &other.nodes {
        if !into.nodes.contains(node) {
            into.nodes.push(node.clone());
        }
    }
    into.nodes.sort();
}

/// Adds `other`'s uses to `into`.
pub fn merge_usage(into: &mut Option<Usage>, other: Option<&Usage>) {
    let Some(other) = other else { return };
    let Some(usage) = into.as_mut() else {
        *into = Some(other.clone());
        return;
    };
    usage.count = usage.count.saturating_add(other.count);
    for binary in &other.binaries {
        add_binary(&mut usage.binaries, binary);
    }
    usage.first_seen = merge_option(usage.first_seen, other.first_seen, min_time);
    usage.last_seen = merge_option(usage.last_seen, other.last_seen, max_time);
}
