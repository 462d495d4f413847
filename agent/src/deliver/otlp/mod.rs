//! Push: alerts exported as OTLP logs over gRPC to an OpenTelemetry
//! Collector (or anything speaking `opentelemetry.proto.collector.logs.v1`),
//! and the token inventory as OTLP metrics beside them ([`metrics`]).
//!
//! The exporter reads the delivery log (`spool`) from the position the
//! collector last acknowledged, so delivery is at-least-once across
//! collector outages and agent restarts: a batch is acknowledged (and the
//! position persisted, `position`) only once the collector answered it.
//! Failures are retried with exponential backoff, as long as it takes; the
//! log keeps what is not yet sent, up to its size bound, and alerts deleted
//! by that bound before they were sent are reported as lost.

pub mod convert;
pub mod endpoint;
pub mod metrics;
pub mod position;

use std::{path::PathBuf, time::Duration};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub use convert::ConvertError;
pub use endpoint::{OtlpEndpoint, OtlpEndpointError};
pub use position::{Position, PositionError};

use crate::deliver::spool::{Batch, Spool, SpoolError};

/// Alerts per export request: large enough to catch up quickly after an
/// outage, small enough to stay far below gRPC's 4 MiB message limit (an
/// alert is about 2 KiB).
pub const BATCH: usize = 512;
/// The first retry's delay.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// The longest delay between retries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long one export may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// After shutdown is asked, how long an export may still take: what is
/// caught up by then is acknowledged, the rest goes at the next start.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where and how to export; built from `--otlp-*` by the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector's OTLP/gRPC endpoint; `https://` means TLS.
    pub endpoint: OtlpEndpoint,
    /// CA bundle (PEM) the collector's certificate must chain to; without
    /// it, an `https://` endpoint is checked against the system's roots.
    pub ca: Option<PathBuf>,
    /// The agent's client certificate and key (PEM), for collectors that
    /// require mutual TLS.
    pub identity: Option<IdentityFiles>,
}

/// A client certificate chain and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFiles {
    /// The certificate chain.
    pub cert: PathBuf,
    /// The private key.
    pub key: PathBuf,
}

