//! Reads the ring buffer as it becomes readable and hands decoded events on,
//! at most [`MAX_BATCH`] records at a time: while the pipeline behind it is
//! full, records wait in the kernel's ring (where a flood is counted as
//! lost) rather than in the agent's memory. On shutdown it drains what the
//! kernel already wrote, so nothing accepted is lost; records it cannot
//! decode are logged and counted, never fatal.
//!
//! A record the programs submit soon after one that could wake the reader
//! does not wake it ([`RING_QUIET_NS`]), so after every drain that found
//! records the reader drains again [`RING_REDRAIN_NS`] later, without a
//! wakeup, until a drain finds none: a burst costs the kernel one wakeup.
//! Then it still drains every [`IDLE_POLL`]: a program decides "quiet"
//! before its record is committed, and a vCPU the hypervisor stalls in
//! between (seen under emulation) can commit it after the reader went
//! idle. Such a record waits at most that long; none is lost.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tokenwatch_common::{RING_QUIET_NS, RING_REDRAIN_NS};
use tokio::{io::unix::AsyncFd, sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

use super::decode::{decode, DecodeError, KernelEvent};

/// The most records taken from the ring buffer before they are handed on.
pub const MAX_BATCH: usize = 256;

/// How often an idle reader drains anyway (an empty ring costs a look).
pub const IDLE_POLL: Duration = Duration::from_millis(100);

/// Why reading stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReaderError {
    /// The ring buffer could not be registered with the event loop.
    #[error("polling the ring buffer: {0}")]
    Poll(std::io::Error),
}

/// Totals of one reader's life, logged at shutdown.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderStats {
    /// Records decoded and handed on.
    pub delivered: u64,
    /// Records refused by the decoder.
    pub undecodable: u64,
}

/// Reads until `cancel` fires or the receiver is gone, then drains.
pub async fn read_events(
    ring: RingBuf<MapData>,
    events: mpsc::Sender<KernelEvent>,
    cancel: CancellationToken,
) -> Result<ReaderStats, ReaderError> {
    // SAFETY: the ring buffer owns its fd, and AsyncFd owns the ring buffer, so
    // the fd outlives the registration.
    let mut fd = unsafe { AsyncFd::register(ring) }.map_err(|e| ReaderError::Poll(e.into_parts().1))?;
    let mut stats = ReaderStats::default();
    let mut schedule = Redrains::new(Instant::now());
    loop {
        let (batch, more, timed) = tokio::select! {
            () = cancel.cancelled() => break,
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(ReaderError::Poll)?;
                let (batch, more) = drain(guard.get_inner_mut(), &mut stats, MAX_BATCH);
                // Left ready while records remain: the next turn takes them.
                if !more {
                    guard.clear_ready();
                }
                (batch, more, false)
            }
            () = tokio::time::sleep_until(schedule.at) => {
                let (batch, more) = drain(fd.get_mut(), &mut stats, MAX_BATCH);
                (batch, more, true)
            }
        };
        schedule.after_drain(!batch.is_empty(), more, timed, Instant::now());
        for event in batch {
            if events.send(event).await.is_err() {
                return Ok(stats);
            }
        }
    }
    loop {
        let (batch, more) = drain(fd.get_mut(), &mut stats, MAX_BATCH);
        for event in batch {
            if events.send(event).await.is_err() {
                return Ok(stats);
            }
        }
        if !more {
            return Ok(stats);
        }
    }
}

/// When the reader drains without a wakeup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Redrains {
    /// The next timed drain.
    at: Instant,
    /// When a drain last found records.
    last_found: Instant,
}

impl Redrains {
    /// Idle from `now`.
    fn new(now: Instant) -> Self {
        Redrains { at: now + IDLE_POLL, last_found: now }
    }

    /// After a drain at `now` that `found` records (and stopped at a full
    /// batch: `more`), woken by the kernel or by the timer (`timed`):
    /// - a full batch goes on at once: no wakeup comes for the rest (the
    ///   kernel wakes a reader only once it has caught up);
    /// - records found: again [`RING_REDRAIN_NS`] later, so a quiet record
    ///   after them lands while the reader still drains;
    /// - a wakeup's drain that found none changes nothing (the timed drain
    ///   before it may have taken the record that woke the agent, and a
    ///   quiet record after that one is the next timed drain's to find);
    /// - a timed drain that found none: the re-drain due after the last
    ///   records found, if still ahead, else the idle poll.
    fn after_drain(&mut self, found: bool, more: bool, timed: bool, now: Instant) {
        let redrain = Duration::from_nanos(RING_REDRAIN_NS);
        if found {
            self.last_found = now;
        }
        self.at = if more {
            now
        } else if found {
            now + redrain
        } else if !timed {
            self.at
        } else if now < self.last_found + redrain {
            self.last_found + redrain
        } else {
            now + IDLE_POLL
        };
    }
}

