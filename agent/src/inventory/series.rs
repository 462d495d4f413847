//! The inventory as metric series, so the metrics stack an operator already
//! runs (Prometheus scraping every node, or an OpenTelemetry Collector) holds
//! the cluster's picture, and `tokenwatch inventory --prometheus` reads it
//! back ([`super::from_series`]) instead of dialling every agent.
//!
//! One definition of the names and labels serves the writer (`/metrics` and
//! OTLP) and the reader. The cardinality is bounded per workload on a node:
//! every series carries [`WORKLOAD_LABELS`] (`node`, `namespace`,
//! `workload_kind`, `workload`, `service_account`, `token_kind`), and a
//! workload has at most [`MAX_SERIES_PER_WORKLOAD`] of them: eleven fixed
//! ones, one per way its token is mounted (at most [`MAX_MOUNT_SERIES`]),
//! one per binary that used it (at most [`MAX_BINARIES`] per kind of use).
//! The agent keeps at most [`super::MAX_WORKLOADS`] workloads and forgets
//! one gone past [`super::RETENTION_SECONDS`], so its series go with it.

use std::collections::HashMap;

use tokenwatch_proto::v1::{Inventory, TokenMount, TokenMountKind, Usage, WorkloadInventory};

use super::usage::MAX_BINARIES;
use crate::metrics::Kind;

/// A metric family: name, kind and help text.
#[derive(Debug, PartialEq, Eq)]
pub struct Family {
    /// The metric name.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// What it means (Prometheus `# HELP`, OTLP description).
    pub help: &'static str,
    /// The unit, for OTLP: `s` for timestamps, none for counts (a `1`
    /// would make Prometheus's OTLP translation append `_ratio`, and
    /// `--prometheus` would not find the series).
    pub unit: &'static str,
}

const fn family(name: &'static str, kind: Kind, unit: &'static str, help: &'static str) -> Family {
    Family { name, kind, help, unit }
}

/// Token reads by the workload's processes (before deduplication).
pub const TOKEN_READS: Family = family(
    "tokenwatch_workload_token_reads_total",
    Kind::Counter,
    "",
    "ServiceAccount token reads by the workload's processes since the agent started keeping it.",
);
/// API-server connects by the workload's processes.
pub const API_CONNECTS: Family = family(
    "tokenwatch_workload_api_server_connects_total",
    Kind::Counter,
    "",
    "API-server connects by the workload's processes since the agent started keeping it.",
);
/// Distinct pods seen.
pub const PODS_SEEN: Family =
    family("tokenwatch_workload_pods_seen", Kind::Gauge, "", "Distinct pods of the workload seen on the node.");
/// Pods on the node now.
pub const PODS_RUNNING: Family =
    family("tokenwatch_workload_pods_running", Kind::Gauge, "", "Pods of the workload on the node now.");
/// When the agent first saw the workload.
pub const FIRST_SEEN: Family = family(
    "tokenwatch_workload_first_seen_timestamp_seconds",
    Kind::Gauge,
    "s",
    "When the agent first saw the workload: its observation window starts here.",
);
/// When a pod of it was last on the node.
pub const LAST_SEEN: Family = family(
    "tokenwatch_workload_last_seen_timestamp_seconds",
    Kind::Gauge,
    "s",
    "When a pod of the workload was last seen on the node.",
);
/// First token read.
pub const READ_FIRST: Family = family(
    "tokenwatch_workload_token_read_first_timestamp_seconds",
    Kind::Gauge,
    "s",
    "The workload's first token read seen.",
);
/// Last token read.
pub const READ_LAST: Family = family(
    "tokenwatch_workload_token_read_last_timestamp_seconds",
    Kind::Gauge,
    "s",
    "The workload's last token read seen.",
);
/// First API-server connect.
pub const CONNECT_FIRST: Family = family(
    "tokenwatch_workload_api_server_connect_first_timestamp_seconds",
    Kind::Gauge,
    "s",
    "The workload's first API-server connect seen.",
);
/// Last API-server connect.
pub const CONNECT_LAST: Family = family(
    "tokenwatch_workload_api_server_connect_last_timestamp_seconds",
    Kind::Gauge,
    "s",
    "The workload's last API-server connect seen.",
);
/// What the advice needs besides the counts (always 1).
pub const INFO: Family = family(
    "tokenwatch_workload_info",
    Kind::Gauge,
    "",
    "Always 1: whether a token is mounted, the pod spec's automountServiceAccountToken, the labels selecting its pods.",
);
/// One per way the token is mounted (always 1).
pub const MOUNT_INFO: Family = family(
    "tokenwatch_workload_token_mount_info",
    Kind::Gauge,
    "",
    "Always 1: one way the workload's token is mounted (kind, path, audience, expiry, Secret, containers).",
);
/// One per binary that read the token or dialled the API (always 1).
pub const BINARY_INFO: Family = family(
    "tokenwatch_workload_binary_info",
    Kind::Gauge,
    "",
    "Always 1: a binary that read the workload's token (use=token_read) or dialled the API server \
     (use=api_server_connect); at most 32 per use.",
);
/// Since when the agent keeps its inventory.
pub const OBSERVED_SINCE: Family = family(
    "tokenwatch_inventory_observed_since_timestamp_seconds",
    Kind::Gauge,
    "s",
    "Since when the agent has kept its token inventory (across restarts).",
);
/// How long it has (at the scrape).
pub const OBSERVED_FOR: Family = family(
    "tokenwatch_inventory_observed_seconds",
    Kind::Gauge,
    "s",
    "How long the agent has kept its token inventory, at this scrape.",
);

