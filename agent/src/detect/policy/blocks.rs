//! `blocks:` and `enforcement:`, the policy's optional enforcement (issue
//! 11): what the node itself refuses, per pod, besides alerting.
//!
//! A block entry uses the exceptions' selectors and their [`Matcher`], so
//! "which pods" means the same in both. Checks run inside deserialization,
//! as in `file.rs`, so errors carry the value's own line:column and path.
//!
//! `binaries` is judged in the kernel at the syscall, where the executable
//! is only an inode (`task->mm->exe_file`): the agent resolves each path
//! inside every covered container (`enforce/binaries.rs`), so it names the
//! file, not the string. It must be absolute; a glob's `*` and `?` match
//! within one path component, as in the exceptions. What this means for
//! the operator is in `deploy/base/policy/README.md`: a hard link or a
//! symlink to a listed file is the same executable, a copy is not.

use serde::{
    de::{self, value::MapAccessDeserializer},
    Deserialize, Deserializer,
};

use super::{
    fields::{checked_str, globs, names, present, NonEmpty, NonEmptyList, Pattern, Selector},
    matcher::{Glob, Matcher},
    unique::{ListEntry, UniqueList},
};

/// `enforcement:`: one switch over every block entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnforcementSettings {
    /// `enforce` (the default), `dry-run` or `off`.
    #[serde(default)]
    pub mode: EnforcementMode,
}

/// Whether block entries refuse, only report, or do nothing at all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnforcementMode {
    /// Nothing is attached or refused; the entries are only checked.
    Off,
    /// Every entry reports what it would have refused, and refuses nothing.
    DryRun,
    /// Each entry refuses, unless it says `dry_run: true`.
    #[default]
    Enforce,
}

/// What an entry refuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockActions {
    /// Opening a watched token file: the process is killed at the open's
    /// return, before it can read a byte.
    pub token_read: bool,
    /// Connecting to a watched API-server endpoint: `EPERM`.
    pub apiserver_connect: bool,
}

/// One checked block entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Unique name, put in every alert about what it did.
    pub id: String,
    /// Why; logged when it starts covering a pod.
    pub reason: String,
    /// What it refuses.
    pub actions: BlockActions,
    /// Which pods, containers and processes (never `rules`).
    pub matcher: Matcher,
    /// Only report what it would refuse.
    pub dry_run: bool,
}

/// `blocks:`, ids checked for uniqueness while the list is read.
pub type Blocks = UniqueList<BlockSpec>;

/// The actions a file may name.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum ActionName {
    TokenRead,
    ApiserverConnect,
}

/// An entry as written, before the checks that span fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBlock {
    id: NonEmpty,
    reason: NonEmpty,
    actions: NonEmptyList<ActionName>,
    #[serde(default, deserialize_with = "present")]
    namespaces: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    service_accounts: Option<NonEmptyList<NonEmpty>>,
    #[serde(default, deserialize_with = "present")]
    pod_selector: Option<Selector>,
    #[serde(default, deserialize_with = "present")]
    images: Option<NonEmptyList<Pattern>>,
    #[serde(default, deserialize_with = "present")]
    exec: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    binaries: Option<NonEmptyList<AbsolutePath>>,
    #[serde(default)]
    dry_run: bool,
}

/// A `binaries` entry of a block: an absolute path (glob), since it is
/// resolved inside each container from its root, where no working
/// directory applies. Refused where it is written, so yaml_serde places
/// the error at the value.
struct AbsolutePath(Glob);

impl From<AbsolutePath> for Glob {
    fn from(path: AbsolutePath) -> Glob {
        path.0
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        checked_str(deserializer, "an absolute path", |value| {
            if !value.starts_with('/') || value.ends_with('/') {
                return Err(format!(
                    "`{value}` is not an absolute path to a file: a block names executables by their path inside \
                     the container, from `/`"
                ));
            }
            Glob::new(value).map(AbsolutePath)
        })
    }
}

impl ListEntry for BlockSpec {
    const LIST: &'static str = "blocks";
    const LIST_EXPECTING: &'static str = "a list of block entries";
    const EXPECTING: &'static str = "a block entry (a map with id, reason, actions and match fields)";

    /// Checks that span fields, placed at the entry by yaml_serde.
    fn from_map<'de, A: de::MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let raw = RawBlock::deserialize(MapAccessDeserializer::new(map))?;
        let matcher = Matcher {
            rules: None,
            namespaces: names(raw.namespaces),
            service_accounts: names(raw.service_accounts),
            pod_selector: raw.pod_selector.map(|s| s.0),
            images: globs(raw.images),
            binaries: globs(raw.binaries),
            exec: raw.exec,
        };
        if !matcher.has_match_fields() {
            return Err(de::Error::custom(
                "has no match fields, so it would refuse in every pod on the node; give at least one of namespaces, \
                 service_accounts, pod_selector, images, binaries, exec",
            ));
        }
        let mut actions = BlockActions::default();
        for action in raw.actions.0 {
            match action {
                ActionName::TokenRead => actions.token_read = true,
                ActionName::ApiserverConnect => actions.apiserver_connect = true,
            }
        }
        Ok(BlockSpec { id: raw.id.0, reason: raw.reason.0, actions, matcher, dry_run: raw.dry_run })
    }

    fn id(&self) -> &str {
        &self.id
    }
}
