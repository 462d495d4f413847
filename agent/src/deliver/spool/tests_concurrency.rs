//! Subscribers, a writer beside slow and concurrent readers, several writers, and a throughput measurement.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::tests::{alert, append_n, open, seqs};

#[tokio::test]
async fn subscribe_fires_on_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 20, 64 << 10);
    let mut rx = spool.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);
    let waiter = tokio::spawn(async move {
        rx.changed().await.expect("sender alive");
        let seen = *rx.borrow_and_update();
        seen
    });
    tokio::task::yield_now().await;
    let seq = spool.append(&mut alert(1)).expect("append");
    let seen = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("task");
    assert_eq!(seen, seq);
    let mut late = spool.subscribe();
    assert_eq!(*late.borrow_and_update(), 1, "a new subscriber starts at the last sequence");
    spool.append(&mut alert(2)).expect("append");
    assert!(late.has_changed().expect("alive"));
    assert_eq!(*late.borrow_and_update(), 2);
}

#[test]
fn writer_does_not_wait_for_a_slow_reader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 8 << 20, 256 << 10);
    append_n(&spool, 1000);
    let (holding_tx, holding_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<Duration>();
    let holder = {
        let spool = spool.clone();
        thread::spawn(move || {
            let batch = spool.read_after(0, 1000).expect("read");
            holding_tx.send(()).expect("send");
            // Hold the batch until the writer is done; a writer that waited for us would never finish.
            let took = done_rx.recv_timeout(Duration::from_secs(60)).expect("writer finished while a batch was held");
            (batch.alerts.len(), took)
        })
    };
    let slow = {
        let spool = spool.clone();
        thread::spawn(move || {
            let mut after = 0;
            for _ in 0..200 {
                let batch = spool.read_after(after, 10).expect("read");
                if let Some((first, last)) = batch.lost {
                    // Retention (8 MiB) may overtake this reader: it is told, and goes on from the oldest held.
                    assert_eq!(first, after + 1);
                    after = last;
                }
                for a in &batch.alerts {
                    assert_eq!(a.sequence, after + 1);
                    after = a.sequence;
                }
                thread::sleep(Duration::from_millis(1));
            }
            after
        })
    };
    holding_rx.recv().expect("holder reading");
    let start = Instant::now();
    append_n(&spool, 10_000);
    done_tx.send(start.elapsed()).expect("send");
    let (held, took) = holder.join().expect("holder");
    assert_eq!(held, 1000);
    assert!(slow.join().expect("slow reader") > 0);
    assert_eq!(spool.last_sequence(), 11_000);
    assert!(took < Duration::from_secs(60));
}

#[test]
fn concurrent_reader_sees_every_sequence_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 256 << 10, 32 << 10);
    const N: u64 = 20_000;
    let reader = {
        let spool = spool.clone();
        thread::spawn(move || {
            let (mut after, mut lost, mut read) = (0, 0, 0);
            let deadline = Instant::now() + Duration::from_secs(120);
            while after < N {
                assert!(Instant::now() < deadline, "reader stuck at {after}");
                let batch = spool.read_after(after, 100).expect("read");
                if let Some((first, last)) = batch.lost {
                    assert_eq!(first, after + 1);
                    lost += last - first + 1;
                    after = last;
                }
                for a in &batch.alerts {
                    assert_eq!(a.sequence, after + 1, "consecutive");
                    assert!(a.summary.starts_with(&format!("alert {} ", a.sequence)));
                    after = a.sequence;
                    read += 1;
                }
                if batch.alerts.is_empty() && batch.lost.is_none() {
                    thread::sleep(Duration::from_micros(200));
                }
            }
            (read, lost)
        })
    };
    let writer = {
        let spool = spool.clone();
        thread::spawn(move || {
            for i in 1..=N {
                assert_eq!(spool.append(&mut alert(i)).expect("append"), i);
            }
        })
    };
    writer.join().expect("writer");
    let (read, lost) = reader.join().expect("reader");
    assert_eq!(read + lost, N, "every sequence read or reported lost, once");
    assert!(spool.stats().deleted_segments > 0, "retention ran meanwhile");
}

#[test]
fn several_writers_get_distinct_consecutive_sequences() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(dir.path(), 1 << 30, 64 << 10);
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let spool = spool.clone();
            thread::spawn(move || (0..1000).map(|_| spool.append(&mut alert(w)).expect("append")).collect::<Vec<u64>>())
        })
        .collect();
    let mut all: Vec<u64> = writers.into_iter().flat_map(|w| w.join().expect("writer")).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=4000).collect::<Vec<_>>());
    let batch = spool.read_after(0, 5000).expect("read");
    assert_eq!(seqs(&batch), all);
}
