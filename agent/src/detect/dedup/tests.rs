//! Folding, separation by key, re-emission, overflow and shutdown.

use std::time::{Duration, Instant};

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Alert, ContainerContext, ProcessContext, Severity};

use super::Deduper;

const WINDOW: Duration = Duration::from_secs(60);

/// A token read by `exe` in container `container`, numbered `n` (its id and
/// its time, in seconds).
fn read(n: i64, container: &str, exe: &str) -> Alert {
    Alert {
        id: format!("run-{n}"),
        rule: "token-read".to_owned(),
        severity: Severity::Medium.into(),
        time: Some(Timestamp { seconds: 1_700_000_000 + n, nanos: 0 }),
        container: Some(ContainerContext { id: container.to_owned(), cgroup_id: 7, ..Default::default() }),
        process: Some(ProcessContext { exe: exe.to_owned(), comm: "cat".to_owned(), ..Default::default() }),
        ..Default::default()
    }
}

fn seconds(alert: &Alert) -> (i64, i64) {
    let at = |t: &Option<Timestamp>| t.as_ref().map_or(0, |t| t.seconds - 1_700_000_000);
    (at(&alert.first_seen), at(&alert.last_seen))
}

#[test]
fn a_thousand_reads_are_one_alert_with_count_1000() {
    let start = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    let first = dedup.offer(read(0, "c1", "/bin/cat"), start).expect("the first passes through at once");
    assert_eq!((first.id.as_str(), first.count, seconds(&first)), ("run-0", 1, (0, 0)));
    for n in 1..1000 {
        let at = start + Duration::from_millis(50 * u64::try_from(n).expect("positive"));
        assert!(dedup.offer(read(n, "c1", "/bin/cat"), at).is_none(), "occurrence {n} is absorbed");
    }
    assert_eq!(dedup.next_deadline(), Some(start + WINDOW));
    assert!(dedup.flush(start + WINDOW - Duration::from_millis(1)).is_empty(), "the window is still open");
    let flushed = dedup.flush(start + WINDOW);
    assert_eq!(flushed.len(), 1);
    assert_eq!((flushed[0].id.as_str(), flushed[0].count, seconds(&flushed[0])), ("run-0", 1000, (0, 999)));
    assert_eq!((dedup.open_windows(), dedup.next_deadline()), (0, None));
}

#[test]
fn rules_containers_binaries_and_severities_are_separate() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 100);
    let base = read(0, "c1", "/bin/cat");
    let mut connect = read(1, "c1", "/bin/cat");
    connect.rule = "apiserver-connect".to_owned();
    let mut exec = read(2, "c1", "/bin/cat");
    exec.severity = Severity::High.into();
    let host = read(3, "", "/bin/cat");
    let mut other_cgroup = read(4, "", "/bin/cat");
    other_cgroup.container.get_or_insert_with(Default::default).cgroup_id = 8;
    let by_comm = read(5, "c1", "");
    let mut other_comm = read(6, "c1", "");
    other_comm.process.get_or_insert_with(Default::default).comm = "head".to_owned();
    let distinct = [base, connect, exec, host, other_cgroup, by_comm, other_comm, read(7, "c2", "/bin/cat")];
    let distinct = distinct.into_iter().chain([read(8, "c1", "/usr/bin/cat")]);
    for alert in distinct {
        let id = alert.id.clone();
        assert!(dedup.offer(alert, now).is_some(), "{id} opens its own window");
    }
    assert_eq!(dedup.open_windows(), 9);
    assert!(dedup.offer(read(9, "", "/bin/cat"), now).is_none(), "same cgroup, same binary");
    assert!(dedup.offer(read(10, "c1", ""), now).is_none(), "same container, same comm");
    let flushed = dedup.flush(now + WINDOW);
    let ids: Vec<(&str, u64)> = flushed.iter().map(|a| (a.id.as_str(), a.count)).collect();
    assert_eq!(ids, [("run-3", 2), ("run-5", 2)]);
}

#[test]
fn a_window_with_one_occurrence_is_not_sent_again() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    assert!(dedup.offer(read(0, "c1", "/bin/cat"), now).is_some());
    assert!(dedup.flush(now + WINDOW).is_empty());
    assert_eq!(dedup.open_windows(), 0);
    assert!(dedup.flush_all().is_empty());
}

#[test]
fn after_the_window_a_new_alert_opens_and_the_old_one_is_due() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    assert!(dedup.offer(read(0, "c1", "/bin/cat"), now).is_some());
    assert!(dedup.offer(read(1, "c1", "/bin/cat"), now + Duration::from_secs(1)).is_none());
    // No flush in between: the next occurrence after the window is not
    // absorbed into the closed window, and the closed one becomes due.
    let later = now + WINDOW + Duration::from_secs(5);
    let reopened = dedup.offer(read(70, "c1", "/bin/cat"), later).expect("a new window, a new alert");
    assert_eq!((reopened.id.as_str(), reopened.count), ("run-70", 1));
    assert_eq!(dedup.next_deadline(), Some(later), "the due re-emission wakes the pipeline at once");
    let flushed = dedup.flush(later);
    assert_eq!((flushed[0].id.as_str(), flushed[0].count, seconds(&flushed[0])), ("run-0", 2, (0, 1)));
    assert_eq!(dedup.next_deadline(), Some(later + WINDOW));
}

