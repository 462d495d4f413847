//! The HTTP listener for Prometheus and kubelet's probes: `GET /metrics`,
//! `/healthz` (the event pipeline is turning) and `/readyz` (hooks attached
//! and the gRPC server serving). Plain HTTP: it serves counts, never alert
//! content or tokens, and the shipped NetworkPolicy limits who reaches it.
//! Connections beyond [`MAX_CONNECTIONS`] get one of [`PROBE_RESERVE`]
//! slots kept for the probes: there `/healthz` and `/readyz` are answered
//! and anything else is told the listener is busy, one request a
//! connection, so scrapers holding every connection cannot make kubelet
//! restart a healthy agent.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::{global, render, CONTENT_TYPE};

/// Connections served at once; more wait in the kernel's backlog, so a
/// flood of scrapers cannot take the agent's memory.
const MAX_CONNECTIONS: usize = 32;
/// Connections beyond [`MAX_CONNECTIONS`] served for the probes alone.
const PROBE_RESERVE: usize = 8;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the metrics listener could not run.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("metrics: cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// Serves until `cancel` fires.
pub async fn serve(addr: SocketAddr, cancel: CancellationToken) -> Result<(), MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %local, "metrics and health endpoints listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let reserve = Arc::new(Semaphore::new(PROBE_RESERVE));
    loop {
        // A general slot if one is free, else a probe slot; with neither,
        // the connection waits in the kernel's backlog.
        let (permit, probes_only) = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => (permit.expect("the semaphore is never closed"), false),
            permit = Arc::clone(&reserve).acquire_owned() => (permit.expect("the semaphore is never closed"), true),
        };
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accept failed");
                    continue;
                }
            },
        };
        // A general slot freed while this one waited: take it instead, so
        // a scrape is not told "busy" for nothing.
        let (permit, probes_only) = match probes_only.then(|| Arc::clone(&slots).try_acquire_owned().ok()).flatten() {
            Some(general) => (general, false),
            None => (permit, probes_only),
        };
        let token = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(!probes_only)
                .serve_connection(TokioIo::new(stream), service_fn(move |request| respond(request, probes_only)));
            tokio::select! {
                () = token.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Answers one request; on a probe slot (`probes_only`), only the probes.
async fn respond(request: Request<Incoming>, probes_only: bool) -> Result<Response<Full<Bytes>>, Infallible> {
    let (method, path) = (request.method(), request.uri().path());
    let probe = method == Method::GET && matches!(path, "/healthz" | "/readyz");
    let (status, content_type, body) = if probes_only && !probe {
        let busy = format!("busy: {MAX_CONNECTIONS} connections are open; only /healthz and /readyz are served\n");
        (StatusCode::SERVICE_UNAVAILABLE, "text/plain", busy)
    } else {
        respond_to(method, path)
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}

/// Status, content type and body for `method` on `path`.
fn respond_to(method: &Method, path: &str) -> (StatusCode, &'static str, String) {
    let metrics = global();
    match (method, path) {
        (&Method::GET, "/metrics") => match render(metrics) {
            Ok(text) => (StatusCode::OK, CONTENT_TYPE, text),
            Err(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "a metrics source failed to write\n".to_owned())
            }
        },
        (&Method::GET, "/healthz") => match metrics.liveness() {
            Ok(body) => (StatusCode::OK, "text/plain", body),
            Err(body) => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", body),
        },
        // Ready with hooks missing is still ready (the agent runs with the
        // rest), but the body names what this kernel goes without.
        (&Method::GET, "/readyz") if metrics.ready() => {
            (StatusCode::OK, "text/plain", format!("ready\n{}", metrics.ready_detail()))
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: hooks or gRPC not up yet\n{}", metrics.ready_detail()),
        ),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".to_owned()),
    }
}
