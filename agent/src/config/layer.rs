//! The agent's settings, declared once: each field is a flag (clap), its
//! environment variable (clap's `env`), and a key of the YAML file (serde,
//! the flag's name). Every field is optional (a bool is off) so layers
//! stack: [`ConfigLayer::over`] takes each setting from the first layer
//! that names it, flag > environment > file; [`super::Config::resolve`]
//! then fills the defaults and checks the whole.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    super::deliver::{grpc::Listen, otlp::OtlpEndpoint, stdout::StdoutFormat},
    super::kernel::endpoint::Endpoint,
    values::{CriSocket, RescanSeconds, RingBufferKib, TokenPath},
};

/// How a setting's value stacks over a lower layer's.
pub trait Layered {
    /// `self` if it names the setting, else `lower`.
    #[must_use]
    fn over(self, lower: Self) -> Self;
}

impl<T> Layered for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// A switch is named only when on: a lower layer may turn it on, no layer
/// turns it off.
impl Layered for bool {
    fn over(self, lower: Self) -> Self {
        self || lower
    }
}

/// Declares the settings struct and its [`ConfigLayer::over`] from one list
/// of fields, so a setting is written once.
macro_rules! settings {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        pub struct $name {
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// Settings of `self`, with those it leaves unset taken from `lower`.
            #[must_use]
            pub fn over(self, lower: $name) -> $name {
                $name { $($field: Layered::over(self.$field, lower.$field),)* }
            }
        }
    };
}