const _: () = assert!(RING_REDRAIN_NS >= 2 * RING_QUIET_NS, "a quiet record must land while the reader drains");

/// Where records come from: the ring buffer, or a test's list.
trait Records {
    /// The next record, decoded; `None` when there is none now.
    fn next_decoded(&mut self) -> Option<Result<KernelEvent, DecodeError>>;
}

impl Records for RingBuf<MapData> {
    fn next_decoded(&mut self) -> Option<Result<KernelEvent, DecodeError>> {
        self.next().map(|item| decode(&item))
    }
}

/// Takes up to `max` records now in the ring buffer (decodable or not);
/// says whether it stopped at `max`, so more may be waiting.
fn drain(ring: &mut impl Records, stats: &mut ReaderStats, max: usize) -> (Vec<KernelEvent>, bool) {
    let mut batch = Vec::with_capacity(max.min(64));
    for _ in 0..max {
        let Some(record) = ring.next_decoded() else { return (batch, false) };
        match record {
            Ok(event) => {
                stats.delivered += 1;
                batch.push(event);
            }
            Err(error) => {
                stats.undecodable += 1;
                tracing::warn!(%error, "dropping a kernel record the agent cannot decode");
            }
        }
    }
    (batch, true)
}

/// Forwards the programs' aya-log records to the agent's log until `cancel`.
pub async fn forward_logs(
    logger: EbpfLogger<&'static dyn log::Log>,
    cancel: CancellationToken,
) -> Result<(), ReaderError> {
    // SAFETY: as above; the logger owns its ring buffer's fd.
    let mut fd = unsafe { AsyncFd::register(logger) }.map_err(|e| ReaderError::Poll(e.into_parts().1))?;
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(ReaderError::Poll)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
        }
    }
    fd.get_mut().flush();
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;

    impl Records for VecDeque<Vec<u8>> {
        fn next_decoded(&mut self) -> Option<Result<KernelEvent, DecodeError>> {
            self.pop_front().map(|bytes| decode(&bytes))
        }
    }

    #[test]
    fn the_reader_drains_on_while_records_may_wait_and_then_idles() {
        let t0 = Instant::now();
        let redrain = Duration::from_nanos(RING_REDRAIN_NS);
        let mut schedule = Redrains::new(t0);
        assert_eq!(schedule.at, t0 + IDLE_POLL, "idle from the start");
        schedule.after_drain(true, false, false, t0);
        assert_eq!(schedule.at, t0 + redrain, "a wakeup's records start the re-drains");
        // The case the 5.10 flood found: a timed drain took the record that
        // woke the agent, and the wakeup's own drain came up empty.
        schedule.after_drain(false, false, false, t0 + redrain / 4);
        assert_eq!(schedule.at, t0 + redrain, "an empty wakeup keeps them");
        // The case the 200,000/s bench step found: a timed drain stopped
        // at a full batch, and no wakeup comes for the rest.
        let t1 = t0 + redrain;
        schedule.after_drain(true, true, true, t1);
        assert_eq!(schedule.at, t1, "a full batch goes on at once");
        schedule.after_drain(false, false, true, t1 + redrain / 10);
        assert_eq!(schedule.at, t1 + redrain, "an empty drain soon after records still re-drains");
        schedule.after_drain(false, false, true, t1 + redrain);
        assert_eq!(schedule.at, t1 + redrain + IDLE_POLL, "then it idles");
    }

    #[test]
    fn each_batch_takes_at_most_its_bound_and_says_more_wait() {
        // Records the decoder refuses count too: a flood of them is bounded.
        let mut ring: VecDeque<Vec<u8>> = (0..MAX_BATCH * 2 + 3).map(|_| vec![0xff; 3]).collect();
        let mut stats = ReaderStats::default();
        assert!(drain(&mut ring, &mut stats, MAX_BATCH).1);
        assert_eq!((stats.undecodable, ring.len()), (MAX_BATCH as u64, MAX_BATCH + 3));
        assert!(drain(&mut ring, &mut stats, MAX_BATCH).1);
        let (batch, more) = drain(&mut ring, &mut stats, MAX_BATCH);
        assert!(!more && batch.is_empty() && ring.is_empty());
        assert_eq!(stats, ReaderStats { delivered: 0, undecodable: (MAX_BATCH * 2 + 3) as u64 });
    }
}
