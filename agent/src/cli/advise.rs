//! `tokenwatch advise`: hardening advice as YAML to apply, from the agents'
//! inventories (merged) or from a saved `tokenwatch inventory -o json`.

use std::path::PathBuf;
use std::time::Duration;

use tokenwatch_proto::v1::Inventory;
use tokio::io::AsyncWriteExt;

use super::connect::TlsArgs;
use super::inventory::{fetch_from, InventoryCliError};
use super::prometheus::PrometheusArgs;
use crate::deliver::grpc::Listen;
use crate::inventory::advise::{self, AdviseError, AdviseOptions, DEFAULT_AUDIENCE, DEFAULT_TOKEN_EXPIRATION_SECONDS};

/// Flags of `tokenwatch advise`.
#[derive(Debug, clap::Args)]
pub struct AdviseArgs {
    /// An agent's gRPC address, HOST:PORT or unix:PATH; repeat for every
    /// node's agent [default: 127.0.0.1:50051 unless --from is given].
    #[arg(long = "server", conflicts_with = "from")]
    pub servers: Vec<Listen>,
    /// Read the inventory from this file (`tokenwatch inventory -o json`)
    /// instead of asking agents.
    #[arg(long, value_name = "FILE", conflicts_with = "prometheus")]
    pub from: Option<PathBuf>,
    /// Only workloads in this namespace (repeatable; agents or Prometheus).
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// How long the evidence must cover: 24h, 90m, 2d... Advice from less
    /// could take a token from a workload that uses it rarely.
    #[arg(long, default_value = "24h", value_parser = advise::parse_duration)]
    pub window: Duration,
    /// Advise even when the evidence covers less than --window.
    #[arg(long)]
    pub accept_short_window: bool,
    /// Audience of the projected tokens advised for workloads that use the
    /// API (one of the API server's --api-audiences).
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    pub audience: String,
    /// Lifetime of those tokens, in seconds (at least 600).
    #[arg(long, default_value_t = DEFAULT_TOKEN_EXPIRATION_SECONDS)]
    pub token_expiration_seconds: i64,
    /// A namespace the admission policy always allows (repeatable;
    /// replaces the default).
    #[arg(long = "allow-namespace", default_value = "kube-system")]
    pub allow_namespaces: Vec<String>,
    /// TLS to the agents (the same for all).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Or the cluster's inventory from Prometheus.
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
}

/// Why no advice was printed.
#[derive(Debug, thiserror::Error)]
pub enum AdviseCliError {
    /// The agents could not be asked.
    #[error(transparent)]
    Fetch(#[from] InventoryCliError),
    /// The inventory file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inventory file is not a tokenwatch inventory.
    #[error("{path} is not the JSON of a tokenwatch inventory (tokenwatch inventory -o json): {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
    /// The evidence does not allow advice.
    #[error(transparent)]
    Advise(#[from] AdviseError),
    /// Printing failed.
    #[error("writing to stdout: {0}")]
    Write(#[from] std::io::Error),
}

impl AdviseArgs {
    /// The options of the advice.
    pub fn options(&self) -> AdviseOptions {
        AdviseOptions {
            window: self.window,
            accept_short_window: self.accept_short_window,
            audience: self.audience.clone(),
            token_expiration_seconds: self.token_expiration_seconds,
            allow_namespaces: self.allow_namespaces.clone(),
        }
    }
}

/// Reads an inventory saved as JSON.
pub fn read_inventory(path: &PathBuf) -> Result<Inventory, AdviseCliError> {
    let text = std::fs::read(path).map_err(|source| AdviseCliError::Read { path: path.clone(), source })?;
    serde_json::from_slice(&text).map_err(|source| AdviseCliError::Parse { path: path.clone(), source })
}

/// Prints the advice, or fails saying why there is none.
pub async fn run(args: &AdviseArgs) -> Result<(), AdviseCliError> {
    let inventory = match &args.from {
        Some(path) => read_inventory(path)?,
        None => {
            let default = ["127.0.0.1:50051"
                .parse()
                .map_err(|_| InventoryCliError::Write(std::io::ErrorKind::InvalidInput.into()))?];
            let servers = if args.servers.is_empty() { &default[..] } else { &args.servers[..] };
            fetch_from(&args.prometheus, servers, &args.tls, &args.namespaces).await?
        }
    };
    let yaml = advise::advise(&inventory, &args.options())?;
    let mut out = tokio::io::stdout();
    out.write_all(yaml.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}
