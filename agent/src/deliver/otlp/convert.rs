//! Alerts as OTLP log records. The body is the alert in the proto3 JSON
//! mapping (exactly the stdout line), so nothing is lost and a consumer can
//! parse it back; the attributes repeat what collectors and backends filter
//! and group on, under OpenTelemetry's semantic-convention names.
//!
//! A record depends only on its alert (no wall clock), so an alert sent
//! again after an outage is byte-for-byte the record sent the first time.

use opentelemetry_proto::tonic::{
    collector::logs::v1::ExportLogsServiceRequest,
    common::v1::{any_value::Value, AnyValue, InstrumentationScope, KeyValue},
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber},
    resource::v1::Resource,
};
use pbjson_types::Timestamp;
use tokenwatch_proto::v1::{Alert, EnforcementAction, Severity};

/// The `service.name` of every record's resource, and the scope's name.
pub const SERVICE_NAME: &str = "tokenwatch";

/// Why an alert could not be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The alert did not serialise to JSON (a bug: every alert serialises).
    #[error("serialising an alert as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// One export request for `alerts`: a resource per node (one in practice),
/// records in sequence order.
pub fn request(alerts: &[Alert]) -> Result<ExportLogsServiceRequest, ConvertError> {
    let mut by_node: Vec<(&str, Vec<LogRecord>)> = Vec::new();
    for alert in alerts {
        let record = log_record(alert)?;
        match by_node.iter_mut().find(|(node, _)| *node == alert.node) {
            Some((_, records)) => records.push(record),
            None => by_node.push((&alert.node, vec![record])),
        }
    }
    let resource_logs = by_node
        .into_iter()
        .map(|(node, log_records)| ResourceLogs {
            resource: Some(resource(node)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: SERVICE_NAME.to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..InstrumentationScope::default()
                }),
                log_records,
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        })
        .collect();
    Ok(ExportLogsServiceRequest { resource_logs })
}

/// The resource every record of `node` belongs to: the agent on that node.
pub fn resource(node: &str) -> Resource {
    let mut attributes = vec![string("service.name", SERVICE_NAME)];
    if !node.is_empty() {
        attributes.push(string("host.name", node));
        attributes.push(string("k8s.node.name", node));
    }
    Resource { attributes, ..Resource::default() }
}

/// One alert as a log record: its time (observed: when last seen, for a
/// merged alert), severity, the JSON body and the attributes it has.
pub fn log_record(alert: &Alert) -> Result<LogRecord, ConvertError> {
    let (severity_number, severity_text) = severity(alert.severity);
    let time_unix_nano = alert.time.as_ref().map_or(0, unix_nanos);
    let observed_time_unix_nano = alert.last_seen.as_ref().map_or(time_unix_nano, unix_nanos);
    Ok(LogRecord {
        time_unix_nano,
        observed_time_unix_nano,
        severity_number: severity_number as i32,
        severity_text: severity_text.to_owned(),
        body: Some(AnyValue { value: Some(Value::StringValue(serde_json::to_string(alert)?)) }),
        attributes: attributes(alert),
        ..LogRecord::default()
    })
}

/// OTLP's severity for an alert's: low is INFO, medium WARN, high ERROR,
/// critical FATAL, so a backend's usual "warnings and worse" view holds
/// everything but low. An unknown value is unspecified.
pub fn severity(severity: i32) -> (SeverityNumber, &'static str) {
    match Severity::try_from(severity).unwrap_or(Severity::Unspecified) {
        Severity::Low => (SeverityNumber::Info, "INFO"),
        Severity::Medium => (SeverityNumber::Warn, "WARN"),
        Severity::High => (SeverityNumber::Error, "ERROR"),
        Severity::Critical => (SeverityNumber::Fatal, "FATAL"),
        Severity::Unspecified => (SeverityNumber::Unspecified, ""),
    }
}

fn attributes(alert: &Alert) -> Vec<KeyValue> {
    let mut list = vec![string("tokenwatch.rule", &alert.rule), int("tokenwatch.sequence", alert.sequence)];
    let mut text = |key: &str, value: &str| {
        if !value.is_empty() {
            list.push(string(key, value));
        }
    };
    text("tokenwatch.alert_id", &alert.id);
    if let Some(k8s) = &alert.kubernetes {
        text("k8s.namespace.name", &k8s.namespace);
        text("k8s.pod.name", &k8s.pod);
        text("k8s.pod.uid", &k8s.pod_uid);
        text("k8s.container.name", &k8s.container);
    }
    text("k8s.node.name", &alert.node);
    if let Some(container) = &alert.container {
        text("container.id", &container.id);
    }
    if let Some(done) = &alert.enforcement {
        let action = EnforcementAction::try_from(done.action).unwrap_or_default();
        text("tokenwatch.enforcement.action", action.as_str_name());
        text("tokenwatch.enforcement.block_id", &done.block_id);
    }
    if let Some(process) = &alert.process {
        text("process.executable.path", &process.exe);
        text("process.executable.name", &process.executable_name);
        if process.pid != 0 {
            list.push(int("process.pid", u64::from(process.pid)));
        }
    }
    list
}

