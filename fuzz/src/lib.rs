//! What the fuzz targets share: fixed alerts to judge, filter and count, so
//! that whatever a fuzzed policy or request turns into is also *used* the
//! way the agent uses it, not only parsed.

use std::time::{Duration, SystemTime};

use tokenwatch_agent::inventory::timestamp;
use tokenwatch_proto::v1::{Alert, KubernetesContext, ProcessContext, ProcessOrigin, Severity, Workload};

/// A fixed instant, so runs are reproducible (2026-01-01T00:00:00Z).
pub fn fixed_time() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

/// Alerts shaped like the detector's: an exec'd `curl` reading a pod's
/// token, the same pod dialling the API server, and a host process with no
/// pod at all (so filters and matchers meet empty fields too).
pub fn sample_alerts() -> Vec<Alert> {
    let kubernetes = KubernetesContext {
        namespace: "shop".into(),
        pod: "checkout-7d4b9c-x2x1z".into(),
        pod_uid: "0d3c8f2a-1b2c-4d5e-8f90-123456789abc".into(),
        container: "app".into(),
        image: "registry.example/shop/checkout:1.4".into(),
        service_account: "checkout".into(),
        workload: Some(Workload { kind: "Deployment".into(), name: "checkout".into() }),
        labels: [("app".to_owned(), "checkout".to_owned()), ("tier".to_owned(), "web".to_owned())]
            .into_iter()
            .collect(),
        automount_service_account_token: Some(true),
    };
    let process = ProcessContext {
        pid: 4242,
        comm: "curl".into(),
        exe: "/usr/bin/curl".into(),
        args: vec!["curl".into(), "-k".into(), "https://10.96.0.1".into()],
        origin: ProcessOrigin::Exec.into(),
        ..ProcessContext::default()
    };
    let read = Alert {
        id: "a1".into(),
        time: Some(timestamp(fixed_time())),
        node: "node-1".into(),
        severity: Severity::High.into(),
        rule: "token-read".into(),
        kubernetes: Some(kubernetes),
        process: Some(process),
        severity_reasons: vec!["exec".into(), "network tool".into()],
        count: 1,
        ..Alert::default()
    };
    let connect =
        Alert { id: "a2".into(), rule: "apiserver-connect".into(), severity: Severity::Low.into(), ..read.clone() };
    let host = Alert {
        id: "a3".into(),
        rule: "node-token-harvest".into(),
        severity: Severity::Critical.into(),
        kubernetes: None,
        process: Some(ProcessContext {
            exe: "/usr/bin/cat".into(),
            origin: ProcessOrigin::Host.into(),
            ..ProcessContext::default()
        }),
        ..read.clone()
    };
    vec![read, connect, host]
}
