//! The policy file's YAML schema, checked while it is parsed.
//!
//! Every check runs inside deserialization, in the visitor of the value it
//! is about, so serde_yaml stamps the error with that value's own
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

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use serde::{
    de::{self, value::MapAccessDeserializer, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};
use tokenwatch_proto::v1::Severity;

use super::{
    blocks::{Blocks, EnforcementSettings},
    matcher::{Glob, Matcher},
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
    /// Parses and checks `text`; errors carry serde_yaml's location and path.
    pub fn parse(text: &str) -> Result<PolicyFile, serde_yaml::Error> {
        serde_yaml::from_str(text)
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
    images: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    binaries: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    exec: Option<bool>,
}

/// A field that is present must hold a value of its type: YAML null is not
/// "absent" here.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

fn severity<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Severity>, D::Error> {
    Ok(Some(match SeverityName::deserialize(deserializer)? {
        SeverityName::Low => Severity::Low,
        SeverityName::Medium => Severity::Medium,
        SeverityName::High => Severity::High,
        SeverityName::Critical => Severity::Critical,
    }))
}

/// A string that is not empty or blank.
pub(super) struct NonEmpty(pub(super) String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-empty string")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<NonEmpty, E> {
                if value.trim().is_empty() {
                    return Err(E::custom("must not be empty"));
                }
                Ok(NonEmpty(value.to_owned()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// One of [`RULE_IDS`].
struct RuleId(String);

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RuleId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rule id")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<RuleId, E> {
                known_rule(value).map_err(E::custom)?;
                Ok(RuleId(value.to_owned()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

fn known_rule(id: &str) -> Result<(), String> {
    if RULE_IDS.contains(&id) {
        Ok(())
    } else {
        Err(format!("unknown rule `{id}`; the rules are {}", RULE_IDS.join(", ")))
    }
}

fn label_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        Err("a label name must not be empty".to_owned())
    } else {
        Ok(())
    }
}

/// Reads a map key, checks it with `check` and refuses one already in
/// `taken`. Done in the key's own visitor so the error points at the key
/// itself, the second one of a pair.
struct KeySeed<'a, V> {
    taken: &'a BTreeMap<String, V>,
    what: &'static str,
    check: fn(&str) -> Result<(), String>,
}

impl<'de, V> DeserializeSeed<'de> for KeySeed<'_, V> {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<V> Visitor<'_> for KeySeed<'_, V> {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a {}", self.what)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
        (self.check)(value).map_err(E::custom)?;
        if self.taken.contains_key(value) {
            return Err(E::custom(format_args!("{} `{value}` is given twice", self.what)));
        }
        Ok(value.to_owned())
    }
}

/// A list with at least one entry: an empty one would match nothing, which
/// is never what was meant.
pub(super) struct NonEmptyList<T>(pub(super) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmptyList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = NonEmptyList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-empty list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                if items.is_empty() {
                    return Err(de::Error::custom("must list at least one entry (an empty list would match nothing)"));
                }
                Ok(NonEmptyList(items))
            }
        }
        deserializer.deserialize_seq(V(PhantomData))
    }
}

/// A `matchLabels`: at least one pair, keys non-empty, values may be empty
/// (Kubernetes allows empty label values).
pub(super) struct Selector(pub(super) BTreeMap<String, String>);

impl<'de> Deserialize<'de> for Selector {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Selector;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of label names to values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Selector, A::Error> {
                let mut labels = BTreeMap::new();
                while let Some(key) = map.next_key_seed(KeySeed { taken: &labels, what: "label", check: label_name })? {
                    labels.insert(key, map.next_value()?);
                }
                if labels.is_empty() {
                    return Err(de::Error::custom(
                        "must name at least one label (an empty selector matches every pod)",
                    ));
                }
                Ok(Selector(labels))
            }
        }
        deserializer.deserialize_map(V)
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

/// A checked list of names as the [`Matcher`] holds it.
pub(super) fn names(field: Option<NonEmptyList<NonEmpty>>) -> Option<Vec<String>> {
    field.map(|l| l.0.into_iter().map(|s| s.0).collect())
}

/// A checked list of patterns as the [`Matcher`] holds it.
pub(super) fn globs<T: AsRef<str>>(field: Option<NonEmptyList<T>>) -> Option<Vec<Glob>> {
    field.map(|l| l.0.iter().map(|s| Glob::new(s.as_ref())).collect())
}

impl AsRef<str> for NonEmpty {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl ListEntry for ExceptionSpec {
    const LIST: &'static str = "exceptions";
    const LIST_EXPECTING: &'static str = "a list of exceptions";
    const EXPECTING: &'static str = "an exception (a map with id, reason and match fields)";

    /// The checks that span fields run here, inside the exception's own
    /// map, so serde_yaml places their errors at the exception.
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
