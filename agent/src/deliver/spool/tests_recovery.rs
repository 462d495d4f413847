//! Reopening after clean closes, crashes, torn writes, damage, deleted files and node reboots.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use super::segment::{self, RecordReader, Step, FILE_HEADER_LEN, MAGIC};
use super::state::{self, RESERVE};
use super::tests::{alert, append_n, drain, open, segment_files, seqs};
use super::Spool;

/// `(sequence, offset)` of every record in a segment file.
fn records(path: &Path) -> Vec<(u64, u64)> {
    let len = fs::metadata(path).expect("stat").len();
    let mut reader = RecordReader::open(path, FILE_HEADER_LEN, len).expect("open");
    let mut out = Vec::new();
    let mut expect = segment::parse_file_name(path.file_name().and_then(|n| n.to_str()).expect("name")).expect("seg");
    loop {
        let offset = reader.pos();
        match reader.next(expect).expect("read") {
            Step::Record(r) => {
                out.push((r.sequence, offset));
                expect = r.sequence + 1;
            }
            _ => return out,
        }
    }
}

fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x5a;
    fs::write(path, bytes).expect("write");
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    OpenOptions::new().append(true).open(path).and_then(|mut f| f.write_all(bytes)).expect("append bytes");
}

#[test]
fn reopen_continues_the_sequence_and_keeps_old_boot_ids() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = open(dir.path(), 1 << 20, 64 << 10);
    append_n(&first, 10);
    drop(first); // no close: as if the agent had crashed
    let second = Spool::open(dir.path(), 1 << 20, 64 << 10, "boot-b").expect("reopen");
    assert_eq!(second.last_sequence(), 10);
    assert_eq!(append_n(&second, 5).iter().map(|a| a.sequence).collect::<Vec<_>>(), (11..=15).collect::<Vec<_>>());
    second.close().expect("close");
    assert!(matches!(second.append(&mut alert(16)), Err(super::SpoolError::Closed)));

    let third = Spool::open(dir.path(), 1 << 20, 64 << 10, "boot-c").expect("reopen");
    append_n(&third, 1);
    let all = third.read_after(0, 100).expect("read");
    assert_eq!(seqs(&all), (1..=16).collect::<Vec<_>>());
    let boots: Vec<&str> = all.alerts.iter().map(|a| a.boot_id.as_str()).collect();
    assert_eq!(boots, [vec!["boot-a"; 10], vec!["boot-b"; 5], vec!["boot-c"]].concat());
}

#[test]
fn torn_tail_is_truncated_on_reopen() {
    let mut record = Vec::new();
    segment::encode_record(&mut record, 11, &alert(11)).expect("encode");
    let cases: [(&str, Vec<u8>); 5] = [
        ("half a record", record[..record.len() / 2].to_vec()),
        ("a header cut short", record[..7].to_vec()),
        ("the whole record but one byte", record[..record.len() - 1].to_vec()),
        ("garbage shorter than a header", b"\xde\xad\xbe\xef".to_vec()),
        ("zeros the filesystem never wrote", vec![0; 4096]),
    ];
    for (case, tail) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path(), 1 << 20, 64 << 10);
        append_n(&spool, 10);
        drop(spool);
        let seg = segment_files(dir.path()).pop().expect("segment");
        let good_len = fs::metadata(&seg).expect("stat").len();
        append_bytes(&seg, &tail);

        let spool = open(dir.path(), 1 << 20, 64 << 10);
        assert_eq!(spool.stats().truncated_tails, 1, "{case}");
        assert_eq!(spool.stats().damaged_segments, 0, "{case}");
        assert_eq!(fs::metadata(&seg).expect("stat").len(), good_len, "{case}: truncated to the last whole record");
        assert_eq!(spool.last_sequence(), 10, "{case}");
        assert_eq!(append_n(&spool, 1)[0].sequence, 11, "{case}: the torn record's sequence was never handed out");
        assert!(drain(&spool, 0, 100, 11).is_empty(), "{case}");
    }
}

#[test]
fn torn_segment_header_is_rewritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    append_n(&spool, 3);
    drop(spool);
    // The agent died creating the next segment.
    fs::write(dir.path().join(segment::file_name(4)), &MAGIC[..3]).expect("write");
    fs::write(dir.path().join("notes.txt"), "not a segment").expect("write");
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    assert_eq!(append_n(&spool, 2)[0].sequence, 4);
    assert!(drain(&spool, 0, 100, 5).is_empty());
    assert_eq!(segment_files(dir.path()).len(), 2);
}

