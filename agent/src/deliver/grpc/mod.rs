//! The gRPC server: `tokenwatch.v1.AlertService` for subscribers, plus
//! `grpc.health.v1` and server reflection so stock tools (grpcurl, load
//! balancers) can discover and probe it; `tokenwatch.v1.InventoryService`
//! (the token usage inventory) beside it. TLS and mutual TLS with rustls.

pub mod filter;
pub mod inventory;
pub mod listen;
pub mod service;

use std::path::PathBuf;

use tokenwatch_proto::v1::{
    alert_service_server::AlertServiceServer, inventory_service_server::InventoryServiceServer,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

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

/// Serves until `cancel`, then drains gracefully.
pub async fn serve(
    listen: Listen,
    tls: Option<TlsFiles>,
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
    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls_config(tls)?)?;
    }
    let router = builder
        .add_service(health)
        .add_service(reflection)
        .add_service(
            AlertServiceServer::new(service::AlertStream::new(spool, cancel.clone()))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        )
        .add_service(
            InventoryServiceServer::new(inventory::InventoryServer::new(inventory))
                .max_decoding_message_size(MAX_REQUEST_BYTES),
        );
    tracing::info!(%listen, tls = tls.is_some(), mtls = tls.as_ref().is_some_and(|t| t.client_ca.is_some()), "gRPC alert stream listening");
    let shutdown = cancel.clone();
    match &listen {
        Listen::Tcp(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| GrpcError::Listen { listen: listen.clone(), source })?;
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            serving(true);
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|source| GrpcError::Listen { listen: listen.clone(), source })?;
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            serving(true);
            router.serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned()).await?;
        }
    }
    serving(false);
    Ok(())
}

/// Tells the probes (`/readyz`) whether the listener is bound and serving;
/// the health service says SERVING from the same moment.
fn serving(up: bool) {
    crate::metrics::global().grpc_serving.store(up, std::sync::atomic::Ordering::Relaxed);
}

fn tls_config(tls: &TlsFiles) -> Result<ServerTlsConfig, GrpcError> {
    let read = |path: &PathBuf| std::fs::read(path).map_err(|source| GrpcError::Read { path: path.clone(), source });
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
    if let Some(ca) = &tls.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read(ca)?)).client_auth_optional(false);
    }
    Ok(config)
}
