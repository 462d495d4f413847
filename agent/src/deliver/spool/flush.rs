//! The delivery log flushed to disk every second and at shutdown: a crash
//! of the agent loses nothing written, a crash of the node at most a second.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Spool, SpoolError};

/// How often the log is flushed.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

impl Spool {
    /// Flushes every [`FLUSH_EVERY`] until `cancel`, then once more.
    pub async fn keep_flushed(&self, cancel: CancellationToken) -> Result<(), SpoolError> {
        let mut ticker = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => self.sync()?,
            }
        }
        self.sync()
    }
}
