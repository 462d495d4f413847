//! Alerts on stdout: JSON lines in the proto3 JSON mapping (the same fields a
//! gRPC subscriber gets), or one readable line each. Logs go to stderr, so
//! stdout carries alerts only.

use tokenwatch_proto::v1::{alert::Evidence, Alert, EnforcementAction, Severity};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use serde::Deserialize;

use crate::printable::printable;

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

/// Why an alert could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StdoutError {
    /// Serialising failed (a bug: every alert serialises).
    #[error("serialising an alert: {0}")]
    Json(#[from] serde_json::Error),
    /// stdout is gone (closed pipe).
    #[error("writing to stdout: {0}")]
    Io(#[from] std::io::Error),
}

/// The line for an alert in `format`, without newline; `None` for `none`.
pub fn render(format: StdoutFormat, alert: &Alert) -> Result<Option<String>, StdoutError> {
    Ok(match format {
        StdoutFormat::Json => Some(serde_json::to_string(alert)?),
        StdoutFormat::Text => Some(text(alert)?),
        StdoutFormat::None => None,
    })
}

fn text(alert: &Alert) -> Result<String, StdoutError> {
    let time = match &alert.time {
        Some(ts) => serde_json::to_string(ts)?.trim_matches('"').to_owned(),
        None => String::new(),
    };
    let severity = Severity::try_from(alert.severity).unwrap_or(Severity::Unspecified);
    let severity = severity.as_str_name().trim_start_matches("SEVERITY_");
    let process = alert.process.clone().unwrap_or_default();
    let container = alert.container.as_ref().map(|c| c.id.as_str()).filter(|id| !id.is_empty()).unwrap_or("-");
    // The summary and ids quote the node (comm, paths): one alert, one line.
    let container = printable(container);
    let evidence = match &alert.evidence {
        Some(Evidence::TokenRead(read)) => format!("requested={:?} flags={}", read.requested_path, read.flags),
        Some(Evidence::ApiServerConnect(connect)) => format!("outcome={}", connect.outcome),
        Some(Evidence::AgentHealth(health)) => format!("problem={} lost={}", health.problem, health.events_lost),
        None => String::new(),
    };
    let enforcement = match &alert.enforcement {
        Some(done) => {
            let action = EnforcementAction::try_from(done.action).unwrap_or_default();
            let action = action.as_str_name().trim_start_matches("ENFORCEMENT_ACTION_").to_ascii_lowercase();
            format!(" action={action} block={}", done.block_id)
        }
        None => String::new(),
    };
    Ok(format!(
        "{time} {severity} {rule} node={node} pid={pid} uid={uid} comm={comm:?}{exe} container={container} \
         {evidence}{enforcement} -- {summary}",
        rule = alert.rule,
        node = alert.node,
        pid = process.pid,
        uid = process.uid,
        comm = process.comm,
        // The path from /proc, else the name the kernel read with the event.
        exe = match (process.exe.as_str(), process.executable_name.as_str()) {
            ("", "") => String::new(),
            ("", name) => format!(" exe_name={name:?}"),
            (path, _) => format!(" exe={path:?}"),
        },
        summary = printable(&alert.summary),
    ))
}

/// Writes rendered alerts, one per line, flushed per alert so a reader
/// piping stdout sees each at once.
pub struct StdoutSink<W> {
    format: StdoutFormat,
    out: W,
}

impl<W: AsyncWrite + Unpin> StdoutSink<W> {
    /// A sink writing `format` to `out`.
    pub fn new(format: StdoutFormat, out: W) -> Self {
        StdoutSink { format, out }
    }

    /// Writes one alert.
    pub async fn write(&mut self, alert: &Alert) -> Result<(), StdoutError> {
        if let Some(mut line) = render(self.format, alert)? {
            line.push('\n');
            self.out.write_all(line.as_bytes()).await?;
            self.out.flush().await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokenwatch_proto::v1::{Enforcement, ProcessContext, TokenRead};

    use super::*;

    fn alert() -> Alert {
        Alert {
            id: "run-1".into(),
            time: Some(pbjson_types::Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            node: "node-a".into(),
            severity: Severity::High.into(),
            rule: "token-read".into(),
            summary: "cat (pid 7) opened ServiceAccount token /run/x/token".into(),
            process: Some(ProcessContext { pid: 7, exe: "/bin/cat".into(), ..ProcessContext::default() }),
            evidence: Some(Evidence::TokenRead(TokenRead {
                requested_path: "token".into(),
                inode: 12,
                ..TokenRead::default()
            })),
            ..Alert::default()
        }
    }

    #[test]
    fn json_uses_the_proto3_mapping() {
        let line = render(StdoutFormat::Json, &alert()).expect("renders").expect("a line");
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(value["severity"], "SEVERITY_HIGH");
        assert_eq!(value["time"], "2023-11-14T22:13:20.000000005+00:00");
        assert_eq!(value["process"]["pid"], 7);
        assert_eq!(value["tokenRead"]["requestedPath"], "token");
        assert_eq!(value["tokenRead"]["inode"], "12", "uint64 is a string in proto3 JSON");
        let back: Alert = serde_json::from_str(&line).expect("round-trips");
        assert_eq!(back, alert());
    }

    #[test]
    fn text_is_one_readable_line_and_none_is_silent() {
        let line = render(StdoutFormat::Text, &alert()).expect("renders").expect("a line");
        assert!(line.starts_with("2023-11-14T22:13:20.000000005+00:00 HIGH token-read node=node-a pid=7"), "{line}");
        assert!(line.contains(r#"exe="/bin/cat""#), "{line}");
        assert!(line.contains("requested=\"token\""), "{line}");
        assert_eq!(render(StdoutFormat::None, &alert()).expect("renders"), None);
        let killed = Alert {
            enforcement: Some(Enforcement { action: EnforcementAction::Killed.into(), block_id: "no-reads".into() }),
            ..alert()
        };
        let line = render(StdoutFormat::Text, &killed).expect("renders").expect("a line");
        assert!(line.contains(" action=killed block=no-reads -- "), "{line}");
        let json = render(StdoutFormat::Json, &killed).expect("renders").expect("a line");
        let value: serde_json::Value = serde_json::from_str(&json).expect("valid json");
        assert_eq!(value["enforcement"]["action"], "ENFORCEMENT_ACTION_KILLED");
        assert_eq!(value["enforcement"]["blockId"], "no-reads");
    }

    #[test]
    fn text_from_the_node_cannot_forge_a_line() {
        // A process named by its author: a line end and a fake alert.
        let forged = Alert {
            summary: "x\n2023-11-14T22:13:20Z INFO nothing-to-see \u{1b}[2J (pid 7) opened ...".into(),
            process: Some(ProcessContext { pid: 7, comm: "a\nb".into(), exe: "/tmp/\r".into(), ..Default::default() }),
            ..alert()
        };
        let line = render(StdoutFormat::Text, &forged).expect("renders").expect("a line");
        assert!(!line.contains(['\n', '\r', '\u{1b}']), "{line:?}");
        assert!(line.contains("x\\n2023-11-14T22:13:20Z INFO"), "{line}");
    }

    #[tokio::test]
    async fn sink_writes_one_line_per_alert() {
        let mut sink = StdoutSink::new(StdoutFormat::Json, Vec::new());
        sink.write(&alert()).await.expect("written");
        sink.write(&alert()).await.expect("written");
        let text = String::from_utf8(sink.out).expect("utf-8");
        assert_eq!(text.lines().count(), 2);
    }
}