/// Why the exporter stopped. Collector failures are not here: they are
/// retried for as long as the agent runs.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    /// A TLS file could not be read.
    #[error("OTLP exporter: reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// tonic could not make a URI of the endpoint (a bug: endpoints are
    /// checked when parsed).
    #[error("OTLP exporter: `{0}` is not a valid URI")]
    Endpoint(OtlpEndpoint),
    /// tonic refused the endpoint or the TLS settings.
    #[error("OTLP exporter: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The delivery log could not be read.
    #[error("OTLP exporter: {0}")]
    Spool(#[from] SpoolError),
    /// The acknowledged position could not be saved.
    #[error(transparent)]
    Position(#[from] PositionError),
    /// An alert could not be converted.
    #[error("OTLP exporter: {0}")]
    Convert(#[from] ConvertError),
    /// A blocking file operation panicked.
    #[error("OTLP exporter: a file operation failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Delays between retries: [`INITIAL_BACKOFF`], doubling up to
/// [`MAX_BACKOFF`], for as long as it takes; a fresh one after a success.
/// No jitter: there is one exporter per node and collectors shed load with
/// their own limits.
pub fn retry_delays() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(INITIAL_BACKOFF)
        .with_max_delay(MAX_BACKOFF)
        .with_factor(2.0)
        .without_max_times()
        .build()
}

/// What the exporter did, logged when it stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportCounts {
    /// Records the collector accepted.
    pub exported: u64,
    /// Records the collector refused for good (partial success or
    /// `INVALID_ARGUMENT`); acknowledged, not sent again.
    pub rejected: u64,
    /// Failed attempts that were retried.
    pub retries: u64,
    /// Alerts deleted from the log before they could be exported.
    pub lost: u64,
}

/// Exports `spool` to the collector until `cancel`, resuming after the
/// persisted position (or from the oldest alert held), waiting for new
/// alerts when caught up. Returns an error only for what retrying cannot
/// fix: bad TLS files, an unreadable log, an unwritable position.
pub async fn export(spool: Spool, config: OtlpConfig, cancel: CancellationToken) -> Result<(), OtlpError> {
    let mut client = LogsServiceClient::new(channel(&config)?);
    let position = Position::in_dir(spool.dir());
    let mut after = start_after(&spool, &position);
    tracing::info!(
        endpoint = %config.endpoint,
        tls = config.endpoint.is_tls(),
        mtls = config.identity.is_some(),
        after,
        "exporting alerts as OTLP logs"
    );
    let mut counts = ExportCounts::default();
    let result = run(&spool, &position, &mut client, &mut after, &mut counts, &cancel).await;
    tracing::info!(
        exported = counts.exported,
        rejected = counts.rejected,
        retries = counts.retries,
        lost = counts.lost,
        acknowledged = after,
        "OTLP exporter stopped"
    );
    result
}

async fn run(
    spool: &Spool,
    position: &Position,
    client: &mut LogsServiceClient<Channel>,
    after: &mut u64,
    counts: &mut ExportCounts,
    cancel: &CancellationToken,
) -> Result<(), OtlpError> {
    let mut appended = spool.subscribe();
    let mut backoff = retry_delays();
    loop {
        let reader = spool.clone();
        let from = *after;
        let Batch { alerts, lost } = tokio::task::spawn_blocking(move || reader.read_after(from, BATCH)).await??;
        if let Some((first, last)) = lost {
            tracing::warn!(first, last, "OTLP exporter: alerts deleted from the delivery log before export");
            counts.lost += last.saturating_sub(first) + 1;
            *after = (*after).max(last);
            if alerts.is_empty() {
                store(position, *after).await?;
            }
        }
        let Some(last) = alerts.last().map(|a| a.sequence) else {
            if cancel.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = cancel.cancelled() => {}
                changed = appended.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        };
        let request = convert::request(&alerts)?;
        let Some(accepted) = send(client, request, alerts.len(), &mut backoff, counts, cancel).await else {
            return Ok(());
        };
        counts.exported += accepted;
        *after = last;
        store(position, last).await?;
    }
}

/// Sends one request until the collector answers it; the number of records
/// it accepted, or `None` when shutdown came first.
async fn send(
    client: &mut LogsServiceClient<Channel>,
    request: ExportLogsServiceRequest,
    records: usize,
    backoff: &mut ExponentialBackoff,
    counts: &mut ExportCounts,
    cancel: &CancellationToken,
) -> Option<u64> {
    let records = records as u64;
    let mut attempt = 1u64;
    loop {
        let grace = async {
            cancel.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        let result = tokio::select! {
            result = client.export(request.clone()) => result,
            () = grace => return None,
        };
        let status = match result {
            Ok(response) => {
                *backoff = retry_delays();
                return Some(records - rejected(response.into_inner(), records, counts));
            }
            Err(status) if status.code() == tonic::Code::InvalidArgument => {
                tracing::warn!(%status, records, "OTLP exporter: the collector refused the batch as invalid; dropped");
                counts.rejected += records;
                *backoff = retry_delays();
                return Some(0);
            }
            Err(status) => status,
        };
        if cancel.is_cancelled() {
            return None;
        }
        let delay = backoff.next().unwrap_or(MAX_BACKOFF);
        counts.retries += 1;
        tracing::warn!(attempt, code = ?status.code(), message = status.message(), retry_in = ?delay, "OTLP export failed; retrying");
        attempt += 1;
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Records of an answered request the collector refused (partial success):
/// logged and counted, acknowledged anyway since sending them again would
/// be refused again.
fn rejected(response: ExportLogsServiceResponse, records: u64, counts: &mut ExportCounts) -> u64 {
    let Some(partial) = response.partial_success else { return 0 };
    let refused = u64::try_from(partial.rejected_log_records).unwrap_or(0).min(records);
    if refused > 0 || !partial.error_message.is_empty() {
        tracing::warn!(refused, records, message = %partial.error_message, "OTLP collector refused records");
    }
    counts.rejected += refused;
    refused
}

/// Where to start: after the persisted position, or before the oldest
/// alert held when there is none (or it cannot be trusted).
fn start_after(spool: &Spool, position: &Position) -> u64 {
    let last = spool.last_sequence();
    let before_oldest = spool.oldest_sequence().map_or(last, |oldest| oldest.saturating_sub(1));
    match position.load() {
        Ok(Some(saved)) if saved <= last => saved,
        Ok(Some(saved)) => {
            tracing::warn!(saved, last, "OTLP position is beyond the delivery log (a new log?); from the oldest alert");
            before_oldest
        }
        Ok(None) => before_oldest,
        Err(error) => {
            tracing::warn!(%error, "OTLP position unusable; exporting from the oldest alert held");
            before_oldest
        }
    }
}

async fn store(position: &Position, sequence: u64) -> Result<(), OtlpError> {
    crate::metrics::global().otlp_acknowledged.store(sequence, std::sync::atomic::Ordering::Relaxed);
    let position = position.clone();
    Ok(tokio::task::spawn_blocking(move || position.store(sequence)).await??)
}

/// A lazily connecting channel: it (re)connects on each request while the
/// collector is down, so the retry loop is all the reconnection needed.
pub(crate) fn channel(config: &OtlpConfig) -> Result<Channel, OtlpError> {
    let mut endpoint = Channel::from_shared(config.endpoint.to_string())
        .map_err(|_| OtlpError::Endpoint(config.endpoint.clone()))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT);
    if config.endpoint.is_tls() {
        let read =
            |path: &PathBuf| std::fs::read(path).map_err(|source| OtlpError::Read { path: path.clone(), source });
        let mut tls = ClientTlsConfig::new();
        tls = match &config.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(read(ca)?)),
            None => tls.with_native_roots(),
        };
        if let Some(identity) = &config.identity {
            tls = tls.identity(Identity::from_pem(read(&identity.cert)?, read(&identity.key)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect_lazy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_wait_half_a_second_then_double_up_to_thirty_seconds_for_ever() {
        let delays: Vec<u64> = retry_delays().take(12).map(|d| d.as_millis() as u64).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000, 30000]);
    }

    #[tokio::test]
    async fn tls_files_are_read_up_front_and_a_missing_one_is_named() {
        let config = |endpoint: &str, ca: Option<&str>| OtlpConfig {
            endpoint: endpoint.parse().expect("endpoint"),
            ca: ca.map(PathBuf::from),
            identity: None,
        };
        assert!(channel(&config("http://127.0.0.1:4317", None)).is_ok(), "plaintext: nothing to read");
        assert!(channel(&config("https://collector:4317", None)).is_ok(), "the system's roots");
        let error = channel(&config("https://collector:4317", Some("/nonexistent/ca.pem"))).expect_err("no CA file");
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
    }
}
