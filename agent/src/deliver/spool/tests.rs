//! Appending, reading and retention, and the helpers the other test files share. Concurrency: `tests_concurrency.rs`;
//! recovery after crashes and damage: `tests_recovery.rs`.

use std::path::{Path, PathBuf};

use tokenwatch_proto::v1::{
    alert::Evidence, Alert, ContainerContext, KubernetesContext, ProcessContext, ProcessRef, TokenRead, Workload,
};

use super::segment::{self, crc32};
use super::{Batch, Spool, SpoolError, MIN_SEGMENT_BYTES};

/// An alert shaped like a real token read (~1.5 KB encoded); its summary names `i`.
pub(super) fn alert(i: u64) -> Alert {
    let parents = (0..6)
        .map(|p| ProcessRef {
            pid: 1000 + p,
            comm: format!("parent-{p}"),
            exe: "/usr/bin/containerd-shim".into(),
            ns_pid: p,
        })
        .collect();
    Alert {
        id: format!("node-a/{i}"),
        node: "node-a.example.internal".into(),
        severity: 3,
        rule: "token-read".into(),
        rule_name: "ServiceAccount token read".into(),
        summary: format!("alert {i} /bin/sh in default/web-7c9f read the ServiceAccount token of default/web"),
        kubernetes: Some(KubernetesContext {
            namespace: "default".into(),
            pod: "web-7c9f8d6b5-x2x4q".into(),
            pod_uid: "0b1f4f8e-5a4e-4c3d-9b2a-6f1e2d3c4b5a".into(),
            container: "web".into(),
            image: "registry.example.com/team/web@sha256:".to_owned() + &"ab".repeat(32),
            service_account: "web".into(),
            workload: Some(Workload { kind: "Deployment".into(), name: "web".into() }),
            labels: [("app", "web"), ("pod-template-hash", "7c9f8d6b5"), ("tier", "frontend")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            automount_service_account_token: Some(true),
        }),
        container: Some(ContainerContext {
            id: "cd".repeat(32),
            cgroup_id: 12345,
            cgroup_names: vec![format!("cri-containerd-{}.scope", "cd".repeat(32)), "kubepods-pod0b1f.slice".into()],
            runtime: "containerd".into(),
        }),
        process: Some(ProcessContext {
            pid: 4242,
            tid: 4242,
            comm: "sh".into(),
            exe: "/bin/busybox".into(),
            args: vec!["sh".into(), "-c".into(), "cat /var/run/secrets/kubernetes.io/serviceaccount/token".into()],
            parents,
            ns_pid: 17,
            origin: 2,
            ..Default::default()
        }),
        evidence: Some(Evidence::TokenRead(TokenRead {
            requested_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            resolved_path: "/run/secrets/kubernetes.io/serviceaccount/..2024_01_01_00_00_00.123456789/token".into(),
            syscall: "openat".into(),
            dirfd: -100,
            flags: "O_RDONLY|O_CLOEXEC".into(),
            fd: 3,
            device: "0:52".into(),
            inode: 77,
            watched_path: "/var/run/secrets/kubernetes.io/serviceaccount/token".into(),
            ..Default::default()
        })),
        missing: vec![
            "cri: container not found yet".into(),
            "kubernetes: pod 0b1f4f8e-5a4e-4c3d-9b2a-6f1e2d3c4b5a not known yet (watch resyncing)".into(),
        ],
        related_alert_ids: vec![format!("node-a/{}", i.saturating_sub(1)), format!("node-a/{}", i.saturating_sub(2))],
        mitre_techniques: vec!["T1528".into(), "T1552.001".into()],
        count: 1,
        severity_reasons: vec!["exec'd into the container".into(), "a shell".into()],
        ..Default::default()
    }
}

/// A spool for `dir` with boot id "boot-a".
pub(super) fn open(dir: &Path, max_bytes: u64, segment_bytes: u64) -> Spool {
    Spool::open(dir, max_bytes, segment_bytes, "boot-a").expect("open spool")
}

/// Appends `alert(i)` for the next `n` sequences; returns what was appended (as numbered).
pub(super) fn append_n(spool: &Spool, n: u64) -> Vec<Alert> {
    (0..n)
        .map(|_| {
            let mut a = alert(spool.last_sequence() + 1);
            let seq = spool.append(&mut a).expect("append");
            assert_eq!(a.sequence, seq);
            a
        })
        .collect()
}

pub(super) fn seqs(batch: &Batch) -> Vec<u64> {
    batch.alerts.iter().map(|a| a.sequence).collect()
}

/// The segment files in `dir`, oldest first.
pub(super) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).and_then(segment::parse_file_name).is_some())
        .collect();
    files.sort();
    files
}

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    segment_files(dir).iter().map(|p| std::fs::metadata(p).map_or(0, |m| m.len())).sum()
}

