//! One layer of configuration: what the flags, the environment or the YAML
//! file said. Every field is optional so layers can be stacked; the first
//! layer that names a setting wins.

use std::path::PathBuf;

use serde::Deserialize;

use super::{
    super::deliver::{grpc::Listen, otlp::OtlpEndpoint},
    endpoint::Endpoint,
    values::{RescanSeconds, RingBufferKib, TokenPath},
};

/// How alerts are printed on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum StdoutFormat {
    /// One JSON object per alert per line (the proto3 JSON mapping).
    #[default]
    Json,
    /// One human-readable line per alert.
    Text,
    /// Nothing on stdout (alerts go to the other sinks only).
    None,
}

/// Settings as one source gave them. Field names in YAML are the flag names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigLayer {
    /// Run without Kubernetes.
    pub standalone: Option<bool>,
    /// Token files to watch besides the default ServiceAccount paths.
    pub token_paths: Option<Vec<TokenPath>>,
    /// API-server endpoints to watch.
    pub api_servers: Option<Vec<Endpoint>>,
    /// Alert format on stdout.
    pub stdout: Option<StdoutFormat>,
    /// Seconds between scans of the node's mount namespaces for token files.
    pub rescan_interval_seconds: Option<RescanSeconds>,
    /// Node name put in every alert.
    pub node_name: Option<String>,
    /// Size of the kernel-to-agent ring buffer in KiB.
    pub ring_buffer_kib: Option<RingBufferKib>,
    /// The container runtime's CRI socket.
    pub cri_socket: Option<PathBuf>,
    /// A kubeconfig file for the Kubernetes API.
    pub kubeconfig: Option<PathBuf>,
    /// The detection policy file.
    pub policy: Option<PathBuf>,
    /// Seconds over which identical alerts are merged; 0 turns merging off.
    pub dedup_window_seconds: Option<u64>,
    /// Where the gRPC alert stream listens.
    pub grpc_listen: Option<Listen>,
    /// Allow a plaintext gRPC listener on a non-loopback address.
    pub grpc_allow_insecure_remote: Option<bool>,
    /// The gRPC server's certificate chain (PEM).
    pub grpc_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub grpc_tls_key: Option<PathBuf>,
    /// CA bundle for client certificates (PEM): mutual TLS.
    pub grpc_tls_client_ca: Option<PathBuf>,
    /// The delivery log's directory.
    pub spool_dir: Option<PathBuf>,
    /// The delivery log's size bound in MiB.
    pub spool_max_mib: Option<u64>,
    /// Where the token usage inventory is kept.
    pub state_dir: Option<PathBuf>,
    /// The OpenTelemetry Collector to export alerts to (OTLP/gRPC).
    pub otlp_endpoint: Option<OtlpEndpoint>,
    /// Allow a plaintext (`http://`) OTLP endpoint off this machine.
    pub otlp_allow_insecure_remote: Option<bool>,
    /// CA bundle (PEM) for the collector's certificate.
    pub otlp_ca: Option<PathBuf>,
    /// The agent's client certificate chain (PEM) for the collector.
    pub otlp_cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub otlp_key: Option<PathBuf>,
    /// Where the metrics and probe endpoints listen.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// The host's /proc.
    pub host_proc: Option<PathBuf>,
}

impl ConfigLayer {
    /// Settings of `self`, with those it leaves unset taken from `lower`.
    #[must_use]
    pub fn over(self, lower: ConfigLayer) -> ConfigLayer {
        ConfigLayer {
            standalone: self.standalone.or(lower.standalone),
            token_paths: self.token_paths.or(lower.token_paths),
            api_servers: self.api_servers.or(lower.api_servers),
            stdout: self.stdout.or(lower.stdout),
            rescan_interval_seconds: self.rescan_interval_seconds.or(lower.rescan_interval_seconds),
            node_name: self.node_name.or(lower.node_name),
            ring_buffer_kib: self.ring_buffer_kib.or(lower.ring_buffer_kib),
            cri_socket: self.cri_socket.or(lower.cri_socket),
            kubeconfig: self.kubeconfig.or(lower.kubeconfig),
            policy: self.policy.or(lower.policy),
            dedup_window_seconds: self.dedup_window_seconds.or(lower.dedup_window_seconds),
            grpc_listen: self.grpc_listen.or(lower.grpc_listen),
            grpc_allow_insecure_remote: self.grpc_allow_insecure_remote.or(lower.grpc_allow_insecure_remote),
            grpc_tls_cert: self.grpc_tls_cert.or(lower.grpc_tls_cert),
            grpc_tls_key: self.grpc_tls_key.or(lower.grpc_tls_key),
            grpc_tls_client_ca: self.grpc_tls_client_ca.or(lower.grpc_tls_client_ca),
            spool_dir: self.spool_dir.or(lower.spool_dir),
            spool_max_mib: self.spool_max_mib.or(lower.spool_max_mib),
            state_dir: self.state_dir.or(lower.state_dir),
            otlp_endpoint: self.otlp_endpoint.or(lower.otlp_endpoint),
            otlp_allow_insecure_remote: self.otlp_allow_insecure_remote.or(lower.otlp_allow_insecure_remote),
            otlp_ca: self.otlp_ca.or(lower.otlp_ca),
            otlp_cert: self.otlp_cert.or(lower.otlp_cert),
            otlp_key: self.otlp_key.or(lower.otlp_key),
            metrics_listen: self.metrics_listen.or(lower.metrics_listen),
            host_proc: self.host_proc.or(lower.host_proc),
        }
    }
}
