//! The agent's settings: flags, each with an environment variable, layered
//! over an optional YAML file, over defaults. Everything is checked here, so
//! the rest of the agent gets a `Config` it can trust.

pub mod layer;
pub mod values;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

pub use crate::kernel::endpoint::{Endpoint, EndpointError, DEFAULT_API_SERVER_PORT};
pub use layer::ConfigLayer;
pub use values::{CriSocket, RescanSeconds, RingBufferKib, TokenPath, ValueError};

pub use crate::deliver::stdout::StdoutFormat;

use crate::deliver::{
    grpc::{listen::DEFAULT_LISTEN, Listen, TlsFiles},
    otlp::{IdentityFiles, OtlpConfig, OtlpEndpoint},
};

/// Where kubelet mounts a pod's ServiceAccount token.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// The same path through `/run`, which `/var/run` usually links to.
pub const DEFAULT_TOKEN_PATH_RUN: &str = "/run/secrets/kubernetes.io/serviceaccount/token";
/// Where the delivery log lives by default (a hostPath in the DaemonSet, so
/// it survives restarts).
pub const DEFAULT_SPOOL_DIR: &str = "/var/lib/tokenwatch/spool";
/// Where the token usage inventory is kept by default (beside the spool).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tokenwatch";
/// Default bound of the delivery log.
pub const DEFAULT_SPOOL_MAX_MIB: u64 = 256;
/// Default seconds over which identical alerts are merged.
pub const DEFAULT_DEDUP_WINDOW_SECONDS: u64 = 60;
/// Default seconds between scans for token files.
pub const DEFAULT_RESCAN_INTERVAL_SECONDS: u64 = 2;

/// The settings the agent runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Run without the Kubernetes API (also what happens when no cluster
    /// configuration is found).
    pub standalone: bool,
    /// Token paths to resolve in every mount namespace: the defaults, then
    /// the user's.
    pub token_paths: Vec<PathBuf>,
    /// API-server endpoints: the user's, then `KUBERNETES_SERVICE_HOST`.
    pub api_servers: Vec<Endpoint>,
    /// Alert format on stdout.
    pub stdout: StdoutFormat,
    /// Time between scans of the node for token files.
    pub rescan_interval: Duration,
    /// Node name put in every alert.
    pub node_name: String,
    /// Where [`Config::node_name`] came from, for the warning when it
    /// matches no pod.
    pub node_name_source: &'static str,
    /// Ring buffer size in bytes (a power of two, at least one page).
    pub ring_buffer_bytes: u32,
    /// The CRI socket; `None` detects the usual ones.
    pub cri_socket: Option<PathBuf>,
    /// A kubeconfig; `None` tries in-cluster config, then `$KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// The detection policy file; `None` is the shipped default policy.
    pub policy: Option<PathBuf>,
    /// Window over which identical alerts are merged; zero turns it off.
    pub dedup_window: Duration,
    /// Where the gRPC alert stream listens.
    pub grpc_listen: Listen,
    /// TLS for it, when configured.
    pub grpc_tls: Option<TlsFiles>,
    /// The delivery log's directory.
    pub spool_dir: PathBuf,
    /// The delivery log's size bound in bytes.
    pub spool_max_bytes: u64,
    /// Where the token usage inventory is kept across restarts.
    pub state_dir: PathBuf,
    /// Where to export alerts as OTLP logs; `None` turns the exporter off.
    pub otlp: Option<OtlpConfig>,
    /// Where the metrics and probe endpoints listen; `None`: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Whether the token inventory is exported as metrics (`/metrics` and
    /// OTLP): it names workloads and binaries, and `/metrics` is open.
    pub metrics_inventory: bool,
    /// The host's /proc (the node's processes, their roots and the agent's
    /// own pid as the kernel knows it).
    pub host_proc: PathBuf,
}