#[test]
fn overflow_closes_the_oldest_early_with_its_count() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 2);
    assert!(dedup.offer(read(0, "c1", "/bin/cat"), now).is_some());
    assert!(dedup.offer(read(1, "c1", "/bin/cat"), now).is_none());
    assert!(dedup.offer(read(2, "c1", "/bin/cat"), now).is_none());
    assert!(dedup.offer(read(3, "c2", "/bin/cat"), now).is_some());
    let t = now + Duration::from_secs(1);
    let third = dedup.offer(read(4, "c3", "/bin/cat"), t).expect("a third key still passes through");
    assert_eq!(third.id, "run-4");
    assert_eq!(dedup.open_windows(), 2, "bounded");
    assert_eq!(dedup.next_deadline(), Some(t), "the early close is due now");
    let flushed = dedup.flush(t);
    assert_eq!(
        (flushed.len(), flushed[0].id.as_str(), flushed[0].count, seconds(&flushed[0])),
        (1, "run-0", 3, (0, 2))
    );
    // c2 (one occurrence) is closed next, silently: it was already sent.
    assert!(dedup.offer(read(5, "c4", "/bin/cat"), t).is_some());
    assert!(dedup.flush(t).is_empty());
    assert!(dedup.offer(read(6, "c3", "/bin/cat"), t).is_none(), "c3 is still open");
}

#[test]
fn flush_all_at_shutdown_sends_every_open_count() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    for (n, container) in [(0, "c1"), (1, "c2"), (2, "c1"), (3, "c3"), (4, "c2"), (5, "c2")] {
        dedup.offer(read(n, container, "/bin/cat"), now);
    }
    let flushed: Vec<(String, u64)> = dedup.flush_all().into_iter().map(|a| (a.id, a.count)).collect();
    assert_eq!(flushed, [("run-0".to_owned(), 2), ("run-1".to_owned(), 3)]);
    assert_eq!((dedup.open_windows(), dedup.next_deadline()), (0, None));
}

#[test]
fn seen_times_hold_out_of_order_occurrences() {
    let now = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    assert!(dedup.offer(read(10, "c1", "/bin/cat"), now).is_some());
    assert!(dedup.offer(read(8, "c1", "/bin/cat"), now).is_none());
    assert!(dedup.offer(read(12, "c1", "/bin/cat"), now).is_none());
    assert!(dedup.offer(read(11, "c1", "/bin/cat"), now).is_none());
    let flushed = dedup.flush_all();
    assert_eq!((flushed[0].id.as_str(), flushed[0].count, seconds(&flushed[0])), ("run-10", 4, (8, 12)));
}

#[test]
fn a_refused_occurrence_is_never_folded_into_one_that_was_not() {
    use tokenwatch_proto::v1::{Enforcement, EnforcementAction};
    let mut dedup = Deduper::new(Duration::from_secs(60), 16);
    let now = Instant::now();
    let plain = read(1, "c1", "/bin/cat");
    let mut killed = read(2, "c1", "/bin/cat");
    killed.enforcement = Some(Enforcement { action: EnforcementAction::Killed.into(), block_id: "b".into() });
    let mut dry = killed.clone();
    dry.enforcement = Some(Enforcement { action: EnforcementAction::WouldKill.into(), block_id: "b".into() });
    assert!(dedup.offer(plain, now).is_some());
    assert!(dedup.offer(killed.clone(), now).is_some(), "the kill goes out at once, on its own");
    assert!(dedup.offer(dry, now).is_some(), "and so does a dry run's report");
    assert!(dedup.offer(killed, now).is_none(), "a second kill is folded into the first");
}

#[test]
fn a_folded_alert_names_every_process_it_stands_for() {
    use tokenwatch_proto::v1::ProcessRef;
    let by = |n: i64, pid: u32, started: i64, parent: (u32, &str)| {
        let mut alert = read(n, "c1", "/bin/cat");
        let process = alert.process.as_mut().expect("process");
        process.pid = pid;
        process.start_time = Some(Timestamp { seconds: started, nanos: 0 });
        process.parents = vec![ProcessRef { pid: parent.0, comm: parent.1.to_owned(), ..Default::default() }];
        alert
    };
    let start = Instant::now();
    let mut dedup = Deduper::new(WINDOW, 10);
    let first = dedup.offer(by(0, 100, 1, (90, "app")), start).expect("passes through");
    assert!(first.folded_processes.is_empty(), "one event: nothing folded yet");
    // The app reads twice more; a shell someone exec'd reads once; then
    // pid 100 is reused by another process (a new start).
    assert!(dedup.offer(by(1, 100, 1, (90, "app")), start).is_none());
    assert!(dedup.offer(by(2, 100, 1, (90, "app")), start).is_none());
    assert!(dedup.offer(by(3, 200, 5, (150, "sh")), start).is_none());
    assert!(dedup.offer(by(4, 100, 9, (150, "sh")), start).is_none());
    let folded = dedup.flush_all();
    let processes: Vec<(u32, i64, u32, &str, u64)> = folded[0]
        .folded_processes
        .iter()
        .map(|p| (p.pid, p.start_time.map_or(0, |t| t.seconds), p.parent_pid, p.parent_comm.as_str(), p.count))
        .collect();
    assert_eq!(processes, [(100, 1, 90, "app", 3), (200, 5, 150, "sh", 1), (100, 9, 150, "sh", 1)]);
    assert_eq!((folded[0].count, folded[0].folded_processes_more), (5, 0));

    // Bounded: the 17th process and later are counted, not listed.
    let mut dedup = Deduper::new(WINDOW, 10);
    for pid in 0..20 {
        let _ = dedup.offer(by(i64::from(pid), pid + 1, 1, (1, "init")), start);
    }
    let folded = dedup.flush_all();
    assert_eq!(folded[0].folded_processes.len(), super::MAX_FOLDED_PROCESSES);
    assert_eq!(folded[0].folded_processes_more, 4);
}
