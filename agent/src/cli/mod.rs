//! The command line: `tokenwatch agent` and its flags. Every flag has an
//! environment variable, and the YAML file (`--config`) uses the flag names.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub mod advise;
pub mod alerts;
pub mod connect;
pub mod inventory;
pub mod kernel_check;

use crate::{
    config::{ConfigLayer, Endpoint, RescanSeconds, RingBufferKib, StdoutFormat, TokenPath},
    deliver::{grpc::Listen, otlp::OtlpEndpoint},
};

/// tokenwatch: who is using your Kubernetes ServiceAccount tokens.
#[derive(Debug, Parser)]
#[command(name = "tokenwatch", version, about, propagate_version = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start; boxing would only complicate the match")]
pub enum Command {
    /// Run the node agent: watch token reads and API-server connections.
    Agent(AgentArgs),
    /// Read the agent's alert stream (gRPC), like `kubectl logs -f`.
    Alerts(alerts::AlertsArgs),
    /// Show which workloads have a token, read it, dial the API server
    /// (one or more agents, merged).
    Inventory(inventory::InventoryArgs),
    /// Turn the inventory into hardening advice: YAML to apply.
    Advise(advise::AdviseArgs),
    /// Verify every eBPF program against this kernel, attach nothing, and
    /// say which hooks the agent would run with (needs root).
    KernelCheck(kernel_check::KernelCheckArgs),
}

/// Flags of `tokenwatch agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// YAML file with defaults for these flags (keys are the flag names).
    #[arg(long, env = "TOKENWATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Run without the Kubernetes API: watch the default token paths and the
    /// addresses given here. Also what happens when no cluster is found.
    #[arg(long, env = "TOKENWATCH_STANDALONE")]
    pub standalone: bool,

    /// Another token file to watch, resolved in every mount namespace
    /// (repeatable; the default ServiceAccount paths are always watched).
    #[arg(long = "token-path", env = "TOKENWATCH_TOKEN_PATHS", value_name = "PATH", value_delimiter = ',')]
    pub token_paths: Vec<TokenPath>,

    /// An API-server address to watch: ADDR, ADDR:PORT or [V6]:PORT; port
    /// 443 when none is given (repeatable).
    #[arg(long = "api-server", env = "TOKENWATCH_API_SERVERS", value_name = "ADDR[:PORT]", value_delimiter = ',')]
    pub api_servers: Vec<Endpoint>,

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

    /// The container runtime's CRI socket [default: the first of
    /// /run/containerd/containerd.sock, /run/crio/crio.sock, ... that exists].
    #[arg(long, env = "TOKENWATCH_CRI_SOCKET", value_name = "PATH")]
    pub cri_socket: Option<PathBuf>,

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

    /// The host's /proc: where the node's processes are seen. In a pod
    /// without hostPID, mount the host's /proc here (e.g. /host/proc)
    /// [default: /proc].
    #[arg(long, env = "TOKENWATCH_HOST_PROC", value_name = "DIR")]
    pub host_proc: Option<PathBuf>,

    /// Log filter for stderr, e.g. `info` or `info,tokenwatch_ebpf=debug`
    /// (the latter turns on the eBPF programs' own diagnostics).
    #[arg(long, env = "TOKENWATCH_LOG", default_value = "info")]
    pub log: String,
}

impl AgentArgs {
    /// The settings these flags (and their variables) name; unset ones are
    /// left to the file and the defaults.
    pub fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            standalone: self.standalone.then_some(true),
            token_paths: (!self.token_paths.is_empty()).then(|| self.token_paths.clone()),
            api_servers: (!self.api_servers.is_empty()).then(|| self.api_servers.clone()),
            stdout: self.stdout,
            rescan_interval_seconds: self.rescan_interval_seconds,
            node_name: self.node_name.clone(),
            ring_buffer_kib: self.ring_buffer_kib,
            cri_socket: self.cri_socket.clone(),
            kubeconfig: self.kubeconfig.clone(),
            policy: self.policy.clone(),
            dedup_window_seconds: self.dedup_window_seconds,
            grpc_listen: self.grpc_listen.clone(),
            grpc_allow_insecure_remote: self.grpc_allow_insecure_remote.then_some(true),
            grpc_tls_cert: self.grpc_tls_cert.clone(),
            grpc_tls_key: self.grpc_tls_key.clone(),
            grpc_tls_client_ca: self.grpc_tls_client_ca.clone(),
            spool_dir: self.spool_dir.clone(),
            spool_max_mib: self.spool_max_mib,
            state_dir: self.state_dir.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            otlp_allow_insecure_remote: self.otlp_allow_insecure_remote.then_some(true),
            otlp_ca: self.otlp_ca.clone(),
            otlp_cert: self.otlp_cert.clone(),
            otlp_key: self.otlp_key.clone(),
            metrics_listen: self.metrics_listen,
            host_proc: self.host_proc.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AgentArgs, clap::Error> {
        let cli = Cli::try_parse_from([&["tokenwatch", "agent"], args].concat())?;
        match cli.command {
            Command::Agent(agent) => Ok(agent),
            _ => panic!("parsed as another command"),
        }
    }

    #[test]
    fn flags_become_a_layer() {
        let args =
            parse(&["--standalone", "--api-server", "[::1]:6443", "--api-server", "10.0.0.1", "--stdout", "text"])
                .expect("valid");
        let layer = args.layer();
        assert_eq!(layer.standalone, Some(true));
        let servers: Vec<String> = layer.api_servers.expect("given").iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["[::1]:6443", "10.0.0.1:443"]);
        assert_eq!(layer.stdout, Some(StdoutFormat::Text));
        assert_eq!(layer.token_paths, None);
    }

    #[test]
    fn a_bad_address_names_the_flag_and_the_value() {
        let error = parse(&["--api-server", "kubernetes:443"]).expect_err("not an IP");
        let text = error.to_string();
        assert!(text.contains("--api-server"), "{text}");
        assert!(text.contains("`kubernetes` is not an IP address"), "{text}");
    }
}
