//! Reading after a sequence. A reader looks its starting point up in the index under the lock (a binary search and a
//! copy of one segment's bounds), lets go, and reads that segment through a handle of its own; it never holds the
//! lock while reading, so the writer never waits for it, however slow it is.

use std::io::ErrorKind;
use std::sync::atomic::Ordering;

use tokenwatch_proto::v1::Alert;

use super::index::Cursor;
use super::segment::{RecordReader, Step};
use super::{lock, Batch, Shared, SpoolError};

/// How a segment's read ended.
enum Ended {
    /// Read up to `next` (exclusive): the segment's end, or the batch is full.
    At(u64),
    /// The record with this sequence is not readable: the rest of the segment is lost.
    Damaged(u64),
}

/// Up to `max` alerts after `after`, oldest first, with the lost range before them (see `Spool::read_after`).
pub(super) fn read_after(shared: &Shared, after: u64, max: usize) -> Result<Batch, SpoolError> {
    let mut batch = Batch::default();
    let mut want = after.saturating_add(1);
    while batch.alerts.len() < max {
        let Some(cursor) = lock(&shared.index).locate(want) else { break };
        if cursor.first > want {
            if !note_lost(&mut batch, want, cursor.first - 1) {
                break;
            }
            want = cursor.first;
        }
        let ended = match read_segment(&cursor, want, max, &mut batch.alerts) {
            Ok(ended) => ended,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if lock(&shared.index).holds_segment(cursor.first) {
                    Ended::Damaged(want) // deleted by someone else than the spool: its records are gone
                } else {
                    continue; // deleted by retention since the lookup: look again, and be told it is lost
                }
            }
            Err(e) => return Err(SpoolError::io("reading", &cursor.path, e)),
        };
        want = match ended {
            Ended::At(next) => next,
            Ended::Damaged(sequence) => {
                shared.corrupt_reads.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    path = %cursor.path.display(), sequence, lost_to = cursor.next - 1,
                    "spool: unreadable record; the rest of its segment is reported lost"
                );
                if !note_lost(&mut batch, sequence, cursor.next - 1) {
                    break;
                }
                cursor.next
            }
        };
    }
    Ok(batch)
}

/// Records `first..=last` as lost, when nothing was read yet (a batch's lost range comes before its alerts;
/// adjacent losses merge). `false`: alerts were read, so the batch ends here and the next read reports the loss.
fn note_lost(batch: &mut Batch, first: u64, last: u64) -> bool {
    if !batch.alerts.is_empty() {
        return false;
    }
    batch.lost = Some((batch.lost.map_or(first, |(from, _)| from), last));
    true
}

/// Reads the segment at `cursor`, skipping records before `want`, until `out` holds `max` alerts or the segment's
/// records (as of the lookup) are all read.
fn read_segment(cursor: &Cursor, want: u64, max: usize, out: &mut Vec<Alert>) -> std::io::Result<Ended> {
    let mut reader = RecordReader::open(&cursor.path, cursor.offset, cursor.end)?;
    let mut expect = cursor.sequence;
    while expect < cursor.next {
        if out.len() >= max {
            return Ok(Ended::At(expect));
        }
        match reader.next(expect)? {
            Step::Record(record) => {
                if record.sequence >= want {
                    match record.decode() {
                        Some(alert) => out.push(alert),
                        None => return Ok(Ended::Damaged(record.sequence)),
                    }
                }
                expect = record.sequence + 1;
            }
            Step::End | Step::Torn { .. } | Step::Corrupt { .. } => return Ok(Ended::Damaged(expect.max(want))),
        }
    }
    Ok(Ended::At(expect))
}
