//! Opening a spool directory: every segment is read once, checked record by record, and indexed.
//!
//! Damage never makes the spool fail to open. A torn last record of the newest segment (the agent died inside a
//! `write(2)`, or power was lost before a tail the filesystem had already extended was written) is truncated away:
//! that append never returned, so no one saw it. Anything else that is not the expected next record ends its segment
//! where it starts; the bytes are left for inspection, counted against the size bound, and readers are told the
//! sequences that segment should have held are lost.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;

use super::index::{Index, SegMeta};
use super::segment::{self, RecordReader, Step, FILE_HEADER_LEN, MAGIC, RECORD_HEADER_LEN};
use super::SpoolError;

/// A directory's segments as found.
pub(super) struct Recovered {
    /// Every segment, oldest first.
    pub index: Index,
    /// Whether the newest segment ends cleanly, so appends can continue in it.
    pub newest_writable: bool,
    /// By the segments' evidence, no sequence at or above this was handed out (1 when there are none).
    pub next: u64,
    /// Segments that end early because of damage.
    pub damaged: u64,
    /// Torn tails truncated.
    pub truncated: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Clean,
    /// The newest segment never got its whole header: it holds no record
    /// and was removed (rewriting it would need space a full disk lacks).
    Removed,
    Truncated,
    /// The segment ends early; `bound` is past any sequence its remaining bytes can have held (each record takes
    /// at least a header), so counting on from there never reuses one.
    Damaged {
        bound: u64,
    },
}

/// Reads and indexes every segment in `dir` (which exists).
pub(super) fn recover(dir: &Path) -> Result<Recovered, SpoolError> {
    let entries = fs::read_dir(dir).map_err(|e| SpoolError::io("listing", dir, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| SpoolError::io("listing", dir, e))?;
        if let Some(first) = entry.file_name().to_str().and_then(segment::parse_file_name) {
            found.push(first);
        }
    }
    found.sort_unstable();
    let mut rec = Recovered { index: Index::default(), newest_writable: false, next: 1, damaged: 0, truncated: 0 };
    for (i, &first) in found.iter().enumerate() {
        let following = found.get(i + 1).copied();
        let path = dir.join(segment::file_name(first));
        let (meta, outcome) = scan(&path, first, following)?;
        rec.next = rec.next.max(meta.next);
        rec.newest_writable = false;
        match outcome {
            Outcome::Removed => continue,
            Outcome::Clean => rec.newest_writable = true,
            Outcome::Truncated => {
                rec.truncated += 1;
                rec.newest_writable = true;
            }
            Outcome::Damaged { bound } => {
                rec.damaged += 1;
                if following.is_none() {
                    rec.next = rec.next.max(bound);
                }
            }
        }
        rec.index.push_segment(meta);
    }
    Ok(rec)
}

/// Checks and indexes one segment; `following` is the next segment's first sequence (`None` for the newest, the only
/// one that is repaired).
fn scan(path: &Path, first: u64, following: Option<u64>) -> Result<(SegMeta, Outcome), SpoolError> {
    let newest = following.is_none();
    let io = |op| move |e| SpoolError::io(op, path, e);
    let disk = fs::metadata(path).map_err(io("reading"))?.len();
    let mut head = Vec::with_capacity(MAGIC.len());
    File::open(path).and_then(|f| f.take(FILE_HEADER_LEN).read_to_end(&mut head)).map_err(io("reading"))?;
    if head != MAGIC {
        if newest && MAGIC.starts_with(&head) {
            // Created, but the agent died (or the disk filled) before its
            // header was written: it holds nothing; a new one is made when
            // there is room.
            fs::remove_file(path).map_err(io("removing"))?;
            tracing::warn!(path = %path.display(), "spool segment header was torn; the empty segment is removed");
            return Ok((SegMeta::empty(first, path.to_owned(), FILE_HEADER_LEN), Outcome::Removed));
        }
        tracing::warn!(path = %path.display(), "not a spool segment (bad header); its records are lost");
        let bound = first + disk / RECORD_HEADER_LEN;
        return Ok((SegMeta::empty(first, path.to_owned(), disk), Outcome::Damaged { bound }));
    }
    let mut meta = SegMeta::empty(first, path.to_owned(), disk);
    let mut reader = RecordReader::open(path, FILE_HEADER_LEN, disk).map_err(io("reading"))?;
    loop {
        let offset = reader.pos();
        if following.is_some_and(|f| meta.next >= f) {
            if offset < disk {
                tracing::warn!(path = %path.display(), offset, "spool segment runs into the next one; the rest is ignored");
            }
            return Ok((meta, Outcome::Clean));
        }
        let (offset, why) = match reader.next(meta.next).map_err(io("reading"))? {
            Step::Record(record) => {
                meta.push(record.sequence, offset, reader.pos() - offset);
                continue;
            }
            Step::End => return Ok((meta, Outcome::Clean)),
            Step::Torn { offset } => (offset, None),
            Step::Corrupt { offset, record_end, why } => {
                let at_tail = record_end == Some(disk) || segment::zero_from(path, offset).map_err(io("reading"))?;
                (offset, (!newest || !at_tail).then_some(why))
            }
        };
        return match why {
            None if newest => {
                let file = OpenOptions::new().write(true).open(path).map_err(io("truncating"))?;
                file.set_len(offset).and_then(|()| file.sync_data()).map_err(io("truncating"))?;
                tracing::warn!(
                    path = %path.display(), offset, dropped_bytes = disk - offset, next_sequence = meta.next,
                    "spool: torn last record truncated (the agent stopped mid-write)"
                );
                meta.disk = offset;
                Ok((meta, Outcome::Truncated))
            }
            why => {
                tracing::warn!(
                    path = %path.display(), offset, sequence = meta.next, reason = why.unwrap_or("record cut short"),
                    "spool segment damaged: it ends here and the rest of its records are lost"
                );
                let bound = meta.next + (disk - offset) / RECORD_HEADER_LEN;
                Ok((meta, Outcome::Damaged { bound }))
            }
        };
    }
}