/// Every family, in the order written: the node's, then a workload's.
pub const FAMILIES: [&Family; 15] = [
    &OBSERVED_SINCE,
    &OBSERVED_FOR,
    &TOKEN_READS,
    &API_CONNECTS,
    &PODS_SEEN,
    &PODS_RUNNING,
    &FIRST_SEEN,
    &LAST_SEEN,
    &READ_FIRST,
    &READ_LAST,
    &CONNECT_FIRST,
    &CONNECT_LAST,
    &INFO,
    &MOUNT_INFO,
    &BINARY_INFO,
];

/// The labels every workload series carries: one series set per workload
/// (and per node, which `node` keeps apart when Prometheus merges agents).
pub const WORKLOAD_LABELS: [&str; 6] =
    ["node", "namespace", "workload_kind", "workload", "service_account", "token_kind"];
/// At most this many mount series per workload; a pod spec with more token
/// volumes than this is not one a dashboard needs whole.
pub const MAX_MOUNT_SERIES: usize = 8;
/// At most this many series per workload on a node.
pub const MAX_SERIES_PER_WORKLOAD: usize = 11 + MAX_MOUNT_SERIES + 2 * MAX_BINARIES;

/// `use` of a binary that read the token.
pub const USE_TOKEN_READ: &str = "token_read";
/// `use` of a binary that dialled the API server.
pub const USE_API_CONNECT: &str = "api_server_connect";

/// One sample: a family, its labels (the workload's then its own), a value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Its family.
    pub family: &'static Family,
    /// Label names and values.
    pub labels: Vec<(&'static str, String)>,
    /// Counts, and timestamps as whole seconds since the Unix epoch.
    pub value: u64,
}

/// The series of one agent's inventory (its `nodes[0]`), owned.
pub fn samples(inventory: &Inventory) -> Vec<Sample> {
    let mut out = Vec::new();
    visit(inventory, |family, _, labels, value| {
        let labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        out.push(Sample { family, labels, value });
    });
    out
}

/// What [`visit`] calls for each series: its family, the workload it is
/// of (`None` for the node's), its labels (borrowed: a scrape of 10,000
/// workloads copies no label) and its value.
pub trait Emit: FnMut(&'static Family, Option<&WorkloadInventory>, &[(&'static str, &str)], u64) {}

impl<F: FnMut(&'static Family, Option<&WorkloadInventory>, &[(&'static str, &str)], u64)> Emit for F {}

/// Calls `emit` for every series of one agent's inventory (its `nodes[0]`).
pub fn visit(inventory: &Inventory, emit: impl Emit) {
    visit_some(inventory, None, emit);
}

/// Calls `emit` for the series of `family` alone, in the order [`visit`]
/// gives them: a writer that wants a family's samples together (the
/// Prometheus text format) takes one pass per family and builds no label
/// of the others.
pub fn visit_family(inventory: &Inventory, family: &'static Family, emit: impl Emit) {
    visit_some(inventory, Some(family), emit);
}

fn visit_some(inventory: &Inventory, only: Option<&'static Family>, mut emit: impl Emit) {
    // By name: a `const` family's address is not one address.
    let wanted = |family: &'static Family| only.is_none_or(|wanted| wanted.name == family.name);
    let node = inventory.nodes.first().map_or("", String::as_str);
    if let (Some(since), Some(at)) = (inventory.observed_since, inventory.generated_at) {
        if wanted(&OBSERVED_SINCE) {
            emit(&OBSERVED_SINCE, None, &[("node", node)], seconds(since));
        }
        if wanted(&OBSERVED_FOR) {
            let observed = u64::try_from(at.seconds.saturating_sub(since.seconds)).unwrap_or(0);
            emit(&OBSERVED_FOR, None, &[("node", node)], observed);
        }
    }
    for workload in &inventory.workloads {
        visit_workload(node, workload, &wanted, &mut emit);
    }
}

