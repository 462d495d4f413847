//! `tokenwatch inventory`: which workloads have a token, read it and dial
//! the API server, from one agent or merged from several (one per node):
//! a table, or the proto3 JSON of `tokenwatch.v1.Inventory`.

use tokenwatch_proto::v1::{
    inventory_service_client::InventoryServiceClient, GetInventoryRequest, Inventory, TokenMountKind, Usage,
};
use tokio::io::AsyncWriteExt;

use super::connect::{self, ConnectError, TlsArgs};
use super::prometheus::{PrometheusArgs, PrometheusError};
use crate::deliver::grpc::Listen;
use crate::inventory::{advise::human, merge::merge_inventories};

/// How the inventory is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per workload.
    #[default]
    Table,
    /// `tokenwatch.v1.Inventory` in the proto3 JSON mapping (what `advise --from` reads).
    Json,
}

/// Flags of `tokenwatch inventory`.
#[derive(Debug, clap::Args)]
pub struct InventoryArgs {
    /// An agent's gRPC address, HOST:PORT or unix:PATH; repeat for every
    /// node's agent: their views are merged.
    #[arg(long = "server", default_value = "127.0.0.1:50051")]
    pub servers: Vec<Listen>,
    /// Only workloads in this namespace (repeatable).
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
    /// TLS to the agents (the same for all).
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Or the cluster's inventory from Prometheus.
    #[command(flatten)]
    pub prometheus: PrometheusArgs,
}

/// Why the inventory could not be had.
#[derive(Debug, thiserror::Error)]
pub enum InventoryCliError {
    /// No connection to an agent.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An agent answered with an error.
    #[error("{server} said: {status}")]
    Status {
        /// Which agent.
        server: String,
        /// What it said.
        status: Box<tonic::Status>,
    },
    /// Prometheus gave none.
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
    /// The inventory could not be encoded as JSON (a bug).
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// Printing failed.
    #[error("writing to stdout: {0}")]
    Write(#[from] std::io::Error),
}

/// The largest answer taken from an agent: a full inventory (10,000
/// workloads) is well past gRPC's default 4 MiB.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// Asks every agent for its inventory and merges the answers.
pub async fn fetch(servers: &[Listen], tls: &TlsArgs, namespaces: &[String]) -> Result<Inventory, InventoryCliError> {
    let mut parts = Vec::new();
    for server in servers {
        let mut client = InventoryServiceClient::new(connect::channel(server, tls).await?)
            .max_decoding_message_size(MAX_ANSWER_BYTES);
        let request = GetInventoryRequest { namespaces: namespaces.to_vec() };
        let answer = client
            .get_inventory(request)
            .await
            .map_err(|status| InventoryCliError::Status { server: server.to_string(), status: Box::new(status) })?;
        parts.push(answer.into_inner());
    }
    Ok(merge_inventories(parts))
}

/// The cluster's inventory from Prometheus when `--prometheus` is given,
/// else merged from the agents.
pub async fn fetch_from(
    prometheus: &PrometheusArgs,
    servers: &[Listen],
    tls: &TlsArgs,
    namespaces: &[String],
) -> Result<Inventory, InventoryCliError> {
    match prometheus.prometheus {
        Some(_) => Ok(super::prometheus::fetch(prometheus, namespaces).await?),
        None => fetch(servers, tls, namespaces).await,
    }
}

/// Prints the merged inventory.
pub async fn run(args: &InventoryArgs) -> Result<(), InventoryCliError> {
    let inventory = fetch_from(&args.prometheus, &args.servers, &args.tls, &args.namespaces).await?;
    let text = match args.output {
        Output::Json => format!("{}\n", serde_json::to_string_pretty(&inventory)?),
        Output::Table => table(&inventory),
    };
    let mut out = tokio::io::stdout();
    out.write_all(text.as_bytes()).await?;
    out.flush().await?;
    Ok(())
}

/// The inventory as a table with a summary line.
pub fn table(inventory: &Inventory) -> String {
    let headers =
        ["NAMESPACE", "WORKLOAD", "SERVICEACCOUNT", "TOKEN", "READS", "READ BY", "CONNECTS", "CONNECT BY", "PODS"];
    let mut rows: Vec<Vec<String>> = vec![headers.iter().map(|h| (*h).to_owned()).collect()];
    for w in &inventory.workloads {
        let workload = w.workload.as_ref().map_or_else(String::new, |o| format!("{}/{}", o.kind, o.name));
        let (reads, read_by) = usage(w.token_reads.as_ref());
        let (connects, connect_by) = usage(w.api_server_connects.as_ref());
        rows.push(vec![
            w.namespace.clone(),
            workload,
            w.service_account.clone(),
            token(w),
            reads,
            read_by,
            connects,
            connect_by,
            format!("{} seen, {} running", w.pods_seen, w.pods_running),
        ]);
    }
    let widths: Vec<usize> =
        (0..headers.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let observed = match (inventory.observed_since, inventory.generated_at) {
        (Some(since), Some(at)) => human(crate::inventory::advise::decide::span(since.seconds, at.seconds)),
        _ => "?".to_owned(),
    };
    let since = inventory.observed_since.map(|t| crate::inventory::rfc3339(&t)).unwrap_or_default();
    out.push_str(&format!(
        "{} workload(s) on {} node(s) ({}); observed {observed} since {since}\n",
        inventory.workloads.len(),
        inventory.nodes.len(),
        inventory.nodes.join(", ")
    ));
    out
}

fn token(w: &tokenwatch_proto::v1::WorkloadInventory) -> String {
    if w.token_mounts.is_empty() {
        return if w.token_mounted { "yes".to_owned() } else { "none".to_owned() };
    }
    let kinds: Vec<String> = w
        .token_mounts
        .iter()
        .map(|m| match TokenMountKind::try_from(m.kind).unwrap_or(TokenMountKind::Unspecified) {
            TokenMountKind::DefaultAutomount => "automount".to_owned(),
            TokenMountKind::Projected => {
                let audience = if m.audience.is_empty() { "api" } else { m.audience.as_str() };
                format!(
                    "projected({audience},{}s)",
                    if m.expiration_seconds == 0 { 3600 } else { m.expiration_seconds }
                )
            }
            TokenMountKind::LegacySecret => format!("legacy-secret({})", m.secret_name),
            TokenMountKind::Unspecified => "?".to_owned(),
        })
        .collect();
    kinds.join("+")
}

fn usage(usage: Option<&Usage>) -> (String, String) {
    match usage.filter(|u| u.count > 0) {
        None => ("0".to_owned(), "-".to_owned()),
        Some(u) => (u.count.to_string(), u.binaries.join(",")),
    }
}
