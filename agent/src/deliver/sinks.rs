//! Where each alert goes, in order: the delivery log first (which gives it
//! its sequence, so the stream, OTLP and stdout agree on it), then stdout.
//! When the log cannot be written (a full disk), the alert still goes to
//! stdout, the failure is counted, and the pipeline learns of it once per
//! episode ([`Sinks::take_failure`]) to raise an `agent-degraded` alert;
//! the agent keeps watching.

use tokenwatch_proto::v1::{Alert, Severity};
use tokio::io::AsyncWrite;

use super::{
    spool::Spool,
    stdout::{StdoutError, StdoutSink},
};
use crate::metrics;

/// The delivery log, then stdout.
pub struct Sinks<W> {
    spool: Spool,
    stdout: StdoutSink<W>,
    /// Set while appends fail.
    failing: Option<Failing>,
}

/// A run of failed appends.
struct Failing {
    /// The first error, until the pipeline has taken it.
    unreported: Option<String>,
    /// Appends refused so far.
    refused: u64,
}

impl<W: AsyncWrite + Unpin> Sinks<W> {
    /// Delivers to `spool`, then `stdout`.
    pub fn new(spool: Spool, stdout: StdoutSink<W>) -> Self {
        Sinks { spool, stdout, failing: None }
    }

    /// Appends `alert` to the log (a refusal is counted, not returned) and
    /// prints it; only a failing stdout is an error.
    pub async fn write(&mut self, alert: &Alert) -> Result<(), StdoutError> {
        let mut alert = alert.clone();
        let counts = metrics::global();
        match self.spool.append(&mut alert) {
            Ok(_) => {
                if let Some(failing) = self.failing.take() {
                    tracing::warn!(refused = failing.refused, "the delivery log is writable again");
                }
            }
            Err(error) => {
                counts.spool_write_failures.inc();
                match self.failing.as_mut() {
                    Some(failing) => failing.refused += 1,
                    None => {
                        tracing::error!(
                            %error,
                            "the delivery log cannot be written: alerts go to stdout only, and subscribers and the \
                             collector miss them until it recovers"
                        );
                        self.failing = Some(Failing { unreported: Some(error.to_string()), refused: 1 });
                    }
                }
            }
        }
        let severity = Severity::try_from(alert.severity).unwrap_or_default();
        counts.alert_delivered(&alert.rule, severity.as_str_name());
        self.stdout.write(&alert).await
    }

    /// The error that started a run of refused appends, once per run: the
    /// pipeline turns it into an alert.
    pub fn take_failure(&mut self) -> Option<String> {
        self.failing.as_mut().and_then(|failing| failing.unreported.take())
    }

    /// Prints `alert` on stdout only (the alert that says the log fails).
    pub async fn write_stdout(&mut self, alert: &Alert) -> Result<(), StdoutError> {
        self.stdout.write(alert).await
    }
}
