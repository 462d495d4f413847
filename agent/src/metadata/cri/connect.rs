//! Finding and dialling the runtime's CRI socket (a unix socket, so no TLS:
//! it never leaves the node, and the kernel checks who may open it).

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Where runtimes put their CRI socket, in the order they are tried.
pub const DEFAULT_SOCKETS: &[&str] = &[
    "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock",
    "/run/crio/crio.sock",
    "/var/run/crio/crio.sock",
    "/run/k3s/containerd/containerd.sock",
];

/// Why the runtime could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum CriError {
    /// No socket was given and none of the usual ones exists.
    #[error("no CRI socket found (tried {tried}); give one with --cri-socket")]
    NoSocket {
        /// The paths tried.
        tried: String,
    },
    /// The channel could not be built.
    #[error("CRI socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: tonic::transport::Error,
    },
    /// A CRI call failed.
    #[error("CRI {call}: {status}")]
    Call {
        /// The RPC.
        call: &'static str,
        /// The runtime's answer.
        status: Box<tonic::Status>,
    },
}

/// The first of `candidates` that exists as a socket.
pub fn detect_socket(candidates: &[&str]) -> Result<PathBuf, CriError> {
    use std::os::unix::fs::FileTypeExt;
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket()))
        .ok_or_else(|| CriError::NoSocket { tried: candidates.join(", ") })
}

/// A CRI runtime client on the unix socket at `path`. The connection is
/// made lazily and re-made after a failure, so a runtime that restarts is
/// picked up again.
pub fn connect(path: &Path) -> Result<RuntimeServiceClient<Channel>, CriError> {
    channel(path).map(RuntimeServiceClient::new)
}

/// A lazy gRPC channel over the unix socket at `path`, for any CRI service
/// (runtime or image). Must be called inside a tokio runtime.
pub fn channel(path: &Path) -> Result<Channel, CriError> {
    let socket = path.to_owned();
    Ok(Endpoint::try_from("http://[::1]:0")
        .map_err(|source| CriError::Connect { path: path.to_owned(), source })?
        .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        })))
}
