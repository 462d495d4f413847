//! The bytes of one segment file, and reading them back.
//!
//! A segment is `MAGIC` followed by records, each
//!
//! ```text
//! len: u32 LE | sequence: u64 LE | header crc: u32 LE | payload crc: u32 LE | payload (len bytes)
//! ```
//!
//! where the payload is the prost encoding of the `Alert` (not length-delimited: `len` says where it ends). The header
//! has its own CRC so that a damaged length is told apart from a record cut short by a crash: only a record whose
//! header checks out but whose payload runs past the end of the file is "torn". The sequence is in the header (as well
//! as in the alert) so recovery and readers skip records without decoding them.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use prost::Message;
use tokenwatch_proto::v1::Alert;

use super::SpoolError;

/// The first bytes of every segment; the last byte is the format version, so a later format can be recognised.
pub(super) const MAGIC: [u8; 8] = *b"TWSPOOL1";
/// Where the first record of a segment starts.
pub(super) const FILE_HEADER_LEN: u64 = MAGIC.len() as u64;
/// The fixed part of a record before its payload.
pub(super) const RECORD_HEADER_LEN: u64 = 20;
/// The largest payload written or believed: bounds what a damaged length can make a reader allocate.
pub(super) const MAX_RECORD_BYTES: usize = 16 << 20;
const SUFFIX: &str = ".seg";

/// The file name of the segment whose first record has sequence `first`: zero-padded so names sort like numbers.
pub(super) fn file_name(first: u64) -> String {
    format!("{first:020}{SUFFIX}")
}

/// The first sequence named by a segment file name; `None` for any other file (state, temporaries, strays).
pub(super) fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The CRC-32 of `data` (IEEE 802.3, the zlib/PNG one), as `crc32fast`
/// computes it (with the CPU's CRC instructions where it has them); the
/// format on disk is unchanged.
pub(super) fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}

/// Replaces `buf` with the record of `alert` at `sequence`, ready for one `write(2)`.
pub(super) fn encode_record(buf: &mut Vec<u8>, sequence: u64, alert: &Alert) -> Result<(), SpoolError> {
    let len = alert.encoded_len();
    let too_large = || SpoolError::TooLarge { len, max: MAX_RECORD_BYTES };
    let len32 = u32::try_from(len).ok().filter(|_| len <= MAX_RECORD_BYTES).ok_or_else(too_large)?;
    buf.clear();
    buf.reserve(RECORD_HEADER_LEN as usize + len);
    buf.extend_from_slice(&len32.to_le_bytes());
    buf.extend_from_slice(&sequence.to_le_bytes());
    let header_crc = crc32(buf);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    // Encoding into a Vec cannot run out of room; the error is mapped rather than unwrapped.
    alert.encode(buf).map_err(|_| too_large())?;
    let payload_crc = crc32(&buf[RECORD_HEADER_LEN as usize..]);
    buf[16..20].copy_from_slice(&payload_crc.to_le_bytes());
    Ok(())
}

/// One record read back; its payload is not decoded until someone wants the alert.
pub(super) struct Record {
    /// The sequence from the record's header.
    pub sequence: u64,
    /// The encoded alert.
    pub payload: Vec<u8>,
}

impl Record {
    /// The alert, or `None` when the payload does not decode (a checksum collision or a future incompatible format).
    pub fn decode(&self) -> Option<Alert> {
        Alert::decode(self.payload.as_slice()).ok()
    }
}

/// What is at the reader's position.
pub(super) enum Step {
    /// A whole, checked record with the expected sequence.
    Record(Record),
    /// The limit was reached exactly: no more records.
    End,
    /// A record cut short: fewer bytes than a header remain, or the header checks out but the payload runs past the
    /// limit. Only ever the last record of a file written by a process that died mid-write.
    Torn {
        /// Where the cut record starts (the length to truncate the file to).
        offset: u64,
    },
    /// Bytes that are not the expected record.
    Corrupt {
        /// Where the bad record starts.
        offset: u64,
        /// Where it would end, when its header checked out (only the payload is damaged).
        record_end: Option<u64>,
        /// What was wrong, for the log.
        why: &'static str,
    },
}

/// Reads records from a segment file through its own handle and buffer, up to a byte limit: readers pass the length
/// the writer has completed, so they never see a record being written.
pub(super) struct RecordReader {
    file: BufReader<File>,
    pos: u64,
    limit: u64,
}

impl RecordReader {
    /// A reader of `path` from byte `offset` (a record boundary) up to `limit`.
    pub fn open(path: &Path, offset: u64, limit: u64) -> io::Result<RecordReader> {
        let mut file = File::open(path)?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(RecordReader { file: BufReader::with_capacity(64 << 10, file), pos: offset, limit })
    }

    /// The position after the last record returned.
    pub fn pos(&self) -> u64 {
        self.pos
    }

    /// The record at the position, which must have sequence `expect`. I/O errors are errors; bad bytes are a `Step`.
    pub fn next(&mut self, expect: u64) -> io::Result<Step> {
        let offset = self.pos;
        if offset >= self.limit {
            return Ok(Step::End);
        }
        let corrupt = |why| Ok(Step::Corrupt { offset, record_end: None, why });
        if self.limit - offset < RECORD_HEADER_LEN {
            return Ok(Step::Torn { offset });
        }
        let mut header = [0u8; RECORD_HEADER_LEN as usize];
        if !read_all(&mut self.file, &mut header)? {
            return Ok(Step::Torn { offset }); // the file is shorter than the limit said
        }
        let word = |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
        let (len, header_crc, payload_crc) = (word(0), word(12), word(16));
        let sequence = u64::from(word(4)) | (u64::from(word(8)) << 32);
        if crc32(&header[..12]) != header_crc {
            return corrupt("record header checksum mismatch");
        }
        if sequence != expect {
            return corrupt("record sequence out of order");
        }
        let len = len as usize;
        if len > MAX_RECORD_BYTES {
            return corrupt("record length beyond the largest record");
        }
        let record_end = offset + RECORD_HEADER_LEN + len as u64;
        if record_end > self.limit {
            return Ok(Step::Torn { offset });
        }
        let mut payload = vec![0u8; len];
        if !read_all(&mut self.file, &mut payload)? {
            return Ok(Step::Torn { offset });
        }
        if crc32(&payload) != payload_crc {
            return Ok(Step::Corrupt { offset, record_end: Some(record_end), why: "record payload checksum mismatch" });
        }
        self.pos = record_end;
        Ok(Step::Record(Record { sequence, payload }))
    }
}

/// `read_exact`, with end of file as `false` rather than an error.
fn read_all(file: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether every byte of `path` from `offset` to its end is zero: a tail a filesystem extended but never wrote (power
/// lost after the size was journaled and before the data), which is a torn write, not damage.
pub(super) fn zero_from(path: &Path, offset: u64) -> io::Result<bool> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match file.read(&mut buf)? {
            0 => return Ok(true),
            n if buf[..n].iter().any(|&b| b != 0) => return Ok(false),
            _ => {}
        }
    }
}