/// Why the settings were refused. Each names the source and the value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The YAML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML file is not valid for this schema.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the problem (0 if unknown).
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A gRPC listener on a non-loopback address without mutual TLS: anyone
    /// who reaches the port would read the alerts and the inventory.
    #[error(
        "--grpc-listen {0} is reachable from other machines: give --grpc-tls-cert, --grpc-tls-key and \
         --grpc-tls-client-ca (mutual TLS: only clients with a certificate that CA signed are served), \
         or --grpc-allow-insecure-remote to serve unauthenticated clients"
    )]
    InsecureRemote(Listen),
    /// Half a TLS configuration.
    #[error("--grpc-tls-cert and --grpc-tls-key go together (and --grpc-tls-client-ca needs both)")]
    PartialTls,
    /// TLS asked for on a unix socket, whose file mode already says who
    /// may connect.
    #[error("--grpc-listen {0}: TLS is for TCP listeners; a unix socket is the agent's alone (mode 0600)")]
    TlsOnUnix(Listen),
    /// A plaintext OTLP endpoint off this machine.
    #[error(
        "--otlp-endpoint {0} sends alerts in plaintext over the network: use https:// (with --otlp-ca as needed), \
         or --otlp-allow-insecure-remote to accept plaintext"
    )]
    OtlpInsecureRemote(OtlpEndpoint),
    /// Half a client identity for the collector.
    #[error("--otlp-cert and --otlp-key go together")]
    OtlpPartialIdentity,
    /// TLS files without a TLS endpoint (or without any endpoint).
    #[error("--otlp-ca, --otlp-cert and --otlp-key need an https:// --otlp-endpoint")]
    OtlpTlsWithoutHttps,
    /// `KUBERNETES_SERVICE_HOST`/`_PORT` do not make an endpoint.
    #[error("KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT ({host}:{port}): {source}")]
    ServiceEnv {
        /// The host variable.
        host: String,
        /// The port variable.
        port: String,
        /// Why.
        source: EndpointError,
    },
}

/// Reads a YAML config file into a layer; errors carry file:line:column.
pub fn read_file(path: &Path) -> Result<ConfigLayer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse_yaml(path, &text)
}

/// Parses YAML text as a layer; `path` only names the source in errors.
pub fn parse_yaml(path: &Path, text: &str) -> Result<ConfigLayer, ConfigError> {
    if text.trim().is_empty() {
        return Ok(ConfigLayer::default());
    }
    yaml_serde::from_str(text).map_err(|error| {
        let message = strip_location(&error.to_string());
        let (line, column) = error.location().map_or((0, 0), |l| (l.line(), l.column()));
        let (line, column) = locate_value(text, &message, line).unwrap_or((line, column));
        ConfigError::Parse { path: path.to_owned(), line, column, message }
    })
}

/// yaml_serde places an error raised while checking one element of a list at
/// the list's start. The agent's own checks quote the bad value in backticks,
/// so point at the first line from there on that holds it.
fn locate_value(text: &str, message: &str, from_line: usize) -> Option<(usize, usize)> {
    let value = message.split('`').nth(1).filter(|v| !v.is_empty())?;
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .find_map(|(index, line)| line.find(value).map(|column| (index + 1, column + 1)))
}

/// yaml_serde appends " at line L column C"; the error says it up front.
fn strip_location(message: &str) -> String {
    message.find(" at line ").map_or(message, |i| &message[..i]).to_owned()
}

/// The environment a pod gives a process: where the API server is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceEnv {
    /// `KUBERNETES_SERVICE_HOST`.
    pub host: Option<String>,
    /// `KUBERNETES_SERVICE_PORT`.
    pub port: Option<String>,
    /// `TOKENWATCH_NODE_NAME` (clap reads it for `--node-name`; kept to
    /// say where the name came from).
    pub tokenwatch_node_name: Option<String>,
    /// `NODE_NAME`: the downward-API variable most DaemonSets set.
    pub node_name: Option<String>,
}

impl ServiceEnv {
    /// Reads the two variables from the process environment.
    pub fn from_process() -> Self {
        let read = |name| std::env::var(name).ok().filter(|v: &String| !v.trim().is_empty());
        ServiceEnv {
            host: read("KUBERNETES_SERVICE_HOST"),
            port: read("KUBERNETES_SERVICE_PORT"),
            tokenwatch_node_name: read("TOKENWATCH_NODE_NAME"),
            node_name: read("NODE_NAME"),
        }
    }

    fn endpoint(&self) -> Result<Option<Endpoint>, ConfigError> {
        let Some(host) = &self.host else { return Ok(None) };
        let port_text = self.port.clone().unwrap_or_else(|| DEFAULT_API_SERVER_PORT.to_string());
        let error = |source| ConfigError::ServiceEnv { host: host.clone(), port: port_text.clone(), source };
        let ip: IpAddr = host.trim().parse().map_err(|_| error(EndpointError::NotAnAddress(host.clone())))?;
        let port = match port_text.trim().parse::<u16>() {
            Ok(port) if port != 0 => port,
            _ => return Err(error(EndpointError::BadPort(port_text.clone()))),
        };
        Ok(Some(Endpoint(SocketAddr::new(ip, port))))
    }
}

