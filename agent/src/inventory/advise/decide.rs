//! The decisions, from the evidence alone (pure, unit-tested): which
//! workloads lose their token, which get a projected one instead of a
//! legacy Secret, which are fenced from the API server, and which
//! namespaces the admission policy must still let mount tokens.

use std::time::Duration;

use tokenwatch_proto::v1::{Inventory, TokenMount, TokenMountKind, WorkloadInventory};

use super::AdviseOptions;
use crate::inventory::pods::BARE_POD_KIND;

/// What to do about one workload.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// Seen for less than the window: no change advised (unless the short
    /// window was accepted).
    pub too_new: bool,
    /// Never read its token nor dialled the API: turn the token off.
    pub disable_automount: Option<DisableAutomount>,
    /// Dials the API with a legacy Secret token: these mounts become a
    /// projected token with an audience and a short expiry.
    pub project_legacy: Vec<TokenMount>,
    /// Never dialled the API server: a NetworkPolicy allowing DNS only.
    /// `Err` says why none can be written (no labels to select its pods).
    pub deny_api_egress: Option<Result<(), String>>,
    /// Reads its token or dials the API: its namespace stays on the
    /// admission policy's allowlist.
    pub needs_token: bool,
}

/// How to turn a workload's token off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DisableAutomount {
    /// It runs as its namespace's `default` ServiceAccount: give it this
    /// one of its own (automount off) instead of changing `default`, which
    /// other charts may rely on.
    pub new_service_account: Option<String>,
    /// Every workload on its (non-default) ServiceAccount leaves the token
    /// unused: turn automount off on the ServiceAccount itself, which
    /// restarts nothing and so allows a one-pod canary.
    pub service_account_off: bool,
}

/// Uses of one kind, 0 when none was seen.
pub fn count(usage: Option<&tokenwatch_proto::v1::Usage>) -> u64 {
    usage.map_or(0, |u| u.count)
}

/// How long a workload has been observed, up to the inventory's time.
pub fn observed_for(workload: &WorkloadInventory, inventory: &Inventory) -> Duration {
    let (Some(since), Some(at)) = (workload.observed_since.or(inventory.observed_since), inventory.generated_at) else {
        return Duration::ZERO;
    };
    span(since.seconds, at.seconds)
}

/// Seconds between two times, zero if backwards.
pub fn span(from: i64, to: i64) -> Duration {
    Duration::from_secs(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

/// The decision for `workload`, one of `inventory`'s.
pub fn decide(workload: &WorkloadInventory, inventory: &Inventory, options: &AdviseOptions) -> Decision {
    let reads = count(workload.token_reads.as_ref());
    let connects = count(workload.api_server_connects.as_ref());
    let needs_token = reads > 0 || connects > 0;
    let too_new = !options.accept_short_window && observed_for(workload, inventory) < options.window;
    let mut decision =
        Decision { too_new, disable_automount: None, project_legacy: Vec::new(), deny_api_egress: None, needs_token };
    if too_new {
        return decision;
    }
    if workload.token_mounted && !needs_token {
        let on_default = workload.service_account == "default";
        let name = workload.workload.as_ref().map_or("workload", |w| w.name.as_str());
        decision.disable_automount = Some(DisableAutomount {
            new_service_account: on_default.then(|| dedicated_service_account(name)),
            service_account_off: !on_default && service_account_unused(workload, inventory),
        });
    }
    if connects > 0 {
        decision.project_legacy = workload
            .token_mounts
            .iter()
            .filter(|m| m.kind == i32::from(TokenMountKind::LegacySecret))
            .cloned()
            .collect();
    } else {
        decision.deny_api_egress = Some(if workload.selector_labels.is_empty() {
            Err("its pods carry no labels to select them by; label them, then rerun".to_owned())
        } else {
            Ok(())
        });
    }
    decision
}

/// Whether no workload of the inventory on `workload`'s ServiceAccount
/// reads its token or dials the API server.
fn service_account_unused(workload: &WorkloadInventory, inventory: &Inventory) -> bool {
    inventory
        .workloads
        .iter()
        .filter(|w| w.namespace == workload.namespace && w.service_account == workload.service_account)
        .all(|w| count(w.token_reads.as_ref()) == 0 && count(w.api_server_connects.as_ref()) == 0)
}

/// The name of the ServiceAccount a workload on `default` gets.
pub fn dedicated_service_account(workload: &str) -> String {
    let mut name: String = workload.chars().take(250).collect();
    name.push_str("-sa");
    name
}

/// The namespaces the admission policy must still let mount tokens: the
/// configured ones, and each namespace with a workload that needs its
/// token, with the workloads that put it there.
pub fn allowlist(inventory: &Inventory, options: &AdviseOptions) -> Vec<(String, Vec<String>)> {
    let mut namespaces: std::collections::BTreeMap<String, Vec<String>> =
        options.allow_namespaces.iter().map(|ns| (ns.clone(), vec!["--allow-namespace".to_owned()])).collect();
    for workload in &inventory.workloads {
        let reads = count(workload.token_reads.as_ref());
        let connects = count(workload.api_server_connects.as_ref());
        if reads > 0 || connects > 0 {
            let kind_name =
                workload.workload.as_ref().map_or(BARE_POD_KIND.to_owned(), |w| format!("{}/{}", w.kind, w.name));
            namespaces.entry(workload.namespace.clone()).or_default().push(kind_name);
        }
    }
    namespaces.into_iter().collect()
}