/// Reads everything after `after` in batches of `max` and checks every sequence up to `last` is met exactly once, as
/// an alert or inside a lost range, in order. Returns the lost ranges.
pub(super) fn drain(spool: &Spool, mut after: u64, max: usize, last: u64) -> Vec<(u64, u64)> {
    let mut lost = Vec::new();
    while after < last {
        let batch = spool.read_after(after, max).expect("read");
        if let Some((first, end)) = batch.lost {
            assert_eq!(first, after + 1, "a lost range starts right after the position");
            assert!(end >= first);
            lost.push((first, end));
            after = end;
        }
        for a in &batch.alerts {
            assert_eq!(a.sequence, after + 1, "alerts are consecutive");
            assert!(a.summary.starts_with(&format!("alert {} ", a.sequence)), "alert {} intact", a.sequence);
            after = a.sequence;
        }
        assert!(batch.lost.is_some() || !batch.alerts.is_empty(), "no progress after {after}");
    }
    lost
}

#[test]
fn crc32_matches_the_standard_check_value() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32(b""), 0);
}

#[test]
fn segment_names_encode_their_first_sequence() {
    assert_eq!(segment::file_name(1), "00000000000000000001.seg");
    assert_eq!(segment::parse_file_name(&segment::file_name(u64::MAX)), Some(u64::MAX));
    for other in ["state", "state.tmp", "1.seg", "0000000000000000000x.seg", "00000000000000000001.seg.bak"] {
        assert_eq!(segment::parse_file_name(other), None, "{other}");
    }
}

#[test]
fn append_numbers_from_one_and_reads_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 30, super::DEFAULT_SEGMENT_BYTES);
    assert_eq!((spool.last_sequence(), spool.oldest_sequence()), (0, None));
    assert_eq!(spool.read_after(0, 10).expect("read"), Batch::default());
    let written = append_n(&spool, 100);
    assert_eq!(written.iter().map(|a| a.sequence).collect::<Vec<_>>(), (1..=100).collect::<Vec<_>>());
    assert!(written.iter().all(|a| a.boot_id == "boot-a"));
    assert_eq!((spool.last_sequence(), spool.oldest_sequence()), (100, Some(1)));

    let all = spool.read_after(0, 1000).expect("read");
    assert_eq!(all.lost, None);
    assert_eq!(all.alerts, written, "alerts read back equal what was appended, sequence and boot id included");
    assert_eq!(seqs(&spool.read_after(50, 10).expect("read")), (51..=60).collect::<Vec<_>>());
    assert_eq!(spool.read_after(100, 10).expect("read"), Batch::default());
    assert_eq!(spool.read_after(1000, 10).expect("read"), Batch::default());
    assert_eq!(spool.read_after(0, 0).expect("read"), Batch::default());
}

#[test]
fn reads_start_anywhere_across_segments() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 30, 16 << 10);
    let mut small = Alert::default();
    for i in 1..=2000u64 {
        small.summary = format!("alert {i} ");
        spool.append(&mut small).expect("append");
    }
    assert!(segment_files(dir.path()).len() > 3, "several segments");
    for after in [0, 1, 62, 63, 64, 65, 127, 128, 500, 1023, 1024, 1999] {
        let batch = spool.read_after(after, 130).expect("read");
        let want: Vec<u64> = (after + 1..=(after + 130).min(2000)).collect();
        assert_eq!(seqs(&batch), want, "after {after}");
    }
    assert!(drain(&spool, 0, 7, 2000).is_empty());
}

