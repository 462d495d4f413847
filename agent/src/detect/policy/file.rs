//! The policy file's YAML schema, checked while it is parsed.
//!
//! Every check runs inside deserialization, in the visitor of the value it
//! is about, so yaml_serde stamps the error with that value's own
//! line:column and its path (`exceptions[2].namespaces[0]`), with no need to
//! search the text afterwards:
//!
//! - a scalar check (unknown rule id, empty string, bad severity) points at
//!   the scalar;
//! - a map key check (unknown rule id, a rule or label given twice) points
//!   at the key;
//! - a list or map check (empty list, empty selector) points at the list or
//!   map;
//! - an exception-wide check (no match fields, duplicate id, missing field)
//!   points at the exception's first key.

use std::{collections::BTreeMap, fmt};

use serde::{
    de::{self, value::MapAccessDeserializer, MapAccess, Visitor},
    Deserialize, Deserializer,
};
use tokenwatch_proto::v1::Severity;

use super::{
    blocks::{Blocks, EnforcementSettings},
    fields::{checked_str, globs, names, present, KeySeed, NonEmpty, NonEmptyList, Pattern, Selector},
    matcher::Matcher,
    unique::{ListEntry, UniqueList},
    RULE_IDS,
};

/// The whole file. An empty file (or one of comments only) is the
/// built-in behaviour: every rule on, nothing excepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    /// Per-rule settings by rule id.
    #[serde(default)]
    pub rules: RuleSettingsMap,
    /// Exceptions in file order; the first that matches an alert wins.
    #[serde(default)]
    pub exceptions: Exceptions,
    /// Whether `blocks` refuse, only report, or do nothing.
    #[serde(default)]
    pub enforcement: EnforcementSettings,
    /// What the node itself refuses, per pod (`blocks.rs`).
    #[serde(default)]
    pub blocks: Blocks,
}

impl PolicyFile {
    /// Parses and checks `text`; errors carry yaml_serde's location and path.
    pub fn parse(text: &str) -> Result<PolicyFile, yaml_serde::Error> {
        yaml_serde::from_str(text)
    }
}

/// What the file says about one rule; unset fields keep the built-in
/// behaviour (enabled, the rule's own severity).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// `false` turns the rule off entirely.
    #[serde(default, deserialize_with = "present")]
    pub enabled: Option<bool>,
    /// Replaces the severity of the rule's alerts.
    #[serde(default, deserialize_with = "severity")]
    pub severity: Option<Severity>,
}

/// `rules:`, keyed by rule id. A newtype so that an unknown or repeated
/// rule id is refused where it is written.
#[derive(Debug, Default)]
pub struct RuleSettingsMap(pub BTreeMap<String, RuleSettings>);

/// `exceptions:`, ids checked for uniqueness while the list is read.
pub type Exceptions = UniqueList<ExceptionSpec>;

/// One checked exception.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExceptionSpec {
    /// Unique name, used in counts and logs.
    pub id: String,
    /// Why the exception exists; shown wherever a suppression is reported.
    pub reason: String,
    /// What it matches.
    pub matcher: Matcher,
}

/// The severities a file may name, lower case.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SeverityName {
    Low,
    Medium,
    High,
    Critical,
}

/// An exception as written, before the checks that span fields. Optional
/// fields use `present`, so `namespaces:` with nothing after it is an
/// error (an empty list) instead of quietly meaning "any namespace".
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawException {
    id: NonEmpty,
    reason: NonEmpty,
    #[serde(default, deserialize_with = "present")]
    rules: Option<NonEmptyList<RuleId>>,
    #[serde(default, deserialize_with = "present")]
    namespaces: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    service_accounts: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    pod_selector: Option<Selector>,
    #[serde(default, deserialize_with = "present")]
    images: Option<NonEmptyList<Pattern>>,
    #[serde(default, deserialize_with = "present")]
    binaries: Option<NonEmptyList<Pattern>>,
    #[serde(default, deserialize_with = "present")]
    exec: Option<bool>,
}

fn severity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Severity>, D::Error> {
    Ok(Some(match SeverityName::deserialize(deserializer)? {
        SeverityName::Low => Severity::Low,
        SeverityName::Medium => Severity::Medium,
        SeverityName::High => Severity::High,
        SeverityName::Critical => Severity::Critical,
    }))
}

/// One of [`RULE_IDS`].
struct RuleId(String);

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a rule id", |value| known_rule(value).map(|()| RuleId(value.to_owned())))
    }
}

fn known_rule(id: &str) -> Result<(), String> {
    if RULE_IDS.contains(&id) {
        Ok(())
    } else {
        Err(format!("unknown rule `{id}`; the rules are {}", RULE_IDS.join(", ")))
    }
}

impl<'de> Deserialize<'de> for RuleSettingsMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RuleSettingsMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of rule ids to settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RuleSettingsMap, A::Error> {
                let mut rules = BTreeMap::new();
                while let Some(rule) = map.next_key_seed(KeySeed { taken: &rules, what: "rule", check: known_rule })? {
                    rules.insert(rule, map.next_value::<RuleSettings>()?);
                }
                Ok(RuleSettingsMap(rules))
            }
        }
        deserializer.deserialize_map(V)
    }
}

impl ListEntry for ExceptionSpec {
    const LIST: &'static str = "exceptions";
    const LIST_EXPECTING: &'static str = "a list of exceptions";
    const EXPECTING: &'static str = "an exception (a map with id, reason and match fields)";

    /// The checks that span fields run here, inside the exception's own
    /// map, so yaml_serde places their errors at the exception.
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let raw = RawException::deserialize(MapAccessDeserializer::new(map))?;
        let matcher = Matcher {
            rules: raw.rules.map(|l| l.0.into_iter().map(|r| r.0).collect()),
            namespaces: names(raw.namespaces),
            service_accounts: names(raw.service_accounts),
            pod_selector: raw.pod_selector.map(|s| s.0),
            images: globs(raw.images),
            binaries: globs(raw.binaries),
            exec: raw.exec,
        };
        let id = raw.id.0;
        if !matcher.has_match_fields() {
            let of_rules =
                matcher.rules.as_ref().map_or("of every rule".to_owned(), |r| format!("of {}", r.join(", ")));
            return Err(de::Error::custom(format_args!(
                "has no match fields, so it would silence every alert {of_rules}; give at least one of \
                 namespaces, service_accounts, pod_selector, images, binaries, exec"
            )));
        }
        Ok(ExceptionSpec { id, reason: raw.reason.0, matcher })
    }

    fn id(&self) -> &str {
        &self.id
    }
}
