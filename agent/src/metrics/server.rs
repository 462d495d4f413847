//! The HTTP listener for Prometheus and kubelet's probes: `GET /metrics`,
//! `/healthz` (the agent's tasks are running) and `/readyz` (hooks attached
//! and the gRPC server serving). Plain HTTP: it serves counts, never alert
//! content or tokens, and the shipped NetworkPolicy limits who reaches it.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::{global, render};

/// Connections served at once; more wait in the kernel's backlog, so a
/// flood of scrapers cannot take the agent's memory.
const MAX_CONNECTIONS: usize = 32;
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
    loop {
        let permit = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            permit = Arc::clone(&slots).acquire_owned() => permit.expect("the semaphore is never closed"),
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
        let token = cancel.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service_fn(respond));
            tokio::select! {
                () = token.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

/// Answers one request.
async fn respond(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let metrics = global();
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", render(metrics)),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        // Ready with hooks missing is still ready (the agent runs with the
        // rest), but the body names what this kernel goes without.
        (&Method::GET, "/readyz") if metrics.ready() => {
            (StatusCode::OK, "text/plain", format!("ready\n{}", metrics.hooks.degraded_lines()))
        }
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("not ready: hooks or gRPC not up yet\n{}", metrics.hooks.degraded_lines()),
        ),
        (&Method::GET, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n".to_owned()),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    Ok(response)
}
