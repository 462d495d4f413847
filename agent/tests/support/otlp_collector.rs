//! An in-test OpenTelemetry Collector: a tonic server implementing the OTLP
//! logs and metrics services on 127.0.0.1, recording every log record and
//! metrics export it receives. It
//! can be stopped (the port closes, connections are cut) and started again
//! on the same port, to stand in for a collector outage.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::logs::v1::{
        logs_service_server::{LogsService, LogsServiceServer},
        ExportLogsServiceRequest, ExportLogsServiceResponse,
    },
    collector::metrics::v1::{
        metrics_service_server::{MetricsService, MetricsServiceServer},
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    },
    common::v1::any_value::Value,
    logs::v1::LogRecord,
};
use tokio::{runtime::Runtime, sync::oneshot};
use tonic::{Request, Response, Status};

/// A collector on a fixed loopback port, running or stopped.
pub struct Collector {
    addr: SocketAddr,
    records: Arc<Mutex<Vec<LogRecord>>>,
    requests: Arc<Mutex<u64>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    running: Option<(Runtime, oneshot::Sender<()>)>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

struct Recorder {
    records: Arc<Mutex<Vec<LogRecord>>>,
    requests: Arc<Mutex<u64>>,
}

#[tonic::async_trait]
impl LogsService for Recorder {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        let records =
            request.into_inner().resource_logs.into_iter().flat_map(|r| r.scope_logs).flat_map(|s| s.log_records);
        self.records.lock().expect("lock").extend(records);
        *self.requests.lock().expect("lock") += 1;
        Ok(Response::new(ExportLogsServiceResponse::default()))
    }
}

/// Keeps every metrics export.
struct MetricsRecorder {
    exports: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl MetricsService for MetricsRecorder {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.exports.lock().expect("lock").push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl Collector {
    /// Starts on a free loopback port.
    pub fn start() -> Collector {
        Self::start_with(None)
    }

    /// Starts with TLS: the server's certificate and key (PEM), and with a
    /// client CA (PEM) mutual TLS, refusing clients it did not sign.
    pub fn start_tls(cert: &str, key: &str, client_ca: Option<&str>) -> Collector {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(false);
        }
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<tonic::transport::ServerTlsConfig>) -> Collector {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut collector = Collector {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            records: Arc::default(),
            requests: Arc::default(),
            metrics: Arc::default(),
            running: None,
            tls,
        };
        collector.restart();
        collector
    }

    /// `http(s)://127.0.0.1:PORT`, for `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Stops serving: the listener is closed and open connections are cut,
    /// as when a collector's pod goes away. Records are kept.
    pub fn stop(&mut self) {
        if let Some((runtime, shutdown)) = self.running.take() {
            let _ = shutdown.send(());
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }

    /// Serves again on the same port (after [`Collector::stop`]).
    pub fn restart(&mut self) {
        self.stop();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        // The old listener is closed; a connection in TIME_WAIT does not
        // stop a new bind (tokio sets SO_REUSEADDR), but retry briefly.
        let listener = runtime.block_on(async {
            for _ in 0..50 {
                if let Ok(listener) = tokio::net::TcpListener::bind(self.addr).await {
                    return listener;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("cannot bind {} again", self.addr)
        });
        let service = LogsServiceServer::new(Recorder {
            records: Arc::clone(&self.records),
            requests: Arc::clone(&self.requests),
        });
        let metrics = MetricsServiceServer::new(MetricsRecorder { exports: Arc::clone(&self.metrics) });
        let (shutdown, stopped) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(tls.clone()).expect("the collector's TLS configuration");
        }
        runtime.spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = builder
                .add_service(service)
                .add_service(metrics)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
        self.running = Some((runtime, shutdown));
    }

    /// Every record received so far, in arrival order (duplicates included).
    pub fn records(&self) -> Vec<LogRecord> {
        self.records.lock().expect("lock").clone()
    }

    /// Every metrics export received so far, in arrival order.
    pub fn metrics_exports(&self) -> Vec<ExportMetricsServiceRequest> {
        self.metrics.lock().expect("lock").clone()
    }

    /// Export requests answered so far.
    pub fn requests(&self) -> u64 {
        *self.requests.lock().expect("lock")
    }

    /// The distinct `tokenwatch.sequence` values received, sorted.
    pub fn sequences(&self) -> Vec<u64> {
        let mut sequences: Vec<u64> = self.records().iter().map(sequence).collect();
        sequences.sort_unstable();
        sequences.dedup();
        sequences
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A record's `tokenwatch.sequence` attribute; panics when it has none.
pub fn sequence(record: &LogRecord) -> u64 {
    let value = record
        .attributes
        .iter()
        .find(|kv| kv.key == "tokenwatch.sequence")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref());
    match value {
        Some(Value::IntValue(n)) => u64::try_from(*n).expect("a positive sequence"),
        other => panic!("record without an integer tokenwatch.sequence ({other:?}): {record:?}"),
    }
}

/// A record's body: the alert's JSON.
pub fn body(record: &LogRecord) -> &str {
    match record.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(Value::StringValue(text)) => text,
        other => panic!("record without a string body ({other:?})"),
    }
}
