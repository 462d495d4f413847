//! What the spool knows about its segments without reading them: which sequences each holds, how many bytes are
//! complete, and a sparse sequence -> offset table, so a reader finds its starting record with a binary search and
//! a short seek instead of a scan from the start of the spool. Guarded by a mutex held only for these lookups and
//! updates, never across disk reads.

use std::collections::VecDeque;
use std::path::PathBuf;

use super::segment::FILE_HEADER_LEN;

/// One offset is remembered for every this many records of a segment: a reader skips at most this many records.
pub(super) const SPARSE_EVERY: u64 = 64;

/// One segment file as the index sees it.
pub(super) struct SegMeta {
    /// The sequence in the file name: the first record's, when there is one.
    pub first: u64,
    /// One past the last record held (`first` when it holds none): sequences `first..next`.
    pub next: u64,
    /// The bytes that hold whole, checked records; a reader stops here.
    pub end: u64,
    /// The file's size, counted against the spool's bound (includes damaged bytes past `end`).
    pub disk: u64,
    /// `(sequence, offset)` of every `SPARSE_EVERY`th record, from the first.
    pub sparse: Vec<(u64, u64)>,
    /// The file.
    pub path: PathBuf,
}

impl SegMeta {
    /// A segment that holds no record yet (just its header).
    pub fn empty(first: u64, path: PathBuf, disk: u64) -> SegMeta {
        SegMeta { first, next: first, end: FILE_HEADER_LEN, disk, sparse: Vec::new(), path }
    }

    /// Notes the record `sequence` of `len` bytes at `offset` (which must be `end`, and `sequence` must be `next`).
    pub fn push(&mut self, sequence: u64, offset: u64, len: u64) {
        if (sequence - self.first).is_multiple_of(SPARSE_EVERY) {
            self.sparse.push((sequence, offset));
        }
        self.next = sequence + 1;
        self.end = offset + len;
        self.disk = self.disk.max(self.end);
    }
}

/// Where a reader starts: enough of a [`SegMeta`] to read it without the lock.
pub(super) struct Cursor {
    /// The segment's file.
    pub path: PathBuf,
    /// The segment's first sequence (above the wanted one when records were lost before it).
    pub first: u64,
    /// One past the last record it held when looked up.
    pub next: u64,
    /// The complete bytes when looked up.
    pub end: u64,
    /// A record boundary at or before the wanted record...
    pub offset: u64,
    /// ...and the sequence of the record there.
    pub sequence: u64,
}

/// The segments, oldest first. Sequences increase across them: each segment's `next` is at most the following one's
/// `first` (a gap between them is sequences lost to damage or to an unclean restart).
#[derive(Default)]
pub(super) struct Index {
    /// The segments, oldest first; the last is the one being written.
    pub segs: VecDeque<SegMeta>,
    /// The sum of their `disk`.
    pub disk: u64,
}

impl Index {
    /// Adds a newer segment at the end.
    pub fn push_segment(&mut self, seg: SegMeta) {
        self.disk += seg.disk;
        self.segs.push_back(seg);
    }

    /// The sequence of the oldest record held.
    pub fn oldest(&self) -> Option<u64> {
        self.segs.iter().find(|s| s.next > s.first).map(|s| s.first)
    }

    /// Where to read the first record with sequence >= `want`: the oldest segment holding such a record, at the
    /// sparse offset closest before it. `None` when no record at or after `want` is held.
    pub fn locate(&self, want: u64) -> Option<Cursor> {
        let at = self.segs.partition_point(|s| s.next <= want);
        let seg = self.segs.get(at)?;
        let (sequence, offset) = if want <= seg.first {
            (seg.first, FILE_HEADER_LEN)
        } else {
            let i = seg.sparse.partition_point(|&(seq, _)| seq <= want);
            i.checked_sub(1).map_or((seg.first, FILE_HEADER_LEN), |i| seg.sparse[i])
        };
        Some(Cursor { path: seg.path.clone(), first: seg.first, next: seg.next, end: seg.end, offset, sequence })
    }

    /// Whether the segment starting at `first` is still indexed (a reader that found its file gone asks).
    pub fn holds_segment(&self, first: u64) -> bool {
        self.segs.binary_search_by_key(&first, |s| s.first).is_ok()
    }

    /// Drops the oldest segments, never the newest (the one being written), until the rest plus a full segment fit
    /// in `max_bytes`: so the spool stays within `max_bytes` while the newest segment fills. Returns the files to
    /// delete; the caller unlinks them after letting go of the lock. A reader with one of them open keeps reading it.
    pub fn retain(&mut self, max_bytes: u64, segment_bytes: u64) -> Vec<PathBuf> {
        let mut victims = Vec::new();
        while self.segs.len() > 1 {
            let newest = self.segs.back().map_or(0, |s| s.disk);
            let sealed = self.disk - newest;
            if sealed + newest.max(segment_bytes) <= max_bytes {
                break;
            }
            let Some(oldest) = self.segs.pop_front() else { break };
            self.disk -= oldest.disk;
            victims.push(oldest.path);
        }
        victims
    }
}
