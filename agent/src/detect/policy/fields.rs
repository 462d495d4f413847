//! The checked field types the policy file and its blocks share: a value
//! present when written, a non-empty string, a non-empty list, a label
//! selector, a map key given once. Each check runs in the value's own
//! visitor, so the YAML error points at it (see `file.rs`).

use std::{collections::BTreeMap, fmt, marker::PhantomData};

use serde::{
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

use super::matcher::Glob;

/// A field that is present must hold a value of its type: YAML null is not
/// "absent" here.
pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A string that is not empty or blank.
pub(super) struct NonEmpty(pub(super) String);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a non-empty string", |value| non_empty(value).map(|()| NonEmpty(value.to_owned())))
    }
}

fn non_empty(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        Err("must not be empty".to_owned())
    } else {
        Ok(())
    }
}

/// Reads a string and turns it into a `T` with `check`, in the string's own
/// visitor, so yaml_serde places a refusal at the value itself.
pub(super) fn checked_str<'de, D: Deserializer<'de>, T>(
    deserializer: D,
    expecting: &'static str,
    check: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    struct V<F>(&'static str, F);
    impl<T, F: FnOnce(&str) -> Result<T, String>> Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str(self.0)
        }
        fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
            (self.1)(value).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(V(expecting, check))
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
pub(super) struct KeySeed<'a, V> {
    pub(super) taken: &'a BTreeMap<String, V>,
    pub(super) what: &'static str,
    pub(super) check: fn(&str) -> Result<(), String>,
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

/// A checked list of names as the [`Matcher`] holds it.
pub(super) fn names(field: Option<NonEmptyList<NonEmpty>>) -> Option<Vec<String>> {
    field.map(|l| l.0.into_iter().map(|s| s.0).collect())
}

/// A checked list of patterns as the [`Matcher`] holds it.
pub(super) fn globs<T: Into<Glob>>(field: Option<NonEmptyList<T>>) -> Option<Vec<Glob>> {
    field.map(|l| l.0.into_iter().map(Into::into).collect())
}

/// A non-empty glob ([`Glob`]), compiled where it is written so a bad one
/// is placed at its value.
pub(super) struct Pattern(Glob);

impl From<Pattern> for Glob {
    fn from(pattern: Pattern) -> Glob {
        pattern.0
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "a non-empty pattern", |value| {
            non_empty(value)?;
            Glob::new(value).map(Pattern)
        })
    }
}
