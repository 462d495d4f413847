//! Reads the ring buffer as it becomes readable and hands decoded events on.
//! On shutdown it drains what the kernel already wrote, so nothing accepted is
//! lost; records it cannot decode are logged and counted, never fatal.

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tokio_util::sync::CancellationToken;

use super::decode::{decode, KernelEvent};

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
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            guard = fd.readable_mut() => {
                let mut guard = guard.map_err(ReaderError::Poll)?;
                let batch = drain(guard.get_inner_mut(), &mut stats);
                guard.clear_ready();
                for event in batch {
                    if events.send(event).await.is_err() {
                        return Ok(stats);
                    }
                }
            }
        }
    }
    for event in drain(fd.get_mut(), &mut stats) {
        if events.send(event).await.is_err() {
            break;
        }
    }
    Ok(stats)
}

/// Takes every record now in the ring buffer.
fn drain(ring: &mut RingBuf<MapData>, stats: &mut ReaderStats) -> Vec<KernelEvent> {
    let mut batch = Vec::new();
    while let Some(item) = ring.next() {
        match decode(&item) {
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
    batch
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
