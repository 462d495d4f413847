//! Lists whose entries have unique ids (`exceptions`, `blocks`), read entry
//! by entry from each entry's own YAML map, so yaml_serde places the checks
//! that span an entry's fields, and a repeated id, at the entry.

use std::{collections::HashMap, fmt, marker::PhantomData};

use serde::{
    de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor},
    Deserialize, Deserializer,
};

/// An entry of a list whose ids must be unique (`exceptions`, `blocks`),
/// read from its own YAML map, so yaml_serde places the checks that span
/// its fields (and a repeated id) at the entry.
pub trait ListEntry: Sized {
    /// The list's key, for messages: `exceptions`, `blocks`.
    const LIST: &'static str;
    /// What the list is, for messages.
    const LIST_EXPECTING: &'static str;
    /// What one entry is, for messages.
    const EXPECTING: &'static str;
    /// Reads one entry and runs the checks that span its fields.
    fn from_map<'de, A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
    /// Its id.
    fn id(&self) -> &str;
}

/// A list of entries whose ids are unique, checked while it is read.
#[derive(Debug)]
pub struct UniqueList<T>(pub Vec<T>);

impl<T> Default for UniqueList<T> {
    fn default() -> Self {
        UniqueList(Vec::new())
    }
}

impl<'de, T: ListEntry> Deserialize<'de> for UniqueList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: ListEntry> Visitor<'de> for V<T> {
            type Value = UniqueList<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(T::LIST_EXPECTING)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<UniqueList<T>, A::Error> {
                let mut seen = HashMap::new();
                let mut entries = Vec::new();
                while let Some(entry) = seq.next_element_seed(EntrySeed { seen: &mut seen, entry: PhantomData })? {
                    entries.push(entry);
                }
                Ok(UniqueList(entries))
            }
        }
        deserializer.deserialize_seq(V(PhantomData))
    }
}

/// Reads one entry, knowing the ids (and their indices) before it.
struct EntrySeed<'a, T> {
    seen: &'a mut HashMap<String, usize>,
    entry: PhantomData<T>,
}

impl<'de, T: ListEntry> DeserializeSeed<'de> for EntrySeed<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, T: ListEntry> Visitor<'de> for EntrySeed<'_, T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        let entry = T::from_map(map)?;
        let index = self.seen.len();
        if let Some(first) = self.seen.insert(entry.id().to_owned(), index) {
            return Err(de::Error::custom(format_args!(
                "id `{}` is already used by {}[{first}]; ids must be unique",
                entry.id(),
                T::LIST
            )));
        }
        Ok(entry)
    }
}