settings! {
    /// The settings as one source gave them: flags with their variables
    /// (clap), or the YAML file (serde; keys are the flag names).
    #[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, clap::Args)]
    #[serde(rename_all = "kebab-case", deny_unknown_fields)]
    pub struct ConfigLayer {
        /// Run without the Kubernetes API: watch the default token paths and the
        /// addresses given here. Also what happens when no cluster is found.
        #[serde(default)]
        #[arg(long, env = "TOKENWATCH_STANDALONE")]
        pub standalone: bool,

        /// Another token file to watch, resolved in every mount namespace
        /// (repeatable; the default ServiceAccount paths are always watched).
        #[arg(long = "token-path", env = "TOKENWATCH_TOKEN_PATHS", value_name = "PATH", value_delimiter = ',')]
        pub token_paths: Option<Vec<TokenPath>>,

        /// An API-server address to watch: ADDR, ADDR:PORT or [V6]:PORT; port
        /// 443 when none is given (repeatable).
        #[arg(long = "api-server", env = "TOKENWATCH_API_SERVERS", value_name = "ADDR[:PORT]", value_delimiter = ',')]
        pub api_servers: Option<Vec<Endpoint>>,

        /// How alerts are printed on stdout [default: json].
        #[arg(long, env = "TOKENWATCH_STDOUT", value_enum)]
        pub stdout: Option<StdoutFormat>,

        /// Seconds between scans of the node's mount namespaces for token files
        /// [default: 2].
        #[arg(long, env = "TOKENWATCH_RESCAN_INTERVAL_SECONDS", value_name = "SECONDS")]
        pub rescan_interval_seconds: Option<RescanSeconds>,

        /// Node name for alerts [default: the host name].
        #[arg(long, env = "TOKENWATCH_NODE_NAME")]
        pub node_name: Option<String>,

        /// Size of the kernel-to-agent ring buffer in KiB (a power of two);
        /// matched events beyond it are dropped and counted [default: 8192].
        #[arg(long, env = "TOKENWATCH_RING_BUFFER_KIB", value_name = "KIB")]
        pub ring_buffer_kib: Option<RingBufferKib>,

        /// The container runtime's CRI socket, `/path` or `unix:///path` as
        /// kubelet's --container-runtime-endpoint writes it [default: the first
        /// of /run/containerd/containerd.sock, /run/crio/crio.sock, ... that exists].
        #[arg(long, env = "TOKENWATCH_CRI_SOCKET", value_name = "PATH")]
        pub cri_socket: Option<CriSocket>,

        /// A kubeconfig for the Kubernetes API [default: in-cluster config, then
        /// $KUBECONFIG or ~/.kube/config; none found means standalone].
        #[arg(long, env = "TOKENWATCH_KUBECONFIG", value_name = "PATH")]
        pub kubeconfig: Option<PathBuf>,

        /// The detection policy (YAML: per-rule settings and exceptions)
        /// [default: the shipped deploy/base/policy/default.yaml].
        #[arg(long, env = "TOKENWATCH_POLICY", value_name = "FILE")]
        pub policy: Option<PathBuf>,

        /// Seconds over which alerts of the same rule, container and binary
        /// are merged into one with a count; 0 turns merging off [default: 60].
        #[arg(long, env = "TOKENWATCH_DEDUP_WINDOW_SECONDS", value_name = "SECONDS")]
        pub dedup_window_seconds: Option<u64>,

        /// Where the gRPC alert stream listens: HOST:PORT or unix:PATH
        /// [default: 127.0.0.1:50051].
        #[arg(long, env = "TOKENWATCH_GRPC_LISTEN", value_name = "ADDR")]
        pub grpc_listen: Option<Listen>,

        /// Accept a plaintext gRPC listener on a non-loopback address.
        #[serde(default)]
        #[arg(long, env = "TOKENWATCH_GRPC_ALLOW_INSECURE_REMOTE")]
        pub grpc_allow_insecure_remote: bool,

        /// The gRPC server's certificate chain (PEM); with --grpc-tls-key.
        #[arg(long, env = "TOKENWATCH_GRPC_TLS_CERT", value_name = "FILE")]
        pub grpc_tls_cert: Option<PathBuf>,

        /// The gRPC server's private key (PEM).
        #[arg(long, env = "TOKENWATCH_GRPC_TLS_KEY", value_name = "FILE")]
        pub grpc_tls_key: Option<PathBuf>,

        /// CA bundle (PEM) that signs client certificates: turns on mutual TLS.
        #[arg(long, env = "TOKENWATCH_GRPC_TLS_CLIENT_CA", value_name = "FILE")]
        pub grpc_tls_client_ca: Option<PathBuf>,

        /// The delivery log's directory [default: /var/lib/tokenwatch/spool].
        #[arg(long, env = "TOKENWATCH_SPOOL_DIR", value_name = "DIR")]
        pub spool_dir: Option<PathBuf>,

        /// The delivery log's size bound in MiB [default: 256].
        #[arg(long, env = "TOKENWATCH_SPOOL_MAX_MIB", value_name = "MIB")]
        pub spool_max_mib: Option<u64>,

        /// Where the token usage inventory is kept across restarts
        /// (inventory.json, mode 0600) [default: /var/lib/tokenwatch].
        #[arg(long, env = "TOKENWATCH_STATE_DIR", value_name = "DIR")]
        pub state_dir: Option<PathBuf>,

        /// Export alerts as OTLP logs to this OpenTelemetry Collector:
        /// http://HOST:PORT or https://HOST:PORT (TLS) [default: no export].
        #[arg(long, env = "TOKENWATCH_OTLP_ENDPOINT", value_name = "URL")]
        pub otlp_endpoint: Option<OtlpEndpoint>,

        /// Accept a plaintext (http://) OTLP endpoint that is not on loopback.
        #[serde(default)]
        #[arg(long, env = "TOKENWATCH_OTLP_ALLOW_INSECURE_REMOTE")]
        pub otlp_allow_insecure_remote: bool,

        /// CA bundle (PEM) the collector's certificate must chain to
        /// [default: the system's roots].
        #[arg(long, env = "TOKENWATCH_OTLP_CA", value_name = "FILE")]
        pub otlp_ca: Option<PathBuf>,

        /// Client certificate chain (PEM) for a collector that requires mutual
        /// TLS; with --otlp-key.
        #[arg(long, env = "TOKENWATCH_OTLP_CERT", value_name = "FILE")]
        pub otlp_cert: Option<PathBuf>,

        /// The client certificate's private key (PEM).
        #[arg(long, env = "TOKENWATCH_OTLP_KEY", value_name = "FILE")]
        pub otlp_key: Option<PathBuf>,

        /// Serve Prometheus metrics (`/metrics`) and the probes (`/healthz`,
        /// `/readyz`) on this address, e.g. 0.0.0.0:9090 [default: off].
        #[arg(long, env = "TOKENWATCH_METRICS_LISTEN", value_name = "ADDR:PORT")]
        pub metrics_listen: Option<std::net::SocketAddr>,

        /// Also export the token inventory on `/metrics` (and as OTLP metrics):
        /// one series set per workload, with workload names, token mounts and
        /// the binaries that used them. Off by default: `/metrics` is plain
        /// HTTP without authentication, while the gRPC inventory needs mutual
        /// TLS; turn it on where only your Prometheus can reach the port.
        #[serde(default)]
        #[arg(long, env = "TOKENWATCH_METRICS_INVENTORY")]
        pub metrics_inventory: bool,

        /// The host's /proc: where the node's processes are seen. In a pod
        /// without hostPID, mount the host's /proc here (e.g. /host/proc)
        /// [default: /proc].
        #[arg(long, env = "TOKENWATCH_HOST_PROC", value_name = "DIR")]
        pub host_proc: Option<PathBuf>,
    }
}
