//! The connection to an agent's gRPC server, shared by the commands that
//! talk to agents (`alerts`, `inventory`, `advise`): `unix:PATH` or
//! `HOST:PORT`, plaintext or TLS, with a client certificate for mutual TLS.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use crate::deliver::grpc::Listen;

/// TLS settings of a client.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// CA bundle (PEM) to verify the agent's certificate: turns on TLS.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --key.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Name to expect in the agent's certificate [default: the host].
    #[arg(long)]
    pub server_name: Option<String>,
}

/// Why no connection was made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// A TLS file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The connection failed.
    #[error("connecting to {server}: {source}")]
    Connect {
        /// Where.
        server: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

/// A channel to the agent at `server`.
pub async fn channel(server: &Listen, tls: &TlsArgs) -> Result<Channel, ConnectError> {
    let name = server.to_string();
    let connect_error = |source| ConnectError::Connect { server: name.clone(), source };
    match server {
        Listen::Unix(path) => {
            let path = path.clone();
            Endpoint::from_static("http://[::1]:0")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
                }))
                .await
                .map_err(connect_error)
        }
        Listen::Tcp(addr) => {
            let scheme = if tls.ca.is_some() { "https" } else { "http" };
            let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(connect_error)?;
            if let Some(ca) = &tls.ca {
                let read = |path: &PathBuf| {
                    std::fs::read(path).map_err(|source| ConnectError::Read { path: path.clone(), source })
                };
                let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
                if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                    config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
                }
                if let Some(name) = &tls.server_name {
                    config = config.domain_name(name.clone());
                }
                endpoint = endpoint.tls_config(config).map_err(connect_error)?;
            }
            endpoint.connect().await.map_err(connect_error)
        }
    }
}
