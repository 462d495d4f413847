//! `tokenwatch alerts`: read the agent's alert stream, the way
//! `kubectl logs -f` feels: what is there, then (with `--follow`) what comes.

use futures::FutureExt;
use tokenwatch_proto::v1::{
    alert_service_client::AlertServiceClient, subscribe_response::Item, Severity, SubscribeRequest,
};
use tokio::io::{AsyncWriteExt, BufWriter};
use tonic::transport::Channel;

use crate::deliver::{grpc::Listen, stdout};

/// Flags of `tokenwatch alerts`.
#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// The agent's gRPC address: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub server: Listen,
    /// Keep streaming new alerts.
    #[arg(short, long)]
    pub follow: bool,
    /// Only alerts after this sequence (resume after the last one seen).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub since: u64,
    /// Only this rule (repeatable).
    #[arg(long = "rule")]
    pub rules: Vec<String>,
    /// Only alerts at least this severe: low, medium, high, critical.
    #[arg(long, value_parser = parse_severity)]
    pub min_severity: Option<Severity>,
    /// Only alerts from pods in this namespace (repeatable).
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Only alerts from this pod (repeatable).
    #[arg(long = "pod")]
    pub pods: Vec<String>,
    /// Output: one JSON object per line, or one readable line.
    #[arg(short, long, value_enum, default_value = "text")]
    pub output: crate::config::StdoutFormat,
    /// TLS to the agent.
    #[command(flatten)]
    pub tls: super::connect::TlsArgs,
}

/// Why the stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// No connection to the agent.
    #[error(transparent)]
    Connect(#[from] super::connect::ConnectError),
    /// The agent answered with an error.
    #[error("the agent said: {0}")]
    Status(#[from] tonic::Status),
    /// Printing failed.
    #[error(transparent)]
    Print(#[from] stdout::StdoutError),
}

fn parse_severity(text: &str) -> Result<Severity, String> {
    Severity::from_str_name(&format!("SEVERITY_{}", text.to_ascii_uppercase()))
        .filter(|s| *s != Severity::Unspecified)
        .ok_or_else(|| format!("`{text}` is not low, medium, high or critical"))
}

/// Streams alerts to stdout; gaps (alerts the agent no longer holds) go to
/// stderr, so a pipe of JSON lines stays clean.
pub async fn run(args: &AlertsArgs) -> Result<(), AlertsError> {
    let mut client = AlertServiceClient::new(channel(args).await?);
    let request = SubscribeRequest {
        after_sequence: args.since,
        follow: args.follow,
        rules: args.rules.clone(),
        min_severity: args.min_severity.unwrap_or(Severity::Unspecified).into(),
        namespaces: args.namespaces.clone(),
        pods: args.pods.clone(),
    };
    let mut stream = client.subscribe(request).await?.into_inner();
    // Lines are buffered while alerts keep arriving and flushed as soon as
    // none is ready: a burst costs a few writes, not a blocking-pool round
    // trip per line, and a lone alert is still printed at once.
    let mut out = BufWriter::new(tokio::io::stdout());
    loop {
        // `message` is cancel safe: a pending one dropped here loses nothing.
        let next = match stream.message().now_or_never() {
            Some(ready) => ready?,
            None => {
                out.flush().await.map_err(stdout::StdoutError::from)?;
                stream.message().await?
            }
        };
        let Some(response) = next else { break };
        match response.item {
            Some(Item::Alert(alert)) => {
                if let Some(line) = stdout::render(args.output, &alert)? {
                    out.write_all(line.as_bytes()).await.map_err(stdout::StdoutError::from)?;
                    out.write_all(b"\n").await.map_err(stdout::StdoutError::from)?;
                }
            }
            Some(Item::Gap(gap)) => tracing::warn!(
                first = gap.first_sequence,
                last = gap.last_sequence,
                "the agent no longer holds these alerts"
            ),
            None => {}
        }
    }
    out.flush().await.map_err(stdout::StdoutError::from)?;
    Ok(())
}

async fn channel(args: &AlertsArgs) -> Result<Channel, AlertsError> {
    Ok(super::connect::channel(&args.server, &args.tls).await?)
}