fn visit_workload(node: &str, w: &WorkloadInventory, wanted: &impl Fn(&'static Family) -> bool, emit: &mut impl Emit) {
    let (kind, name) = w.workload.as_ref().map_or(("", ""), |o| (o.kind.as_str(), o.name.as_str()));
    let token_kind = token_kind(w);
    let common: [(&'static str, &str); 6] = [
        ("node", node),
        ("namespace", &w.namespace),
        ("workload_kind", kind),
        ("workload", name),
        ("service_account", &w.service_account),
        ("token_kind", &token_kind),
    ];
    let mut push = |family: &'static Family, extra: &[(&'static str, &str)], value: u64| {
        if !wanted(family) {
            return;
        }
        let mut labels: Vec<(&'static str, &str)> = Vec::with_capacity(common.len() + extra.len());
        labels.extend_from_slice(&common);
        labels.extend_from_slice(extra);
        emit(family, Some(w), &labels, value);
    };
    let count = |usage: &Option<Usage>| usage.as_ref().map_or(0, |u| u.count);
    push(&TOKEN_READS, &[], count(&w.token_reads));
    push(&API_CONNECTS, &[], count(&w.api_server_connects));
    push(&PODS_SEEN, &[], w.pods_seen);
    push(&PODS_RUNNING, &[], w.pods_running);
    let times = [
        (&FIRST_SEEN, w.observed_since),
        (&LAST_SEEN, w.last_pod_seen),
        (&READ_FIRST, w.token_reads.as_ref().and_then(|u| u.first_seen)),
        (&READ_LAST, w.token_reads.as_ref().and_then(|u| u.last_seen)),
        (&CONNECT_FIRST, w.api_server_connects.as_ref().and_then(|u| u.first_seen)),
        (&CONNECT_LAST, w.api_server_connects.as_ref().and_then(|u| u.last_seen)),
    ];
    for (family, time) in times {
        if let Some(time) = time {
            push(family, &[], seconds(time));
        }
    }
    let automount = w.automount_service_account_token.map_or("", |on| if on { "true" } else { "false" });
    let selector = selector(&w.selector_labels);
    let mounted = if w.token_mounted { "true" } else { "false" };
    push(&INFO, &[("token_mounted", mounted), ("automount", automount), ("selector", &selector)], 1);
    // Past the cap, legacy Secret tokens go first: they are what the advice
    // acts on.
    let legacy = |m: &&TokenMount| m.kind == i32::from(TokenMountKind::LegacySecret);
    let mounts = w.token_mounts.iter().filter(legacy).chain(w.token_mounts.iter().filter(|m| !legacy(m)));
    for m in mounts.take(MAX_MOUNT_SERIES) {
        let (expiration, containers) = (m.expiration_seconds.to_string(), m.containers.join(","));
        let extra = [
            ("mount_kind", mount_kind_name(m.kind)),
            ("mount_path", m.mount_path.as_str()),
            ("audience", m.audience.as_str()),
            ("expiration_seconds", expiration.as_str()),
            ("secret_name", m.secret_name.as_str()),
            ("containers", containers.as_str()),
        ];
        push(&MOUNT_INFO, &extra, 1);
    }
    for (usage, used_for) in [(&w.token_reads, USE_TOKEN_READ), (&w.api_server_connects, USE_API_CONNECT)] {
        for binary in usage.iter().flat_map(|u| u.binaries.iter()).take(MAX_BINARIES) {
            push(&BINARY_INFO, &[("use", used_for), ("binary", binary)], 1);
        }
    }
}

/// How the workload gets its token, one word per kind of mount (`+` between
/// them): `default-automount`, `projected`, `legacy-secret`; `unknown` when
/// a token was read but no pod said how it is mounted (standalone), `none`
/// when it has none. At most nine values, so it adds no cardinality.
pub fn token_kind(w: &WorkloadInventory) -> String {
    let mut kinds: Vec<&str> = w.token_mounts.iter().map(|m| mount_kind_name(m.kind)).collect();
    kinds.sort_unstable();
    kinds.dedup();
    match (kinds.is_empty(), w.token_mounted) {
        (true, true) => "unknown".to_owned(),
        (true, false) => "none".to_owned(),
        (false, _) => kinds.join("+"),
    }
}

/// The label value of a mount kind.
pub fn mount_kind_name(kind: i32) -> &'static str {
    match TokenMountKind::try_from(kind).unwrap_or(TokenMountKind::Unspecified) {
        TokenMountKind::DefaultAutomount => "default-automount",
        TokenMountKind::Projected => "projected",
        TokenMountKind::LegacySecret => "legacy-secret",
        TokenMountKind::Unspecified => "unspecified",
    }
}

/// The mount kind a label value names.
pub fn mount_kind_of(name: &str) -> Option<TokenMountKind> {
    [
        TokenMountKind::DefaultAutomount,
        TokenMountKind::Projected,
        TokenMountKind::LegacySecret,
        TokenMountKind::Unspecified,
    ]
    .into_iter()
    .find(|kind| mount_kind_name(i32::from(*kind)) == name)
}

/// Selector labels as `key=value` pairs, sorted, comma-separated: neither a
/// label key nor a value may hold `,` or `=`, so this reads back exactly.
pub fn selector(labels: &HashMap<String, String>) -> String {
    let mut pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.sort();
    pairs.join(",")
}

/// Whole seconds since the Unix epoch (what a scrape carries; the advice
/// shows times to the second).
fn seconds(time: pbjson_types::Timestamp) -> u64 {
    u64::try_from(time.seconds).unwrap_or(0)
}
