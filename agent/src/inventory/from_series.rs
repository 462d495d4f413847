//! The inverse of [`super::series`]: the series a metrics store holds (one
//! set per node's agent) back into one inventory per node, which
//! [`super::merge::merge_inventories`] then merges by the same rules as
//! `--server` answers.

use std::collections::{BTreeMap, HashMap};

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Inventory, TokenMount, Usage, Workload, WorkloadInventory};

use super::pods::{add_mount, Key};
use super::series::{self, Family, USE_API_CONNECT, USE_TOKEN_READ};

/// One series as a store answers it: name, labels, latest value.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The metric name.
    pub name: String,
    /// All its labels (the store's own, `job` and `instance`, included).
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// Why the series do not make an inventory.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FromSeriesError {
    /// Nothing of tokenwatch's inventory.
    #[error(
        "no tokenwatch inventory series (tokenwatch_workload_*, tokenwatch_inventory_*): is Prometheus scraping the \
         agents' --metrics-listen port?"
    )]
    Empty,
    /// Workloads of a node, but not since when it is observed.
    #[error(
        "node {node}: workload series but no {} (an agent older than the inventory metrics, or a partial scrape)",
        series::OBSERVED_SINCE.name
    )]
    NoObservation {
        /// The node.
        node: String,
    },
}

/// One inventory per node, from the series.
pub fn inventories(readings: &[Reading]) -> Result<Vec<Inventory>, FromSeriesError> {
    let mut nodes: BTreeMap<String, NodeParts> = BTreeMap::new();
    for reading in readings {
        let Some(family) = family_of(&reading.name) else { continue };
        let labels = Labels(&reading.labels);
        let node = labels.get("node").to_owned();
        let parts = nodes.entry(node).or_default();
        if family == &series::OBSERVED_SINCE {
            parts.since = Some(whole_seconds(reading.value));
            continue;
        }
        if family == &series::OBSERVED_FOR {
            parts.observed = Some(whole_seconds(reading.value));
            continue;
        }
        let key = Key::new(
            labels.get("namespace"),
            Some((labels.get("workload_kind"), labels.get("workload"))),
            labels.get("workload"),
            labels.get("service_account"),
        );
        let workload = parts.workloads.entry(key.clone()).or_insert_with(|| WorkloadInventory {
            namespace: key.namespace.clone(),
            workload: Some(Workload { kind: key.kind.clone(), name: key.name.clone() }),
            service_account: key.service_account.clone(),
            ..WorkloadInventory::default()
        });
        apply(workload, family, &labels, reading.value);
    }
    if nodes.is_empty() {
        return Err(FromSeriesError::Empty);
    }
    nodes
        .into_iter()
        .map(|(node, parts)| {
            let since = parts.since.ok_or_else(|| FromSeriesError::NoObservation { node: node.clone() })?;
            let at = since.saturating_add(parts.observed.unwrap_or(0));
            let workloads = parts
                .workloads
                .into_values()
                .map(|mut w| {
                    if !node.is_empty() {
                        w.nodes = vec![node.clone()];
                    }
                    w
                })
                .collect();
            Ok(Inventory {
                nodes: vec![node],
                observed_since: Some(timestamp(since)),
                generated_at: Some(timestamp(at)),
                workloads,
            })
        })
        .collect()
}

/// What one node's series say, gathered.
#[derive(Default)]
struct NodeParts {
    since: Option<i64>,
    observed: Option<i64>,
    workloads: BTreeMap<Key, WorkloadInventory>,
}

/// A series' labels; an absent one reads empty. Where the scrape adds a
/// label of the same name (a PodMonitor's `namespace`, a relabelled
/// `node`) without `honor_labels`, Prometheus keeps the agent's as
/// `exported_<name>`: that one is the agent's, so it wins.
struct Labels<'a>(&'a BTreeMap<String, String>);

impl Reading {
    /// The agent's label `name` (see [`Labels`]); empty when absent.
    pub fn label(&self, name: &str) -> &str {
        Labels(&self.labels).get(name)
    }
}

impl<'a> Labels<'a> {
    fn get(&self, name: &str) -> &'a str {
        self.0.get(&format!("exported_{name}")).or_else(|| self.0.get(name)).map_or("", String::as_str)
    }
}

/// The family a metric name belongs to, if it is one of the inventory's.
fn family_of(name: &str) -> Option<&'static Family> {
    series::FAMILIES.into_iter().find(|family| family.name == name)
}

/// Puts one series' value where it belongs in `w`.
fn apply(w: &mut WorkloadInventory, family: &Family, labels: &Labels<'_>, value: f64) {
    let label = |name: &str| labels.get(name);
    let count = value.max(0.0).round() as u64;
    let time = Some(timestamp(whole_seconds(value)));
    match family.name {
        name if name == series::TOKEN_READS.name && count > 0 => w_usage(&mut w.token_reads).count = count,
        name if name == series::API_CONNECTS.name && count > 0 => w_usage(&mut w.api_server_connects).count = count,
        name if name == series::PODS_SEEN.name => w.pods_seen = count,
        name if name == series::PODS_RUNNING.name => w.pods_running = count,
        name if name == series::FIRST_SEEN.name => w.observed_since = time,
        name if name == series::LAST_SEEN.name => w.last_pod_seen = time,
        name if name == series::READ_FIRST.name => w_usage(&mut w.token_reads).first_seen = time,
        name if name == series::READ_LAST.name => w_usage(&mut w.token_reads).last_seen = time,
        name if name == series::CONNECT_FIRST.name => w_usage(&mut w.api_server_connects).first_seen = time,
        name if name == series::CONNECT_LAST.name => w_usage(&mut w.api_server_connects).last_seen = time,
        name if name == series::INFO.name => {
            w.token_mounted = label("token_mounted") == "true";
            w.automount_service_account_token = match label("automount") {
                "true" => Some(true),
                "false" => Some(false),
                _ => None,
            };
            w.selector_labels = selector_labels(label("selector"));
        }
        name if name == series::MOUNT_INFO.name => add_mount(&mut w.token_mounts, mount(labels)),
        name if name == series::BINARY_INFO.name => {
            let usage = match label("use") {
                USE_TOKEN_READ => &mut w.token_reads,
                USE_API_CONNECT => &mut w.api_server_connects,
                _ => return,
            };
            super::usage::add_binary(&mut w_usage(usage).binaries, label("binary"));
        }
        _ => {}
    }
}

fn w_usage(usage: &mut Option<Usage>) -> &mut Usage {
    usage.get_or_insert_with(Usage::default)
}

fn mount(labels: &Labels<'_>) -> TokenMount {
    let label = |name: &str| labels.get(name);
    let containers = label("containers");
    TokenMount {
        kind: series::mount_kind_of(label("mount_kind")).map_or(0, i32::from),
        mount_path: label("mount_path").to_owned(),
        audience: label("audience").to_owned(),
        expiration_seconds: label("expiration_seconds").parse().unwrap_or(0),
        secret_name: label("secret_name").to_owned(),
        containers: if containers.is_empty() { Vec::new() } else { containers.split(',').map(str::to_owned).collect() },
    }
}

/// `a=1,b=2` back into a map.
fn selector_labels(text: &str) -> HashMap<String, String> {
    text.split(',').filter_map(|pair| pair.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

fn whole_seconds(value: f64) -> i64 {
    if value.is_finite() {
        value.round() as i64
    } else {
        0
    }
}

fn timestamp(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}
