//! The one writer: numbers alerts, appends their records to the newest segment, rolls to a new segment when it is
//! full and deletes the oldest beyond the size bound. It takes the index lock only to publish what it wrote, and
//! never waits for a reader.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use tokenwatch_proto::v1::Alert;

use super::index::SegMeta;
use super::segment::{self, FILE_HEADER_LEN, MAGIC};
use super::state::{self, State, RESERVE};
use super::{lock, Shared, SpoolError};

/// The newest segment's open file and the numbering.
pub(super) struct Writer {
    file: Option<File>,
    path: PathBuf,
    /// The bytes written to `file` (records end here). `file` is `None`
    /// while no segment could be made (a full disk); the next append retries.
    end: u64,
    /// The sequence the next alert gets.
    next: u64,
    /// The state file promises no sequence at or above this was handed out.
    reserved: u64,
    /// Reused for each record's bytes.
    buf: Vec<u8>,
    /// A write failed part-way; the next append starts a new segment rather than trust this one's tail.
    needs_roll: bool,
    closed: bool,
}

impl Writer {
    /// Continues writing `file` (at `path`, `end` bytes long) with sequence `next`. `reserved` is what the state file
    /// already promises; `next` itself makes the first append write a reservation.
    pub fn new(file: Option<File>, path: PathBuf, end: u64, next: u64, reserved: u64) -> Writer {
        let needs_roll = file.is_none();
        Writer { file, path, end, next, reserved, buf: Vec::new(), needs_roll, closed: false }
    }

    /// The file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Numbers `alert`, writes its record with one `write(2)`, and publishes it in the index.
    pub fn append(&mut self, shared: &Shared, alert: &mut Alert) -> Result<u64, SpoolError> {
        if self.closed {
            return Err(SpoolError::Closed);
        }
        let sequence = self.next;
        if sequence >= self.reserved {
            let reserved = sequence + RESERVE;
            state::store(&shared.dir, &State { kernel_boot: shared.kernel_boot.clone(), reserved, clean: false })?;
            self.reserved = reserved;
        }
        alert.sequence = sequence;
        alert.boot_id.clone_from(&shared.boot_id);
        segment::encode_record(&mut self.buf, sequence, alert)?;
        let len = self.buf.len() as u64;
        if self.needs_roll || (self.end > FILE_HEADER_LEN && self.end + len > shared.segment_bytes) {
            self.roll(shared, sequence)?;
        }
        let Some(file) = self.file.as_mut() else {
            return Err(SpoolError::io("appending to", &self.path, std::io::ErrorKind::NotFound.into()));
        };
        if let Err(e) = file.write_all(&self.buf) {
            // A short write (disk full) leaves part of a record; cut it off, and start afresh next time anyway.
            self.needs_roll = true;
            let end = self.end;
            if let Err(cut) = file.set_len(end).and_then(|()| file.seek(SeekFrom::Start(end))) {
                tracing::warn!(path = %self.path.display(), error = %cut, "spool: cutting off a failed write");
            }
            return Err(SpoolError::io("appending to", &self.path, e));
        }
        let offset = self.end;
        self.end += len;
        self.next = sequence + 1;
        let mut index = lock(&shared.index);
        index.disk += len;
        if let Some(seg) = index.segs.back_mut() {
            seg.push(sequence, offset, len);
        }
        shared.last.store(sequence, Ordering::Release);
        Ok(sequence)
    }

    /// Seals the current segment (fdatasync) and starts one whose first record will be `first`; then drops the
    /// oldest segments beyond the size bound.
    fn roll(&mut self, shared: &Shared, first: u64) -> Result<(), SpoolError> {
        if let Some(file) = &self.file {
            file.sync_data().map_err(|e| SpoolError::io("syncing", &self.path, e))?;
        }
        let (file, path) = create_segment(&shared.dir, first)?;
        let victims = {
            let mut index = lock(&shared.index);
            index.push_segment(SegMeta::empty(first, path.clone(), FILE_HEADER_LEN));
            index.retain(shared.max_bytes, shared.segment_bytes)
        };
        (self.file, self.path, self.end, self.needs_roll) = (Some(file), path, FILE_HEADER_LEN, false);
        remove_segments(shared, victims);
        Ok(())
    }

    /// A handle on the current segment, for syncing without holding the
    /// writer; `None` while no segment could be made (a full disk).
    pub fn sync_handle(&self) -> Result<Option<File>, SpoolError> {
        self.file.as_ref().map(File::try_clone).transpose().map_err(|e| SpoolError::io("duplicating", &self.path, e))
    }

    /// Syncs the segment and records the exact next sequence as a clean close; later appends fail.
    pub fn close(&mut self, shared: &Shared) -> Result<(), SpoolError> {
        if self.closed {
            return Ok(());
        }
        if let Some(file) = &self.file {
            file.sync_data().map_err(|e| SpoolError::io("syncing", &self.path, e))?;
        }
        let clean = State { kernel_boot: shared.kernel_boot.clone(), reserved: self.next, clean: true };
        state::store(&shared.dir, &clean)?;
        self.closed = true;
        Ok(())
    }
}

/// Creates (or replaces a stale) segment file for `first`, writes its header and makes its name durable.
pub(super) fn create_segment(dir: &Path, first: u64) -> Result<(File, PathBuf), SpoolError> {
    let path = dir.join(segment::file_name(first));
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&MAGIC).map(|()| f))
        .map_err(|e| SpoolError::io("creating", &path, e))?;
    state::sync_dir(dir)?;
    Ok((file, path))
}

/// Deletes segment files the index let go of. A reader that has one open reads on; one that has not yet opened it
/// finds it gone and is told its records are lost.
pub(super) fn remove_segments(shared: &Shared, victims: Vec<PathBuf>) {
    for path in victims {
        match fs::remove_file(&path) {
            Ok(()) => {
                shared.deleted.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), "spool: oldest segment deleted (size bound)");
            }
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "spool: deleting an old segment"),
        }
    }
}
