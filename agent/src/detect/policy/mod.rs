//! The operator's policy: which rules are on, at which severity, and which
//! known-good processes are excepted from alerting.
//!
//! Reading the ServiceAccount token and dialling the API server is what
//! every in-cluster client does, so a cluster needs a way to say "this
//! controller is expected to" without giving anything else a free pass.
//! A policy is a YAML file (the same text can live in a ConfigMap); see
//! `deploy/base/policy/README.md` for the schema and `deploy/base/policy/default.yaml`
//! for the shipped default. Every check runs while the file is parsed, so a
//! bad policy is refused at start-up with `file:line:column`, never
//! half-applied.

mod apply;
mod blocks;
mod fields;
mod file;
mod matcher;
mod names;
mod unique;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_blocks;
#[cfg(test)]
mod tests_errors;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use tokenwatch_proto::v1::{Alert, Severity};

pub use self::blocks::{BlockActions, BlockSpec, EnforcementMode};
use self::file::{ExceptionSpec, PolicyFile, RuleSettings};
pub use self::matcher::{Glob, Matcher};
pub use self::names::BlockNames;

/// Every rule id the detector emits; a policy naming any other is refused.
/// The one list of rule ids, so the detector, the policy and the docs agree.
pub const RULE_IDS: &[&str] =
    &["token-read", "apiserver-connect", "token-theft-chain", "node-token-harvest", "agent-degraded"];

/// The shipped default policy (`deploy/base/policy/default.yaml`), built in so the
/// agent behaves the same with or without a policy file, and so a command
/// can print it as a starting point.
pub const DEFAULT_POLICY_YAML: &str = include_str!("../../../../deploy/base/policy/default.yaml");

/// Why a policy was refused. Each names the file and, for a bad value, the
/// line and column and the YAML path of what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid policy.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 if unknown).
        line: usize,
        /// 1-based column (0 if unknown).
        column: usize,
        /// What is wrong, starting with its YAML path, e.g.
        /// ``exceptions[1].reason (exception `argocd`): must not be empty``.
        message: String,
    },
}

/// What the policy makes of one alert.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver it, at this severity: the alert's own, or, when the policy
    /// overrides the rule's severity, that override raised one step per
    /// severity reason (see [`Policy::judge`]).
    Alert {
        /// Severity to put in the alert.
        severity: Severity,
    },
    /// The policy turns this rule off.
    Disabled {
        /// The rule id.
        rule: String,
    },
    /// An exception matched; the alert is dropped and the exception's count
    /// goes up.
    Suppressed {
        /// The exception's id.
        exception: String,
        /// Its reason, for logs.
        reason: String,
    },
}

/// A loaded policy. Judging takes `&self` and counts with atomics, so one
/// policy can be shared (`Arc`) by every task that judges alerts.
#[derive(Debug, Default)]
pub struct Policy {
    rules: BTreeMap<String, RuleSettings>,
    exceptions: Vec<Exception>,
    enforcement: EnforcementMode,
    blocks: Vec<BlockSpec>,
}

/// An exception and how many alerts it has silenced in this run.
#[derive(Debug)]
struct Exception {
    spec: ExceptionSpec,
    suppressed: AtomicU64,
}

impl Policy {
    /// Parses and checks policy text; `path` only names the source in errors.
    /// An empty text is the built-in behaviour (all rules on, no exceptions).
    pub fn parse(path: &Path, text: &str) -> Result<Policy, PolicyError> {
        let file = PolicyFile::parse(text).map_err(|error| invalid(path, text, &error))?;
        let exceptions =
            file.exceptions.0.into_iter().map(|spec| Exception { spec, suppressed: AtomicU64::new(0) }).collect();
        Ok(Policy { rules: file.rules.0, exceptions, enforcement: file.enforcement.mode, blocks: file.blocks.0 })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Policy::parse(path, &text)
    }

    /// The shipped default policy. Never panics: the file is tested to
    /// parse, and should it ever not, the agent logs it and runs with every
    /// rule on and no exceptions (alerting more, never less).
    pub fn default_policy() -> Policy {
        Policy::parse(Path::new("deploy/base/policy/default.yaml (built in)"), DEFAULT_POLICY_YAML).unwrap_or_else(
            |error| {
                tracing::error!(%error, "built-in default policy is invalid; every rule on, no exceptions");
                Policy::default()
            },
        )
    }

