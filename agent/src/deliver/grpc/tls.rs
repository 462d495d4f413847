//! The gRPC server's TLS, reloaded without a restart. cert-manager renews
//! the Secret's certificate (and kubelet swaps the mounted files) long
//! before it expires; an agent that read them once would serve an expired
//! certificate until restarted. Each new connection gets the configuration
//! in force when it arrives; it is rebuilt when the files change (looked at
//! every [`CHECK_INTERVAL`]) or on SIGHUP, and a rebuild that fails (a
//! half-written file) keeps the one in force and says why: tried again at
//! every look, said again only when the files or the error change, or on
//! SIGHUP. Connections already open keep the configuration they were made
//! with.
//!
//! Handshakes run each in a task of its own, at most [`MAX_HANDSHAKES`] at
//! once and each within [`HANDSHAKE_TIMEOUT`], so a client that connects
//! and says nothing holds up no one.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Notify, Semaphore},
};
use tokio_rustls::{
    rustls::{self, server::WebPkiClientVerifier, RootCertStore, ServerConfig},
    server::TlsStream,
    TlsAcceptor,
};
use tokio_util::sync::CancellationToken;

use super::{GrpcError, TlsFiles};

/// How often the files are looked at for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// TLS handshakes in progress at once; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 64;
/// A client must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed accept, doubling up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_FIRST: Duration = Duration::from_millis(100);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// The server configuration built from `files`.
pub fn load(files: &TlsFiles) -> Result<ServerConfig, GrpcError> {
    let read = |path: &PathBuf| fs::read(path).map_err(|source| GrpcError::Read { path: path.clone(), source });
    let bad = |path: &Path, why: String| GrpcError::Tls { path: path.to_owned(), why };
    let cert_pem = read(&files.cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(&files.cert, "no certificate in it".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?).map_err(|e| bad(&files.key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(&files.cert, e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&read(ca)?) {
                roots.add(cert.map_err(|e| bad(ca, e.to_string()))?).map_err(|e| bad(ca, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| bad(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| bad(&files.key, e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// What a look at the files did.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are those of the configuration in force: nothing done.
    Unchanged,
    /// A new configuration is in force.
    Renewed,
    /// The files changed (or SIGHUP asked) but cannot be used; the
    /// configuration in force stays, and the error was logged.
    Refused,
    /// Tried again with the same files and the same error as the last
    /// refusal (a half-written file, a read that failed): the
    /// configuration in force stays, and nothing more is logged.
    StillRefused,
}

/// One file's identity for change detection: (inode, mtime s, mtime ns,
/// size); `None` while it cannot be read.
type Stamp = Option<(u64, i64, i64, u64)>;

/// The configuration in force, and how to renew it.
pub struct Reloading {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The files of the configuration in force, and of the last refusal
    /// with its error: a refused set is tried again at every look (the
    /// cause may pass without the files changing, a read that ran out of
    /// descriptors say), but logged again only when it changes.
    stamps: Mutex<Stamps>,
}

/// What [`Reloading::stamps`] holds.
struct Stamps {
    in_force: Vec<Stamp>,
    refused: Option<(Vec<Stamp>, String)>,
}

impl Reloading {
    /// Loads `files` (an error here stops the server: there is nothing to serve with).
    pub fn new(files: TlsFiles) -> Result<Arc<Self>, GrpcError> {
        // Taken before the files are read, so a change while they are is
        // seen at the next look.
        let in_force = stamps(&files);
        let config = load(&files)?;
        Ok(Arc::new(Reloading {
            files,
            current: RwLock::new(Arc::new(config)),
            stamps: Mutex::new(Stamps { in_force, refused: None }),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(&self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner)))
    }

    /// Rebuilds the configuration if `forced` or a file differs from those
    /// in force; a failed rebuild keeps the configuration in force, and is
    /// logged when it is new (other files, another error) or `forced`.
    pub fn reload(&self, forced: bool) -> Reload {
        let now = stamps(&self.files);
        let mut state = self.stamps.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !forced && state.in_force == now {
            return Reload::Unchanged;
        }
        match load(&self.files) {
            Ok(config) => {
                *self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config);
                *state = Stamps { in_force: now, refused: None };
                tracing::info!(cert = %self.files.cert.display(), "gRPC TLS certificate and keys reloaded");
                Reload::Renewed
            }
            Err(error) => {
                let refusal = (now, error.to_string());
                if !forced && state.refused.as_ref() == Some(&refusal) {
                    return Reload::StillRefused;
                }
                tracing::error!(%error, "gRPC TLS files changed but cannot be used; serving with the ones in force");
                state.refused = Some(refusal);
                Reload::Refused
            }
        }
    }
}

/// Each file's [`Stamp`]: kubelet swaps a Secret's files by renaming, so a
/// new certificate is a new inode; a file rewritten in place changes its
/// mtime.
fn stamps(files: &TlsFiles) -> Vec<Stamp> {
    [Some(&files.cert), Some(&files.key), files.client_ca.as_ref()]
        .into_iter()
        .flatten()
        .map(|path| fs::metadata(path).ok().map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.size())))
        .collect()
}

/// Accepts on `listener` and hands on each connection once its handshake,
/// with the configuration in force, succeeded; until `cancel`. Also
/// reloads the configuration every [`CHECK_INTERVAL`] and when `reload`
/// is notified (SIGHUP).
pub fn accept(
    listener: TcpListener,
    tls: Arc<Reloading>,
    reload: Arc<Notify>,
    cancel: CancellationToken,
) -> mpsc::Receiver<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = mpsc::channel(MAX_HANDSHAKES);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let (renewed, token) = (Arc::clone(&tls), cancel.clone());
    tokio::spawn(async move {
        let mut check = tokio::time::interval(CHECK_INTERVAL);
        loop {
            // The files are read on the blocking pool; a slow disk holds up no handshake.
            let forced = tokio::select! {
                () = token.cancelled() => return,
                _ = check.tick() => false,
                () = reload.notified() => true,
            };
            let renewed = Arc::clone(&renewed);
            let _ = tokio::task::spawn_blocking(move || renewed.reload(forced)).await;
        }
    });
    tokio::spawn(async move {
        let mut pause = ACCEPT_PAUSE_FIRST;
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => return,
                permit = Arc::clone(&handshakes).acquire_owned() => permit.expect("the semaphore is never closed"),
            };
            let stream = tokio::select! {
                () = cancel.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        // Out of descriptors, say: wait before the next try
                        // rather than spin.
                        tracing::warn!(%error, retry_in = ?pause, "gRPC: accept failed");
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(ACCEPT_PAUSE_MAX);
                        continue;
                    }
                },
            };
            pause = ACCEPT_PAUSE_FIRST;
            // What tonic sets on the connections it accepts itself.
            let _ = stream.set_nodelay(true);
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%error, "gRPC: TLS handshake refused"),
                    Err(_) => tracing::debug!("gRPC: TLS handshake timed out"),
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rcgen::{generate_simple_self_signed, CertifiedKey};

    use super::*;

    /// Writes `text` to `path` as kubelet swaps a Secret's file: a new
    /// file renamed over the old.
    fn swap(path: &Path, text: &str) {
        let fresh = path.with_extension("new");
        fs::write(&fresh, text).expect("write");
        fs::rename(&fresh, path).expect("rename");
    }

    #[test]
    fn unusable_files_are_retried_at_every_look_but_said_once_for_each_cause_and_a_good_set_renews() {
        let dir = tempfile::tempdir().expect("tempdir");
        let CertifiedKey { cert, signing_key } =
            generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let files = TlsFiles { cert: dir.path().join("tls.crt"), key: dir.path().join("tls.key"), client_ca: None };
        swap(&files.cert, &cert.pem());
        swap(&files.key, &signing_key.serialize_pem());
        let tls = Reloading::new(files.clone()).expect("a good set loads");
        assert_eq!(tls.reload(false), Reload::Unchanged);

        swap(&files.key, "-----BEGIN PRIVATE KEY-----\nhalf-writ");
        assert_eq!(tls.reload(false), Reload::Refused, "a changed, unusable key is refused, and said");
        assert_eq!(tls.reload(false), Reload::StillRefused, "tried again at the next look, not said again");
        assert_eq!(tls.reload(true), Reload::Refused, "SIGHUP says it again");
        fs::remove_file(&files.key).expect("remove the key");
        assert_eq!(tls.reload(false), Reload::Refused, "another cause is said");

        swap(&files.key, &signing_key.serialize_pem());
        assert_eq!(tls.reload(false), Reload::Renewed, "the mended key is taken at the next look");
    }
}