#[test]
fn retention_deletes_oldest_and_reports_the_lost_range() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (max, seg) = (64 << 10, 16 << 10);
    let spool = open(dir.path(), max, seg);
    append_n(&spool, 200);
    let oldest = spool.oldest_sequence().expect("something held");
    assert!(oldest > 1, "old segments deleted");
    assert_eq!(
        segment::parse_file_name(segment_files(dir.path())[0].file_name().and_then(|n| n.to_str()).expect("name")),
        Some(oldest)
    );
    assert!(spool.stats().deleted_segments > 0);

    let batch = spool.read_after(0, 10).expect("read");
    assert_eq!(batch.lost, Some((1, oldest - 1)), "exactly the deleted sequences");
    assert_eq!(seqs(&batch), (oldest..oldest + 10).collect::<Vec<_>>());
    let batch = spool.read_after(oldest - 1, 10).expect("read");
    assert_eq!((batch.lost, batch.alerts[0].sequence), (None, oldest));
    assert_eq!(drain(&spool, 0, 50, 200), vec![(1, oldest - 1)]);
}

#[test]
fn reader_behind_retention_continues_from_the_oldest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 64 << 10, 16 << 10);
    append_n(&spool, 20);
    let first = spool.read_after(0, 10).expect("read");
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<_>>());
    append_n(&spool, 300);
    let oldest = spool.oldest_sequence().expect("held");
    assert!(oldest > 11);
    let batch = spool.read_after(10, 5).expect("read");
    assert_eq!(batch.lost, Some((11, oldest - 1)));
    assert_eq!(seqs(&batch), (oldest..oldest + 5).collect::<Vec<_>>());
    assert_eq!(drain(&spool, 10, 64, 320), vec![(11, oldest - 1)]);
}

#[test]
fn max_bytes_bounds_the_size_on_disk() {
    for (max, seg, big) in [(64 << 10, 16 << 10, false), (40 << 10, 8 << 10, false), (256 << 10, 64 << 10, true)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spool = open(dir.path(), max, seg);
        let mut highest = 0;
        for i in 1..=400u64 {
            let mut a = alert(i);
            if big && i % 7 == 0 {
                a.missing.push("x".repeat(20 << 10));
            }
            spool.append(&mut a).expect("append");
            let on_disk = segment_bytes_on_disk(dir.path());
            assert_eq!(on_disk, spool.stats().disk_bytes, "the index counts what is on disk");
            highest = highest.max(on_disk);
        }
        assert!(highest <= max + seg, "max {max} segment {seg}: {highest} on disk");
        assert!(highest <= max, "retention leaves room for the newest segment: {highest} > {max}");
    }
}

#[test]
fn large_alerts_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Segments smaller than one alert: each gets a segment of its own.
    let spool = open(dir.path(), 1 << 30, MIN_SEGMENT_BYTES);
    let mut written = Vec::new();
    for i in 1..=5u64 {
        let mut a = alert(i);
        a.summary = format!("alert {i} {}", "s".repeat(64 << 10));
        a.missing = vec!["m".repeat(64 << 10); 2];
        spool.append(&mut a).expect("append");
        written.push(a);
    }
    assert_eq!(spool.read_after(0, 10).expect("read").alerts, written);
    assert_eq!(segment_files(dir.path()).len(), 5);

    let mut huge = alert(6);
    huge.summary = "h".repeat(super::segment::MAX_RECORD_BYTES + 1);
    assert!(matches!(spool.append(&mut huge), Err(SpoolError::TooLarge { .. })));
    assert_eq!(append_n(&spool, 1)[0].sequence, 6, "a refused alert uses no sequence");
}

#[test]
fn a_second_writer_on_one_directory_is_refused_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Spool::open(dir.path(), 1 << 20, MIN_SEGMENT_BYTES, "boot").expect("the first agent's spool");
    first.append(&mut alert(1)).expect("append");
    match Spool::open(dir.path(), 1 << 20, MIN_SEGMENT_BYTES, "boot") {
        Err(error @ SpoolError::InUse(_)) => {
            assert!(error.to_string().contains(&dir.path().display().to_string()), "{error}");
        }
        other => panic!("a second agent would reuse sequence numbers: {other:?}"),
    }
    drop(first);
    let reopened = Spool::open(dir.path(), 1 << 20, MIN_SEGMENT_BYTES, "boot").expect("free once the first is gone");
    assert_eq!(reopened.last_sequence(), 1);
}