fn unix_nanos(time: &Timestamp) -> u64 {
    let seconds = u64::try_from(time.seconds).unwrap_or(0);
    let nanos = u64::try_from(time.nanos).unwrap_or(0);
    seconds.saturating_mul(1_000_000_000).saturating_add(nanos)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::StringValue(value.to_owned())) }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: u64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX))) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use tokenwatch_proto::v1::{ContainerContext, KubernetesContext, ProcessContext};

    use super::*;

    fn alert(sequence: u64, severity: Severity) -> Alert {
        Alert {
            id: format!("run-{sequence}"),
            time: Some(Timestamp { seconds: 1_700_000_000, nanos: 5 }),
            node: "node-a".into(),
            severity: severity as i32,
            rule: "token-read".into(),
            sequence,
            kubernetes: Some(KubernetesContext {
                namespace: "shop".into(),
                pod: "cart-1".into(),
                container: "app".into(),
                ..KubernetesContext::default()
            }),
            container: Some(ContainerContext { id: "abc".into(), ..ContainerContext::default() }),
            process: Some(ProcessContext {
                pid: 42,
                exe: "/bin/cat".into(),
                executable_name: "cat".into(),
                ..ProcessContext::default()
            }),
            ..Alert::default()
        }
    }

    fn attribute<'a>(record: &'a LogRecord, key: &str) -> Option<&'a Value> {
        record.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()?.value.as_ref())
    }

    fn text(value: &str) -> Option<Value> {
        Some(Value::StringValue(value.into()))
    }

    #[test]
    fn a_record_carries_time_body_and_attributes() {
        let alert = alert(7, Severity::High);
        let record = log_record(&alert).expect("converts");
        assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_005);
        assert_eq!(record.observed_time_unix_nano, record.time_unix_nano, "no last_seen: observed when raised");
        assert_eq!((record.severity_number, record.severity_text.as_str()), (17, "ERROR"));
        let Some(Value::StringValue(body)) = record.body.as_ref().and_then(|b| b.value.clone()) else {
            panic!("a string body: {record:?}")
        };
        assert_eq!(body, serde_json::to_string(&alert).expect("json"), "the stdout line");
        assert_eq!(serde_json::from_str::<Alert>(&body).expect("parses back"), alert);
        let expected = [
            ("tokenwatch.rule", text("token-read")),
            ("tokenwatch.sequence", Some(Value::IntValue(7))),
            ("tokenwatch.alert_id", text("run-7")),
            ("k8s.namespace.name", text("shop")),
            ("k8s.pod.name", text("cart-1")),
            ("k8s.container.name", text("app")),
            ("k8s.node.name", text("node-a")),
            ("container.id", text("abc")),
            ("process.executable.path", text("/bin/cat")),
            ("process.executable.name", text("cat")),
            ("process.pid", Some(Value::IntValue(42))),
        ];
        for (key, value) in &expected {
            assert_eq!(attribute(&record, key), value.as_ref(), "{key}");
        }
        assert_eq!(attribute(&record, "k8s.pod.uid"), None, "empty values are left out");
        assert_eq!(attribute(&record, "tokenwatch.enforcement.action"), None, "nothing was done");
        assert_eq!(log_record(&alert).expect("again"), record, "the same alert makes the same record");
        let blocked = Alert {
            enforcement: Some(tokenwatch_proto::v1::Enforcement {
                action: EnforcementAction::Blocked.into(),
                block_id: "no-api".into(),
            }),
            ..alert
        };
        let record = log_record(&blocked).expect("converts");
        assert_eq!(attribute(&record, "tokenwatch.enforcement.action"), text("ENFORCEMENT_ACTION_BLOCKED").as_ref());
        assert_eq!(attribute(&record, "tokenwatch.enforcement.block_id"), text("no-api").as_ref());
    }

    #[test]
    fn host_alerts_leave_kubernetes_attributes_out_and_merged_ones_are_observed_when_last_seen() {
        let alert = Alert {
            kubernetes: None,
            container: None,
            last_seen: Some(Timestamp { seconds: 1_700_000_060, nanos: 0 }),
            ..alert(1, Severity::Low)
        };
        let record = log_record(&alert).expect("converts");
        assert!(record.attributes.iter().all(|kv| !kv.key.starts_with("k8s.") || kv.key == "k8s.node.name"));
        assert_eq!(record.observed_time_unix_nano, 1_700_000_060_000_000_000);
    }

    #[test]
    fn severities_map_to_otlp_numbers_and_names() {
        let cases = [
            (Severity::Low, 9, "INFO"),
            (Severity::Medium, 13, "WARN"),
            (Severity::High, 17, "ERROR"),
            (Severity::Critical, 21, "FATAL"),
            (Severity::Unspecified, 0, ""),
        ];
        for (ours, number, name) in cases {
            let (n, t) = severity(ours as i32);
            assert_eq!((n as i32, t), (number, name), "{ours:?}");
        }
        assert_eq!(severity(99).0, SeverityNumber::Unspecified);
    }

    #[test]
    fn a_request_has_one_resource_per_node_with_the_service_name() {
        let mut other = alert(3, Severity::Critical);
        other.node = "node-b".into();
        let request = request(&[alert(1, Severity::Low), alert(2, Severity::Medium), other]).expect("converts");
        assert_eq!(request.resource_logs.len(), 2);
        let first = &request.resource_logs[0];
        let resource = first.resource.as_ref().expect("resource");
        let find = |key: &str| resource.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone());
        assert_eq!(find("service.name").and_then(|v| v.value), text("tokenwatch"));
        assert_eq!(find("host.name").and_then(|v| v.value), text("node-a"));
        assert_eq!(find("k8s.node.name").and_then(|v| v.value), text("node-a"));
        assert_eq!(first.scope_logs[0].log_records.len(), 2);
        assert_eq!(request.resource_logs[1].scope_logs[0].log_records.len(), 1);
    }
}