#[test]
fn damaged_middle_ends_its_segment_and_is_reported_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 16 << 10);
    append_n(&spool, 40);
    spool.close().expect("close");
    drop(spool);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3);
    let recs = records(&files[0]);
    let (bad, offset) = recs[4];
    let seg_last = recs.last().expect("records").0;
    flip_byte(&files[0], offset + 30); // inside the payload

    let spool = open(dir.path(), 1 << 20, 16 << 10);
    assert_eq!(spool.stats().damaged_segments, 1);
    let batch = spool.read_after(0, 100).expect("read");
    assert_eq!((batch.lost, seqs(&batch)), (None, (1..bad).collect::<Vec<_>>()), "the batch stops before the gap");
    assert_eq!(drain(&spool, 0, 100, 40), vec![(bad, seg_last)]);
    assert_eq!(append_n(&spool, 1)[0].sequence, 41, "damage in an old segment does not move the count");
}

#[test]
fn damage_found_while_reading_is_reported_lost() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 16 << 10);
    append_n(&spool, 80);
    let files = segment_files(dir.path());
    assert!(files.len() >= 6);
    let recs = records(&files[1]);
    let seg_last = recs.last().expect("records").0;
    flip_byte(&files[1], recs[1].1 + 100);
    assert_eq!(drain(&spool, 0, 100, 80), vec![(recs[1].0, seg_last)]);
    assert!(spool.stats().corrupt_reads > 0);
    // Deleted by someone else: its records are lost too (and the adjacent losses are reported as one), reading goes on.
    fs::remove_file(&files[2]).expect("remove");
    assert_eq!(drain(&spool, 0, 100, 80), vec![(recs[1].0, records_first(&files[3]) - 1)]);
    fs::remove_file(&files[4]).expect("remove");
    let lost = drain(&spool, 0, 7, 80);
    assert_eq!(lost[1], (records_first(&files[4]), records_first(&files[5]) - 1));
}

fn records_first(path: &Path) -> u64 {
    segment::parse_file_name(path.file_name().and_then(|n| n.to_str()).expect("name")).expect("segment name")
}

#[test]
fn damaged_newest_segment_never_reuses_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    append_n(&spool, 20);
    drop(spool);
    let seg = segment_files(dir.path()).pop().expect("segment");
    let recs = records(&seg);
    flip_byte(&seg, recs[4].1 + 2); // a record header in the middle

    let spool = open(dir.path(), 1 << 20, 64 << 10);
    assert_eq!(spool.stats().damaged_segments, 1);
    let next = append_n(&spool, 1)[0].sequence;
    assert!(next > 20, "records after the damage may have been delivered: {next}");
    assert_eq!(drain(&spool, 0, 100, next), vec![(5, next - 1)]);
}

#[test]
fn sequence_survives_when_every_segment_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    append_n(&spool, 10);
    spool.close().expect("close");
    drop(spool);
    for f in segment_files(dir.path()) {
        fs::remove_file(f).expect("remove");
    }
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    assert_eq!(spool.last_sequence(), 10);
    assert_eq!(spool.oldest_sequence(), None);
    assert_eq!(append_n(&spool, 1)[0].sequence, 11);
    let batch = spool.read_after(0, 10).expect("read");
    assert_eq!((batch.lost, seqs(&batch)), (Some((1, 10)), vec![11]));
}

#[test]
fn node_reboot_without_close_skips_the_reserved_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let kernel = state::kernel_boot_id();
    let spool = Spool::open_with(dir.path(), 1 << 20, 64 << 10, "boot-a", kernel.clone()).expect("open");
    append_n(&spool, 10);
    drop(spool);
    // Same kernel: only the agent died; the page cache kept every record.
    let spool = Spool::open_with(dir.path(), 1 << 20, 64 << 10, "boot-b", kernel.clone()).expect("open");
    assert_eq!(append_n(&spool, 1)[0].sequence, 11);
    drop(spool);
    // The node rebooted: records after the last sync may have been seen and lost, so their sequences are not reused.
    let spool = Spool::open_with(dir.path(), 1 << 20, 64 << 10, "boot-c", "rebooted".into()).expect("open");
    assert_eq!(spool.last_sequence(), RESERVE);
    assert_eq!(append_n(&spool, 1)[0].sequence, RESERVE + 1);
    assert_eq!(drain(&spool, 0, 100, RESERVE + 1), vec![(12, RESERVE)]);
    // After a clean close a reboot changes nothing.
    spool.close().expect("close");
    drop(spool);
    let spool = Spool::open_with(dir.path(), 1 << 20, 64 << 10, "boot-d", "again".into()).expect("open");
    assert_eq!(append_n(&spool, 1)[0].sequence, RESERVE + 2);
}

#[test]
fn too_small_a_bound_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(matches!(Spool::open(dir.path(), 1000, 4 << 20, "b"), Err(super::SpoolError::TooSmall { .. })));
    // A segment size above half the bound is lowered, so retention still has two segments to work with.
    let spool = open(dir.path(), 64 << 10, 4 << 20);
    append_n(&spool, 100);
    assert!(spool.stats().disk_bytes <= 64 << 10);
}
