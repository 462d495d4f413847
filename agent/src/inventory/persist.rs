//! The inventory's state file, `<state-dir>/inventory.json`: JSON (the
//! workloads in the proto3 JSON mapping, so the file reads like the API),
//! written to a temporary file, synced and renamed over the old one, so a
//! crash leaves the old or the new state, never half of one. Mode 0600 in a
//! 0700 directory: it names every workload's binaries, which is the agent's
//! business alone. Bounded by [`super::MAX_WORKLOADS`] and the per-entry
//! bounds; a file larger than [`MAX_FILE_BYTES`] is refused.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use pbjson_types::Timestamp;
use serde::{Deserialize, Serialize};
use tokenwatch_proto::v1::WorkloadInventory;

use super::book::{Book, Entry};
use super::pods::Key;
use super::InventoryError;

/// The format's version; a file of another version is set aside.
const VERSION: u32 = 1;
/// No inventory the agent writes comes near this (10,000 workloads of a
/// few KiB each).
pub const MAX_FILE_BYTES: u64 = 64 << 20;

#[derive(Serialize, Deserialize)]
struct Stored {
    version: u32,
    node: String,
    observed_since: Timestamp,
    workloads: Vec<StoredEntry>,
}

#[derive(Serialize, Deserialize)]
struct StoredEntry {
    workload: WorkloadInventory,
    #[serde(default)]
    pod_uids: Vec<String>,
}

/// Creates the state directory (0700) if it is missing.
pub fn ensure_dir(dir: &Path) -> Result<(), InventoryError> {
    let io = |source| InventoryError::Io { path: dir.to_owned(), source };
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// The book as the file's bytes.
pub fn encode(book: &Book, file: &Path) -> Result<Vec<u8>, InventoryError> {
    let workloads = book
        .entries()
        .values()
        .map(|entry| StoredEntry {
            workload: WorkloadInventory { pods_running: 0, ..entry.usage.clone() },
            pod_uids: entry.pod_uids.iter().cloned().collect(),
        })
        .collect();
    let stored =
        Stored { version: VERSION, node: book.node().to_owned(), observed_since: book.observed_since(), workloads };
    serde_json::to_vec(&stored).map_err(|source| InventoryError::Json { path: file.to_owned(), source })
}

/// The saved book, or `None` when there is no file.
pub fn load(file: &Path) -> Result<Option<Book>, InventoryError> {
    let io = |source| InventoryError::Io { path: file.to_owned(), source };
    let size = match fs::metadata(file) {
        Ok(meta) => meta.len(),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io(error)),
    };
    if size > MAX_FILE_BYTES {
        return Err(InventoryError::TooLarge { path: file.to_owned(), size, limit: MAX_FILE_BYTES });
    }
    let bytes = fs::read(file).map_err(io)?;
    let stored: Stored =
        serde_json::from_slice(&bytes).map_err(|source| InventoryError::Json { path: file.to_owned(), source })?;
    if stored.version != VERSION {
        let message = format!("version {} is not {VERSION}", stored.version);
        return Err(InventoryError::Json { path: file.to_owned(), source: serde::de::Error::custom(message) });
    }
    let mut entries = BTreeMap::new();
    for StoredEntry { workload, pod_uids } in stored.workloads.into_iter().take(super::MAX_WORKLOADS) {
        let kind_name = workload.workload.as_ref().map(|w| (w.kind.as_str(), w.name.as_str()));
        let key = Key::new(&workload.namespace, kind_name, "", &workload.service_account);
        let skip = pod_uids.len().saturating_sub(super::MAX_POD_UIDS);
        let pod_uids: VecDeque<String> = pod_uids.into_iter().skip(skip).collect();
        entries.insert(key, Entry { usage: workload, pod_uids, running: 0 });
    }
    Ok(Some(Book::restored(&stored.node, stored.observed_since, entries)))
}

/// Replaces `file` with `bytes` atomically (temp file, fsync, rename, fsync
/// of the directory), mode 0600.
pub fn write_atomic(file: &Path, bytes: &[u8]) -> Result<(), InventoryError> {
    let temp = file.with_extension("json.tmp");
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| InventoryError::Io { path, source }
    };
    let mut out =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp).map_err(io(&temp))?;
    // An older temp file may have had other bits; the mode applies only on create.
    out.set_permissions(fs::Permissions::from_mode(0o600)).map_err(io(&temp))?;
    out.write_all(bytes).map_err(io(&temp))?;
    out.sync_all().map_err(io(&temp))?;
    drop(out);
    fs::rename(&temp, file).map_err(io(file))?;
    if let Some(dir) = file.parent() {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}
