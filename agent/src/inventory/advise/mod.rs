//! `tokenwatch advise`: the inventory's evidence turned into YAML a user can
//! apply, each recommendation with its evidence beside it:
//!
//! - never read its token (nor dialled the API): `automountServiceAccountToken: false`
//!   on the pod template, and off `default` onto a ServiceAccount of its own;
//! - dials the API with a legacy Secret token: a projected token with an
//!   audience and a short expiry instead;
//! - never dialled the API server: a NetworkPolicy allowing DNS only (the
//!   article's deny-api-access example);
//! - for the cluster: a Kyverno ClusterPolicy refusing pods that keep the
//!   token outside the namespaces that need it;
//! - the safe rollout order, as comments.
//!
//! Advice from too short an observation is worse than none (a nightly job
//! that reads its token would lose it), so [`advise`] refuses an inventory
//! observed for less than the window unless told otherwise.

pub mod decide;
pub mod objects;
mod render;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokenwatch_proto::v1::Inventory;

/// The default observation window, as the article's audit-log advice.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// The default lifetime of a projected token: the article's hour.
pub const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The API server's usual audience (its issuer on kubeadm clusters).
pub const DEFAULT_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What the advice is made with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdviseOptions {
    /// How long the evidence must cover.
    pub window: Duration,
    /// Advise on a shorter observation anyway.
    pub accept_short_window: bool,
    /// The audience of projected tokens for workloads that use the API (one
    /// of the API server's `--api-audiences`).
    pub audience: String,
    /// Their lifetime in seconds (at least 600, as Kubernetes requires).
    pub token_expiration_seconds: i64,
    /// Namespaces the admission policy always allows (system components).
    pub allow_namespaces: Vec<String>,
}

impl Default for AdviseOptions {
    fn default() -> Self {
        AdviseOptions {
            window: DEFAULT_WINDOW,
            accept_short_window: false,
            audience: DEFAULT_AUDIENCE.to_owned(),
            token_expiration_seconds: DEFAULT_TOKEN_EXPIRATION_SECONDS,
            allow_namespaces: vec!["kube-system".to_owned()],
        }
    }
}

/// Why no advice was given.
#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    /// The evidence covers less time than asked.
    #[error(
        "the inventory covers only {observed} of observation (since {since}, nodes: {nodes}), less than the \
         {window} window asked (--window): a workload that uses its token once a day could be told to lose it. \
         Observe longer, ask for a shorter --window, or pass --accept-short-window to advise anyway"
    )]
    ShortWindow {
        /// How long it covers.
        observed: String,
        /// The window asked.
        window: String,
        /// Since when.
        since: String,
        /// The nodes it comes from.
        nodes: String,
    },
    /// The inventory says nothing of when it was observed.
    #[error("the inventory has no observed_since or generated_at: is it a tokenwatch inventory?")]
    NoObservation,
    /// A projected token would be refused by the API server.
    #[error("--token-expiration-seconds {0}: Kubernetes requires at least 600")]
    ExpirationTooShort(i64),
}

/// The advice for `inventory` as multi-document YAML, or why none.
pub fn advise(inventory: &Inventory, options: &AdviseOptions) -> Result<String, AdviseError> {
    if options.token_expiration_seconds < 600 {
        return Err(AdviseError::ExpirationTooShort(options.token_expiration_seconds));
    }
    let (Some(since), Some(at)) = (inventory.observed_since, inventory.generated_at) else {
        return Err(AdviseError::NoObservation);
    };
    let observed = decide::span(since.seconds, at.seconds);
    if observed < options.window && !options.accept_short_window {
        return Err(AdviseError::ShortWindow {
            observed: human(observed),
            window: human(options.window),
            since: crate::inventory::rfc3339(&since),
            nodes: inventory.nodes.join(", "),
        });
    }
    Ok(render::render(inventory, options))
}

/// Parses a duration such as `24h`, `90m`, `1h30m`, `2d` or `45s` (a bare
/// number is seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration like 24h, 90m, 1h30m, 2d or 45s");
    let text = text.trim();
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let (mut total, mut number) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let value: u64 = number.parse().map_err(|_| bad())?;
        total = value.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// A duration for humans: `26h 3m`, `12m 5s`, `40s`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h {m}m"),
    }
}
