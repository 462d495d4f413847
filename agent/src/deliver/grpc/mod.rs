//! The gRPC server: `tokenwatch.v1.AlertService` for subscribers, plus
//! `grpc.health.v1` and server reflection, both `v1` and `v1alpha` (the
//! official Python client's reflection database, older grpcurl builds,
//! Postman and Evans ask only `v1alpha`), so stock tools can discover and
//! probe it; `tokenwatch.v1.InventoryService`
//! (the token usage inventory) beside it. TLS and mutual TLS with rustls.

pub mod filter;
pub mod inventory;
pub mod listen;
pub mod service;
pub mod tls;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokenwatch_proto::v1::{
    alert_service_server::AlertServiceServer, inventory_service_server::InventoryServiceServer,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

pub use listen::{Listen, ListenError};

use crate::{deliver::spool::Spool, inventory::Inventory};

/// PEM files for the server's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// CA bundle for client certificates: set, mutual TLS is required and a
    /// client without a certificate it signed gets nothing.
    pub client_ca: Option<PathBuf>,
}

/// Why the server could not run.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The listener could not be opened.
    #[error("listening on {listen}: {source}")]
    Listen {
        /// Where.
        listen: Listen,
        /// Why.
        source: std::io::Error,
    },
    /// A TLS file holds no usable certificate, key or CA.
    #[error("TLS: {path}: {why}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// tonic refused the configuration or the server failed.
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    /// Reflection could not be built (a bug in the descriptors).
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The largest request a client may send: a subscription with every
/// filter list full is far smaller; anything bigger is refused
/// (OUT_OF_RANGE, naming the limit) before it is decoded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How long a unary call (`GetInventory`, health) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 pings on an idle connection, and how long the answer may take:
/// a peer gone without closing (a node lost, a NAT forgetting the flow)
/// frees its streams within a minute. (HTTP/2's own pings, which work on
/// the connections `tls` accepts too; tonic's TCP keepalive would not.)
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams one connection may hold open at once.
const MAX_STREAMS_PER_CONNECTION: u32 = 16;

/// A listener bound and not yet serving. The daemon binds before it
/// attaches the hooks, so once it logs "hooks attached" a subscriber's
/// connection is accepted (it waits in the backlog the moment before the
/// server turns).
pub enum Bound {
    /// A TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A unix socket (a stale file at its path replaced).
    Unix(tokio::net::UnixListener),
}

/// Binds `listen`.
pub async fn bind(listen: &Listen) -> Result<Bound, GrpcError> {
    let failed = |source| GrpcError::Listen { listen: listen.clone(), source };
    let bound = match listen {
        Listen::Tcp(addr) => Bound::Tcp(tokio::net::TcpListener::bind(addr).await.map_err(failed)?),
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            Bound::Unix(tokio::net::UnixListener::bind(path).map_err(failed)?)
        }
    };
    tracing::info!(%listen, "gRPC alert stream listening");
    Ok(bound)
}

/// Serves on `bound` until `cancel`, then drains gracefully. With `tls`, each
/// connection is served with the TLS files in force when it arrives
/// (reloaded when they change or `reload` is notified: [`tls`]); TLS is
/// for TCP only (the configuration refuses it on a unix socket).
pub async fn serve(
    bound: Bound,
    tls: Option<TlsFiles>,
    reload: Arc<Notify>,
    spool: Spool,
    inventory: Inventory,
    cancel: CancellationToken,
) -> Result<(), GrpcError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<AlertServiceServer<service::AlertStream>>().await;
    health_reporter.set_serving::<InventoryServiceServer<inventory::InventoryServer>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenwatch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(tokenwatch_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let mut builder = Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION));
    let reloading = tls.clone().map(tls::Reloading::new).transpose()?;
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(
            AlertServiceServer::new(service::AlertStream::new(spool, cancel.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            InventoryServiceServer::new(inventory::InventoryServer::new(inventory))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    tracing::info!(
        tls = tls.is_some(),
        mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        "gRPC alert stream serving"
    );
    let shutdown = cancel.clone();
    serving(true);
    match (bound, reloading) {
        (Bound::Tcp(listener), Some(reloading)) => {
            let handshaken = tls::accept(listener, reloading, reload, cancel.clone());
            let incoming = tokio_stream::wrappers::ReceiverStream::new(handshaken);
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
        (Bound::Tcp(listener), None) => {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
        // The configuration refuses TLS on a unix socket.
        (Bound::Unix(listener), _) => {
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
    }
    serving(false);
    Ok(())
}

/// Tells the probes (`/readyz`) whether the listener is bound and serving;
/// the health service says SERVING from the same moment.
fn serving(up: bool) {
    crate::metrics::global().set_grpc_serving(up);
}