impl Config {
    /// Builds the settings from the merged layers and the pod environment.
    pub fn resolve(layer: ConfigLayer, service_env: &ServiceEnv, hostname: &str) -> Result<Config, ConfigError> {
        let otlp = otlp(&layer)?;
        let mut token_paths = vec![PathBuf::from(DEFAULT_TOKEN_PATH), PathBuf::from(DEFAULT_TOKEN_PATH_RUN)];
        for TokenPath(path) in layer.token_paths.unwrap_or_default() {
            if !token_paths.contains(&path) {
                token_paths.push(path);
            }
        }
        let mut api_servers = Vec::new();
        for endpoint in layer.api_servers.unwrap_or_default().into_iter().chain(service_env.endpoint()?) {
            if !api_servers.contains(&endpoint) {
                api_servers.push(endpoint);
            }
        }
        let grpc_listen = match layer.grpc_listen {
            Some(listen) => listen,
            None => DEFAULT_LISTEN.parse().map_err(|_| ConfigError::PartialTls)?,
        };
        let grpc_tls = match (layer.grpc_tls_cert, layer.grpc_tls_key, layer.grpc_tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(TlsFiles { cert, key, client_ca }),
            (None, None, None) => None,
            _ => return Err(ConfigError::PartialTls),
        };
        if grpc_tls.is_some() && matches!(grpc_listen, Listen::Unix(_)) {
            return Err(ConfigError::TlsOnUnix(grpc_listen));
        }
        let mutual = grpc_tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
        if !mutual && !grpc_listen.is_local() && !layer.grpc_allow_insecure_remote {
            return Err(ConfigError::InsecureRemote(grpc_listen));
        }
        let rescan = layer.rescan_interval_seconds.map_or(DEFAULT_RESCAN_INTERVAL_SECONDS, RescanSeconds::get);
        let (node_name, node_name_source) = match layer.node_name.filter(|n| !n.is_empty()) {
            Some(name) if service_env.tokenwatch_node_name.as_ref() == Some(&name) => (name, "TOKENWATCH_NODE_NAME"),
            // The flags and the file are merged by now.
            Some(name) => (name, "--node-name or the config file"),
            None => match service_env.node_name.clone() {
                Some(name) => (name, "NODE_NAME"),
                None => (hostname.to_owned(), "the host name"),
            },
        };
        Ok(Config {
            standalone: layer.standalone,
            token_paths,
            api_servers,
            stdout: layer.stdout.unwrap_or_default(),
            rescan_interval: Duration::from_secs(rescan),
            node_name,
            node_name_source,
            ring_buffer_bytes: layer.ring_buffer_kib.unwrap_or(RingBufferKib::DEFAULT).bytes(),
            cri_socket: layer.cri_socket.map(|socket| socket.0),
            kubeconfig: layer.kubeconfig,
            policy: layer.policy,
            dedup_window: Duration::from_secs(layer.dedup_window_seconds.unwrap_or(DEFAULT_DEDUP_WINDOW_SECONDS)),
            grpc_listen,
            grpc_tls,
            spool_dir: layer.spool_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_SPOOL_DIR)),
            spool_max_bytes: layer.spool_max_mib.unwrap_or(DEFAULT_SPOOL_MAX_MIB).saturating_mul(1 << 20),
            state_dir: layer.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            otlp,
            metrics_listen: layer.metrics_listen,
            metrics_inventory: layer.metrics_inventory,
            host_proc: layer.host_proc.unwrap_or_else(|| PathBuf::from("/proc")),
        })
    }
}

/// The exporter's settings, checked the way `--grpc-listen` is: TLS files
/// only with `https://`, certificate and key together, and plaintext only on
/// loopback unless explicitly allowed.
fn otlp(layer: &ConfigLayer) -> Result<Option<OtlpConfig>, ConfigError> {
    let identity = match (&layer.otlp_cert, &layer.otlp_key) {
        (Some(cert), Some(key)) => Some(IdentityFiles { cert: cert.clone(), key: key.clone() }),
        (None, None) => None,
        _ => return Err(ConfigError::OtlpPartialIdentity),
    };
    let tls_files = identity.is_some() || layer.otlp_ca.is_some();
    let Some(endpoint) = &layer.otlp_endpoint else {
        return if tls_files { Err(ConfigError::OtlpTlsWithoutHttps) } else { Ok(None) };
    };
    if tls_files && !endpoint.is_tls() {
        return Err(ConfigError::OtlpTlsWithoutHttps);
    }
    if !endpoint.is_tls() && !endpoint.is_local() && !layer.otlp_allow_insecure_remote {
        return Err(ConfigError::OtlpInsecureRemote(endpoint.clone()));
    }
    Ok(Some(OtlpConfig { endpoint: endpoint.clone(), ca: layer.otlp_ca.clone(), identity }))
}

#[cfg(test)]
mod tests;
