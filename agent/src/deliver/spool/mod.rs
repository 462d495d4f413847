//! The delivery log ("spool"): every alert is appended here before it is offered to anyone, numbered one more than
//! the previous alert ever written to this directory, so a subscriber that comes back with the last sequence it saw
//! gets exactly what followed, or is told exactly which sequences are gone.
//!
//! On disk it is a directory of segment files named by their first sequence (`00000000000000000001.seg`), each a
//! run of checksummed records (`segment`), plus a small `state` file that keeps sequences from ever being reused
//! (`state`). The total size is bounded: when a new segment starts, the oldest whole segments are deleted until the
//! rest plus one full segment fit in `max_bytes`; the newest segment is never deleted.
//!
//! One writer (a mutex inside [`Spool`]) appends; any number of readers read segment files through handles of their
//! own, taking the index lock only to look up where to start (`index`, `reader`). The writer never waits for a
//! reader, and a reader whose records were deleted under it is told they are lost and goes on from the oldest held.
//!
//! Durability: each record is one `write(2)`, so once `append` returns the alert survives the agent crashing; it
//! reaches the disk at the next segment roll (fdatasync), [`Spool::sync`] (call it periodically, e.g. every second)
//! or [`Spool::close`] (call it at shutdown). A power loss can lose what came after the last sync, but never lets a
//! sequence be given out twice (`state`). Opening repairs a torn last record and skips damaged data (`recover`).
//!
//! Every call does blocking file I/O, usually a few microseconds (an append is a `write(2)` to the page cache), but a
//! roll or `sync` waits for the disk: async callers with latency to protect use `spawn_blocking`.

mod flush;
mod index;
mod metrics;
mod reader;
mod recover;
mod segment;
mod state;
mod writer;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_concurrency;
#[cfg(test)]
mod tests_recovery;

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokenwatch_proto::v1::Alert;
use tokio::sync::watch;

use index::Index;
use writer::Writer;

/// The segment size to use unless configured: small enough that retention frees space in modest steps and recovery
/// reads little per file, large enough that rolls (each an fdatasync) are rare.
pub const DEFAULT_SEGMENT_BYTES: u64 = 4 << 20;
/// The smallest segment size used; smaller requests are raised to it. `max_bytes` must hold two of them.
pub const MIN_SEGMENT_BYTES: u64 = 4 << 10;

/// Why the spool could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// The filesystem refused: the directory, a segment or the state file.
    #[error("spool: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// An alert too large to be a record (bounded so damaged lengths cannot make readers allocate without limit).
    #[error("spool: an alert of {len} bytes is larger than the largest record ({max} bytes)")]
    TooLarge {
        /// The alert's encoded size.
        len: usize,
        /// The largest record payload.
        max: usize,
    },
    /// `max_bytes` cannot hold the two segments retention needs (the one being written and one more).
    #[error("spool: a bound of {max_bytes} bytes is below two segments of {min} bytes")]
    TooSmall {
        /// The bound asked for.
        max_bytes: u64,
        /// The smallest segment size.
        min: u64,
    },
    /// [`Spool::close`] was called; nothing more can be appended.
    #[error("spool: closed")]
    Closed,
    /// Another process (a second agent) holds the directory: two writers
    /// would hand out the same sequence numbers.
    #[error(
        "spool: {} is in use by another process (another tokenwatch agent?); each agent needs a --spool-dir of its own",
        .0.display()
    )]
    InUse(PathBuf),
}

impl SpoolError {
    fn io(op: &'static str, path: &Path, source: std::io::Error) -> SpoolError {
        SpoolError::Io { op, path: path.to_owned(), source }
    }
}

/// What [`Spool::read_after`] found: the lost range, if any, comes before the alerts.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Batch {
    /// Alerts in sequence order, consecutive, after `lost` when there is one.
    pub alerts: Vec<Alert>,
    /// Sequences `first..=last` that should have come first but are no longer held (deleted by the size bound,
    /// damaged on disk, or possibly lost in a power failure). A subscriber is told, and carries on from the alerts.
    pub lost: Option<(u64, u64)>,
}

/// How the spool is doing, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Segment files held.
    pub segments: usize,
    /// Their total size.
    pub disk_bytes: u64,
    /// Segments found damaged at open (each ends early).
    pub damaged_segments: u64,
    /// Torn last records truncated at open.
    pub truncated_tails: u64,
    /// Unreadable records found by readers since open.
    pub corrupt_reads: u64,
    /// Segments deleted by the size bound since open.
    pub deleted_segments: u64,
}

/// A handle on a spool directory; clones share it, so the pipeline appends while gRPC streams and exporters read.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shared = &self.inner.shared;
        f.debug_struct("Spool").field("dir", &shared.dir).field("last_sequence", &self.last_sequence()).finish()
    }
}

