//! The token usage inventory: per workload and ServiceAccount, whether a
//! token is mounted and how, whether it is read and the API server dialled,
//! by which binaries, and since when this has been watched. It is the
//! runtime evidence `tokenwatch advise` turns into hardening advice (a
//! "passive dry run": the article in `../shared/seeds/` suggests 24 hours of
//! audit logs; the agent sees the truth on every node).
//!
//! Fed from two sides: every judged event of the pipeline, before policy and
//! deduplication so the counts are true ([`Inventory::record`]), and the pod
//! store, so workloads that never touch their token appear too
//! ([`Inventory::observe_pods`]). Kept in `<state-dir>/inventory.json`
//! ([`persist`]), so it survives restarts; served by
//! `tokenwatch.v1.InventoryService`; merged across nodes by [`merge`].

pub mod advise;
mod book;
pub mod from_series;
pub mod merge;
pub mod persist;
pub mod pods;
pub mod scrape;
pub mod series;
#[cfg(test)]
mod series_tests;
#[cfg(test)]
mod tests;
pub mod usage;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
    time::SystemTime,
};

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Alert, Inventory as InventoryMessage};

pub use book::{Book, MAX_POD_UIDS, MAX_WORKLOADS, RETENTION_SECONDS};
pub use usage::MAX_BINARIES;

use crate::metadata::kube::PodInfo;

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "inventory.json";

/// Why the inventory could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The state directory or file could not be written.
    #[error("inventory state {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The state could not be encoded (a bug) or decoded (a damaged file).
    #[error("inventory state {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The state file is larger than any inventory the agent writes.
    #[error("inventory state {path} is {size} bytes, more than the {limit} an inventory can take")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The bound.
        limit: u64,
    },
}

/// The agent's inventory, shared by the pipeline (which records events),
/// the pod sync, the gRPC service and the saver; cheap to clone.
#[derive(Clone, Debug)]
pub struct Inventory {
    book: Arc<Mutex<Book>>,
    /// Where it is saved; `None` keeps it in memory only (unit tests).
    file: Option<PathBuf>,
    /// Serialises writers of the file, so two saves never share its temp file.
    saving: Arc<Mutex<()>>,
}

impl Inventory {
    /// An inventory kept in memory only, observed from `now` on `node`.
    pub fn in_memory(node: &str, now: SystemTime) -> Self {
        Inventory {
            book: Arc::new(Mutex::new(Book::new(node, timestamp(now)))),
            file: None,
            saving: Arc::new(Mutex::new(())),
        }
    }

    /// The inventory saved in `state_dir`, or a new one observed from now
    /// when there is none. A damaged file is set aside (renamed `.damaged`)
    /// and logged rather than stopping the agent: losing the history is
    /// better than losing the watch.
    pub fn open(state_dir: &Path, node: &str) -> Result<Self, InventoryError> {
        persist::ensure_dir(state_dir)?;
        let file = state_dir.join(STATE_FILE);
        let book = match persist::load(&file) {
            Ok(Some(mut book)) => {
                book.set_node(node);
                book
            }
            Ok(None) => Book::new(node, timestamp(SystemTime::now())),
            Err(error) => {
                let aside = file.with_extension("json.damaged");
                tracing::warn!(%error, moved_to = %aside.display(), "inventory state unreadable; starting a new one");
                std::fs::rename(&file, &aside).map_err(|source| InventoryError::Io { path: file.clone(), source })?;
                Book::new(node, timestamp(SystemTime::now()))
            }
        };
        tracing::info!(
            file = %file.display(), workloads = book.len(), observed_since = %rfc3339(&book.observed_since()),
            "token usage inventory open"
        );
        Ok(Inventory { book: Arc::new(Mutex::new(book)), file: Some(file), saving: Arc::new(Mutex::new(())) })
    }

    /// Counts a judged event: a `token-read` or an `apiserver-connect` of a
    /// process in a pod. Other rules (the chain repeats its two events; a
    /// node process harvesting tokens belongs to no workload) and events
    /// outside pods are not usage of a workload's own token.
    pub fn record(&self, alert: &Alert) {
        self.lock().record(alert);
    }

    /// Brings the workloads up to date with the pods on the node (and the
    /// ones deleted lately): token mounts, pods seen and running.
    pub fn observe_pods(&self, pods: &[Arc<PodInfo>], now: SystemTime) {
        self.lock().observe_pods(pods, timestamp(now));
    }

    /// Forgets workloads gone past [`RETENTION_SECONDS`] (a pod sync does
    /// it too; this is for standalone mode, which has no pods to sync).
    pub fn forget_gone(&self, now: SystemTime) {
        self.lock().forget_gone(timestamp(now));
    }

    /// The inventory as the API shows it, optionally only some namespaces.
    pub fn snapshot(&self, namespaces: &[String], now: SystemTime) -> InventoryMessage {
        self.lock().snapshot(namespaces, timestamp(now))
    }

    /// Writes the state file if anything changed since the last save
    /// (atomically, readable by the agent alone). Returns whether it wrote.
    pub fn save(&self) -> Result<bool, InventoryError> {
        let Some(file) = &self.file else { return Ok(false) };
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let encoded = {
            let mut book = self.lock();
            if !book.take_dirty() {
                return Ok(false);
            }
            persist::encode(&book, file)
        };
        match encoded.and_then(|bytes| persist::write_atomic(file, &bytes)) {
            Ok(()) => Ok(true),
            Err(error) => {
                self.lock().mark_dirty();
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        // Every mutation leaves the book consistent, so a poisoned lock is usable.
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A wall-clock time as a protobuf timestamp.
pub fn timestamp(time: SystemTime) -> Timestamp {
    let since = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// A timestamp as RFC 3339, for logs and the CLI.
pub fn rfc3339(time: &Timestamp) -> String {
    serde_json::to_value(time).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