    /// Applies per-rule settings and exceptions to a freshly built alert.
    /// A disabled rule wins over exceptions (nothing is counted); otherwise
    /// the first exception in file order that matches suppresses the alert
    /// and counts it. A severity override replaces the rule's *base*
    /// severity: each of the alert's `severity_reasons` (exec'd, a shell, a
    /// network tool) still raises it one step, so lowering a noisy rule never
    /// hides that someone exec'd `curl`.
    pub fn judge(&self, alert: &Alert) -> Verdict {
        let settings = self.rules.get(&alert.rule).copied().unwrap_or_default();
        if settings.enabled == Some(false) {
            return Verdict::Disabled { rule: alert.rule.clone() };
        }
        if let Some(exception) = self.exceptions.iter().find(|e| e.spec.matcher.matches(alert)) {
            exception.suppressed.fetch_add(1, Ordering::Relaxed);
            return Verdict::Suppressed { exception: exception.spec.id.clone(), reason: exception.spec.reason.clone() };
        }
        let severity = match settings.severity {
            Some(base) => raised(base, alert.severity_reasons.len()),
            None => Severity::try_from(alert.severity).unwrap_or(Severity::Unspecified),
        };
        Verdict::Alert { severity }
    }

    /// Per-exception suppression counts so far (id, reason, count), in file
    /// order and including exceptions that never matched, for the agent's
    /// shutdown log and an explain command: an exception that silences far
    /// more than expected is worth a look.
    pub fn suppression_counts(&self) -> Vec<(String, String, u64)> {
        self.exceptions
            .iter()
            .map(|e| (e.spec.id.clone(), e.spec.reason.clone(), e.suppressed.load(Ordering::Relaxed)))
            .collect()
    }

    /// Suppressions per exception, for Prometheus.
    pub fn expose(&self, out: &mut crate::metrics::Scrape<'_>) -> std::fmt::Result {
        crate::metrics::family(
            out,
            "tokenwatch_policy_suppressed_total",
            crate::metrics::Kind::Counter,
            "Alerts dropped by a policy exception, by exception id.",
            self.suppression_counts().into_iter().map(|(id, _reason, count)| ([("exception", id)], count)),
        )
    }

    /// Is `rule` on? For a start-up log of what the policy turns off.
    pub fn rule_enabled(&self, rule: &str) -> bool {
        self.rules.get(rule).and_then(|s| s.enabled) != Some(false)
    }

    /// The block entries in force, in file order, each with whether it
    /// refuses (`true`) or only reports (`false`, dry run). Empty when
    /// `enforcement.mode` is `off`.
    pub fn blocks(&self) -> Vec<(&BlockSpec, bool)> {
        match self.enforcement {
            EnforcementMode::Off => Vec::new(),
            EnforcementMode::DryRun => self.blocks.iter().map(|b| (b, false)).collect(),
            EnforcementMode::Enforce => self.blocks.iter().map(|b| (b, !b.dry_run)).collect(),
        }
    }

    /// `enforcement.mode`, for logs.
    pub fn enforcement_mode(&self) -> EnforcementMode {
        self.enforcement
    }

    /// The severity the policy forces on `rule`'s alerts, if any.
    pub fn rule_severity(&self, rule: &str) -> Option<Severity> {
        self.rules.get(rule).and_then(|s| s.severity)
    }
}

/// `base` raised `steps` steps, at most to critical (the detector raises
/// one step per severity reason).
fn raised(base: Severity, steps: usize) -> Severity {
    let ladder = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];
    let at = ladder.iter().position(|s| *s == base).unwrap_or(0);
    ladder[at.saturating_add(steps).min(ladder.len() - 1)]
}

/// Turns yaml_serde's error into file:line:column plus a message that starts
/// with the YAML path and, inside an exception, names the exception's id.
fn invalid(path: &Path, text: &str, error: &yaml_serde::Error) -> PolicyError {
    let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
    let message = error.to_string();
    // yaml_serde appends " at line L column C"; the error says it up front.
    let message = message.find(" at line ").map_or(message.as_str(), |i| &message[..i]);
    PolicyError::Invalid { path: path.to_owned(), line, column, message: name_exception(text, message) }
}

/// `exceptions[1].reason: must not be empty` becomes
/// ``exceptions[1].reason (exception `argocd`): must not be empty``, the id
/// read back from the text with a lenient schema that ignores everything but
/// the ids (so it reads even what the real schema refused, such as a label
/// given twice). Other messages are returned unchanged.
fn name_exception(text: &str, message: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Ids {
        #[serde(default)]
        exceptions: Vec<Id>,
        #[serde(default)]
        blocks: Vec<Id>,
    }
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<yaml_serde::Value>,
    }
    let (what, rest) = match message.strip_prefix("blocks[") {
        Some(rest) => ("block", Some(rest)),
        None => ("exception", message.strip_prefix("exceptions[")),
    };
    let id = || -> Option<String> {
        let index: usize = rest?.split(']').next()?.parse().ok()?;
        let ids: Ids = yaml_serde::from_str(text).ok()?;
        let list = if what == "block" { ids.blocks } else { ids.exceptions };
        match list.into_iter().nth(index)?.id? {
            yaml_serde::Value::String(id) => Some(id),
            yaml_serde::Value::Number(id) => Some(id.to_string()),
            _ => None,
        }
    };
    match (message.split_once(": "), id()) {
        (Some((yaml_path, rest)), Some(id)) => format!("{yaml_path} ({what} `{id}`): {rest}"),
        _ => message.to_owned(),
    }
}