struct Inner {
    shared: Shared,
    writer: Mutex<Writer>,
    /// The directory's lock, held until [`Spool::close`] or the last
    /// handle goes.
    dir_lock: Mutex<Option<nix::fcntl::Flock<fs::File>>>,
}

/// What the writer and the readers share.
struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    boot_id: String,
    kernel_boot: String,
    index: Mutex<Index>,
    notify: watch::Sender<u64>,
    /// The last sequence handed out (or skipped at open).
    last: AtomicU64,
    damaged: u64,
    truncated: u64,
    corrupt_reads: AtomicU64,
    deleted: AtomicU64,
}

/// The name of the lock file in a spool directory.
const LOCK_FILE: &str = "lock";

/// Takes `dir`'s lock (`flock` on its lock file, released by the kernel
/// when the process ends, even killed), or says who cannot have it.
fn lock_dir(dir: &Path) -> Result<nix::fcntl::Flock<fs::File>, SpoolError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("opening", &path, e))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            SpoolError::InUse(dir.to_owned())
        } else {
            SpoolError::io("locking", &path, errno.into())
        }
    })
}

/// Locks, ignoring poisoning: every critical section leaves its data consistent before anything can panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, recovering its segments: a torn last record (crash mid-write) is
    /// truncated away and logged, never fatal; damaged data ends its segment (logged, counted). `max_bytes` bounds
    /// the total size; `segment_bytes` (see [`DEFAULT_SEGMENT_BYTES`]) is lowered to half of it if larger. `boot_id`
    /// goes into every alert appended by this handle.
    pub fn open(dir: &Path, max_bytes: u64, segment_bytes: u64, boot_id: &str) -> Result<Spool, SpoolError> {
        Spool::open_with(dir, max_bytes, segment_bytes, boot_id, state::kernel_boot_id())
    }

    /// [`Spool::open`] as if the kernel's boot id were `kernel_boot`: tests simulate a node reboot with it.
    fn open_with(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
        boot_id: &str,
        kernel_boot: String,
    ) -> Result<Spool, SpoolError> {
        if max_bytes < 2 * MIN_SEGMENT_BYTES {
            return Err(SpoolError::TooSmall { max_bytes, min: MIN_SEGMENT_BYTES });
        }
        let segment_bytes = segment_bytes.clamp(MIN_SEGMENT_BYTES, max_bytes / 2);
        fs::create_dir_all(dir).map_err(|e| SpoolError::io("creating", dir, e))?;
        // Alerts name pods, processes and paths: readable by the agent alone,
        // even in a directory someone created with a wider mode.
        fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|e| SpoolError::io("restricting", dir, e))?;
        let lock = lock_dir(dir)?;
        let saved = state::load(dir)?;
        let mut rec = recover::recover(dir)?;
        let mut next = rec.next;
        if let Some(saved) = &saved {
            let same_boot = !kernel_boot.is_empty() && saved.kernel_boot == kernel_boot;
            if !saved.clean && !same_boot && saved.reserved > next {
                tracing::warn!(
                    first = next,
                    last = saved.reserved - 1,
                    "spool: the node restarted without the spool being closed; sequences that may have been \
                     delivered and then lost with unsynced data are skipped and reported lost"
                );
            }
            if saved.clean || !same_boot {
                next = next.max(saved.reserved);
            }
        }
        let (file, path, end) = match rec.index.segs.back() {
            Some(seg) if rec.newest_writable && seg.next == next => {
                let io = |e| SpoolError::io("opening", &seg.path, e);
                let mut file = OpenOptions::new().write(true).open(&seg.path).map_err(io)?;
                file.seek(SeekFrom::Start(seg.end)).map_err(io)?;
                (Some(file), seg.path.clone(), seg.end)
            }
            newest => {
                if newest.is_some_and(|seg| seg.next == seg.first) {
                    // A newest segment holding nothing gives way to one starting where counting resumes.
                    if let Some(seg) = rec.index.segs.pop_back() {
                        rec.index.disk -= seg.disk;
                        fs::remove_file(&seg.path).map_err(|e| SpoolError::io("removing", &seg.path, e))?;
                    }
                }
                match writer::create_segment(dir, next) {
                    Ok((file, path)) => {
                        rec.index.push_segment(index::SegMeta::empty(next, path.clone(), segment::FILE_HEADER_LEN));
                        (Some(file), path, segment::FILE_HEADER_LEN)
                    }
                    Err(error) => {
                        // A full disk must not keep the agent from starting:
                        // what is held stays readable, and the first append
                        // tries again.
                        tracing::warn!(%error, "spool: no new segment can be made now; appends will retry");
                        (None, dir.join(segment::file_name(next)), segment::FILE_HEADER_LEN)
                    }
                }
            }
        };
        let victims = rec.index.retain(max_bytes, segment_bytes);
        let last = next - 1;
        let shared = Shared {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes,
            boot_id: boot_id.to_owned(),
            kernel_boot,
            index: Mutex::new(rec.index),
            notify: watch::Sender::new(last),
            last: AtomicU64::new(last),
            damaged: rec.damaged,
            truncated: rec.truncated,
            corrupt_reads: AtomicU64::new(0),
            deleted: AtomicU64::new(0),
        };
        writer::remove_segments(&shared, victims);
        let reserved = saved.filter(|s| !s.clean).map_or(next, |s| s.reserved.max(next));
        let writer = Mutex::new(Writer::new(file, path, end, next, reserved));
        tracing::info!(dir = %dir.display(), next_sequence = next, "spool opened");
        Ok(Spool { inner: Arc::new(Inner { shared, writer, dir_lock: Mutex::new(Some(lock)) }) })
    }

    /// Gives `alert` the next sequence and this run's boot id, appends it, wakes subscribers and returns the
    /// sequence. Durable against an agent crash on return (one `write(2)`); against power loss after the next roll
    /// (fdatasync), [`Spool::sync`] or [`Spool::close`]. On error nothing was appended, the sequence is not used and `alert.sequence` is 0.
    pub fn append(&self, alert: &mut Alert) -> Result<u64, SpoolError> {
        let sequence = lock(&self.inner.writer).append(&self.inner.shared, alert).inspect_err(|_| {
            // Not stored, so not numbered: a sequence on stdout is a promise
            // that subscribers can read it.
            alert.sequence = 0;
        })?;
        // Appends from several tasks may finish out of order here: only ever move the value forwards.
        self.inner.shared.notify.send_if_modified(|last| {
            let newer = sequence > *last;
            if newer {
                *last = sequence;
            }
            newer
        });
        Ok(sequence)
    }

    /// Up to `max` alerts with sequence > `after`, oldest first. `lost` names the sequences (first..=last) right after
    /// `after` that are no longer held, when there are any: `after + 1` is older than the oldest record held, or
    /// damage or an unclean restart left a gap; the alerts then start after it. An `after` at or beyond
    /// [`Spool::last_sequence`] gives nothing: callers can compare to tell a subscriber of another spool.
    pub fn read_after(&self, after: u64, max: usize) -> Result<Batch, SpoolError> {
        reader::read_after(&self.inner.shared, after, max)
    }

    /// The spool's directory: readers that keep state of their own (the OTLP
    /// exporter's position) keep it next to the log it refers to.
    pub fn dir(&self) -> &Path {
        &self.inner.shared.dir
    }

    /// The sequence of the last alert appended, or the last one skipped at open; 0 for a spool never written.
    pub fn last_sequence(&self) -> u64 {
        self.inner.shared.last.load(Ordering::Acquire)
    }

    /// The sequence of the oldest alert still held; `None` when there is none.
    pub fn oldest_sequence(&self) -> Option<u64> {
        lock(&self.inner.shared.index).oldest()
    }

    /// A receiver whose value is the last sequence appended and which is marked changed at every append, so readers
    /// wait for new alerts instead of polling. Several appends may be seen as one change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.notify.subscribe()
    }

    /// Makes every alert appended so far durable (fdatasync of the segment being written; earlier ones were synced
    /// when they were sealed). Runs on a duplicate of the file handle, so appends carry on meanwhile.
    pub fn sync(&self) -> Result<(), SpoolError> {
        let (file, path) = {
            let writer = lock(&self.inner.writer);
            (writer.sync_handle()?, writer.path().to_owned())
        };
        file.map_or(Ok(()), |file| file.sync_data().map_err(|e| SpoolError::io("syncing", &path, e)))
    }

    /// Syncs and records a clean shutdown, so the next open continues at exactly the next sequence even if the node
    /// restarts. Later appends fail with [`SpoolError::Closed`]; reads still work. Call it once, at shutdown.
    pub fn close(&self) -> Result<(), SpoolError> {
        lock(&self.inner.writer).close(&self.inner.shared)?;
        // Closed, this handle writes no more: another may take the directory.
        lock(&self.inner.dir_lock).take();
        Ok(())
    }

    /// Counters and sizes, for logs and metrics.
    pub fn stats(&self) -> SpoolStats {
        let shared = &self.inner.shared;
        let index = lock(&shared.index);
        SpoolStats {
            segments: index.segs.len(),
            disk_bytes: index.disk,
            damaged_segments: shared.damaged,
            truncated_tails: shared.truncated,
            corrupt_reads: shared.corrupt_reads.load(Ordering::Relaxed),
            deleted_segments: shared.deleted.load(Ordering::Relaxed),
        }
    }
}
