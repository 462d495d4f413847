//! The Prometheus text exposition format (version 0.0.4) of [`Metrics`].

use std::{fmt::Write, sync::atomic::Ordering};

use tokenwatch_common::Counter;

use super::Metrics;
use crate::kernel::hook_status::HookState;
use crate::{deliver::spool::Spool, detect::policy::Policy};

/// Renders every metric. Families with no samples yet are still declared,
/// so a dashboard sees the name before the first alert.
pub fn render(metrics: &Metrics) -> String {
    let mut out = Out(String::with_capacity(4096));
    kernel(metrics, &mut out);
    hooks(metrics, &mut out);
    out.family("tokenwatch_alerts_total", "counter", "Alerts delivered, by rule and severity.");
    for ((rule, severity), count) in metrics.alerts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
        out.sample("tokenwatch_alerts_total", &[("rule", rule), ("severity", severity)], *count);
    }
    if let Some(sources) = metrics.sources.get() {
        policy(&sources.policy.borrow(), &mut out);
        spool(metrics, &sources.spool, &mut out);
    }
    out.family("tokenwatch_grpc_subscribers", "gauge", "gRPC subscribers connected now.");
    out.sample("tokenwatch_grpc_subscribers", &[], metrics.subscribers.load(Ordering::Relaxed));
    caches(metrics, &mut out);
    enforcement(metrics, &mut out);
    out.family("tokenwatch_ready", "gauge", "1 when the hooks are attached and the gRPC server serves.");
    out.sample("tokenwatch_ready", &[], u64::from(metrics.ready()));
    out.0
}

/// The kernel's per-hook counters, and drops per CPU (non-zero CPUs only).
fn kernel(metrics: &Metrics, out: &mut Out) {
    const EVENTS: &str = "tokenwatch_kernel_events_total";
    const DROPPED: &str = "tokenwatch_kernel_dropped_per_cpu_total";
    out.family(EVENTS, "counter", "Kernel hook calls by stage: seen, matched, sent, dropped, entry_missing.");
    let Some(sources) = metrics.sources.get() else { return };
    let Ok(counters) = sources.kernel.read() else { return };
    for reading in &counters.readings {
        let is_connect =
            matches!(reading.hook, tokenwatch_common::Hook::Connect | tokenwatch_common::Hook::CgroupConnect);
        let stage = match reading.counter {
            Counter::OpensSeen if !is_connect => "seen",
            Counter::ConnectsSeen if is_connect => "seen",
            Counter::OpensMatched if !is_connect => "matched",
            Counter::ConnectsMatched if is_connect => "matched",
            Counter::EventsSent => "sent",
            Counter::EventsDropped => "dropped",
            Counter::EntriesMissing => "entry_missing",
            _ => continue,
        };
        out.sample(EVENTS, &[("hook", reading.hook.name()), ("stage", stage)], reading.total());
    }
    out.family(DROPPED, "counter", "Matched events lost to a full ring buffer, by hook and CPU.");
    for reading in counters.readings.iter().filter(|r| r.counter == Counter::EventsDropped) {
        for (cpu, &count) in reading.per_cpu.iter().enumerate().filter(|(_, &c)| c > 0) {
            out.sample(DROPPED, &[("hook", reading.hook.name()), ("cpu", &cpu.to_string())], count);
        }
    }
}

/// Each eBPF program's state on this kernel: 1 for its state, 0 for the
/// others, so `tokenwatch_hooks{state="refused"} == 1` finds every node
/// running without a hook.
fn hooks(metrics: &Metrics, out: &mut Out) {
    const NAME: &str = "tokenwatch_hooks";
    out.family(
        NAME,
        "gauge",
        "eBPF programs by state on this kernel: attached, loaded, refused, absent, attach_failed.",
    );
    for report in metrics.hooks.snapshot() {
        for state in HookState::ALL {
            out.sample(NAME, &[("hook", report.program), ("state", state.name())], u64::from(report.state == state));
        }
    }
}

/// Suppressions per policy exception.
fn policy(policy: &Policy, out: &mut Out) {
    const NAME: &str = "tokenwatch_policy_suppressed_total";
    out.family(NAME, "counter", "Alerts dropped by a policy exception, by exception id.");
    for (id, _reason, count) in policy.suppression_counts() {
        out.sample(NAME, &[("exception", &id)], count);
    }
}

/// The delivery log's depth and health, and the OTLP exporter's lag.
fn spool(metrics: &Metrics, log: &Spool, out: &mut Out) {
    let (last, oldest, stats) = (log.last_sequence(), log.oldest_sequence(), log.stats());
    let held = oldest.map_or(0, |oldest| last.saturating_sub(oldest) + 1);
    let gauges = [
        ("tokenwatch_spool_last_sequence", "Sequence of the newest alert in the delivery log.", last),
        ("tokenwatch_spool_alerts", "Alerts held in the delivery log (its depth).", held),
        ("tokenwatch_spool_bytes", "Bytes the delivery log holds on disk.", stats.disk_bytes),
        ("tokenwatch_spool_segments", "Segment files of the delivery log.", stats.segments as u64),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], value);
    }
    let counters = [
        ("tokenwatch_spool_corrupt_reads_total", "Unreadable records met by readers.", stats.corrupt_reads),
        ("tokenwatch_spool_deleted_segments_total", "Segments deleted by the size bound.", stats.deleted_segments),
        (
            "tokenwatch_spool_write_failures_total",
            "Alerts the delivery log refused (disk full?): on stdout only.",
            metrics.spool_write_failures.load(Ordering::Relaxed),
        ),
    ];
    for (name, help, value) in counters {
        out.family(name, "counter", help);
        out.sample(name, &[], value);
    }
    if metrics.otlp_enabled.load(Ordering::Relaxed) {
        let acked = metrics.otlp_acknowledged.load(Ordering::Relaxed);
        out.family("tokenwatch_otlp_export_lag", "gauge", "Alerts written but not yet acknowledged by the collector.");
        out.sample("tokenwatch_otlp_export_lag", &[], last.saturating_sub(acked));
    }
}

/// Hits and misses of the metadata caches.
fn caches(metrics: &Metrics, out: &mut Out) {
    const HITS: &str = "tokenwatch_metadata_cache_hits_total";
    const MISSES: &str = "tokenwatch_metadata_cache_misses_total";
    let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    out.family(HITS, "counter", "Metadata lookups answered from a cache (cri: containers, pods: the pod store).");
    out.sample(HITS, &[("cache", "cri")], load(&metrics.cri_cache_hits));
    out.sample(HITS, &[("cache", "pods")], load(&metrics.pod_store_hits));
    out.family(MISSES, "counter", "Metadata lookups the cache could not answer.");
    out.sample(MISSES, &[("cache", "cri")], load(&metrics.cri_cache_misses));
    out.sample(MISSES, &[("cache", "pods")], load(&metrics.pod_store_misses));
}

/// What the policy's blocks did and cover.
fn enforcement(metrics: &Metrics, out: &mut Out) {
    const ACTIONS: &str = "tokenwatch_enforcement_actions_total";
    out.family(ACTIONS, "counter", "Events the kernel acted on for a block entry, by action and block id.");
    let actions = metrics.enforcement.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    for ((action, block), count) in actions.iter() {
        out.sample(ACTIONS, &[("action", action), ("block", block)], *count);
    }
    let gauges = [
        (
            "tokenwatch_enforcement_cgroups",
            "Pod and container cgroups a block entry covers now.",
            &metrics.enforced_cgroups,
        ),
        ("tokenwatch_enforcement_fences", "Pods with a connect fence attached now.", &metrics.enforcement_fences),
        (
            "tokenwatch_enforcement_binaries",
            "Executables (per container) that block entries' binaries resolved to now.",
            &metrics.enforcement_binaries,
        ),
    ];
    for (name, help, value) in gauges {
        out.family(name, "gauge", help);
        out.sample(name, &[], value.load(Ordering::Relaxed));
    }
}

/// The text being written.
struct Out(String);

impl Out {
    /// `# HELP` and `# TYPE` lines of a family.
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line, label values escaped.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (key, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{key}=\"{}\"", escape(value));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', r"\\").replace('"', r#"\""#).replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppressions_spool_depth_and_export_lag_are_read_from_their_sources() {
        let text = "exceptions:\n  - id: ci-bots\n    reason: r\n    namespaces: [ci]\n";
        let policy = Policy::parse(std::path::Path::new("p.yaml"), text).expect("a policy");
        let mut alert = tokenwatch_proto::v1::Alert {
            rule: "token-read".to_owned(),
            kubernetes: Some(tokenwatch_proto::v1::KubernetesContext {
                namespace: "ci".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(policy.judge(&alert), crate::detect::policy::Verdict::Suppressed { .. }));
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Spool::open(dir.path(), 1 << 20, 1 << 16, "boot").expect("a spool");
        for _ in 0..3 {
            log.append(&mut alert).expect("append");
        }
        let metrics = Metrics::default();
        metrics.otlp_enabled.store(true, Ordering::Relaxed);
        metrics.otlp_acknowledged.store(1, Ordering::Relaxed);
        let mut out = Out(String::new());
        super::policy(&policy, &mut out);
        spool(&metrics, &log, &mut out);
        let text = out.0;
        assert!(text.contains("tokenwatch_policy_suppressed_total{exception=\"ci-bots\"} 1\n"), "{text}");
        assert!(text.contains("tokenwatch_spool_alerts 3\n"), "{text}");
        assert!(text.contains("tokenwatch_spool_last_sequence 3\n"), "{text}");
        assert!(text.contains("tokenwatch_otlp_export_lag 2\n"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn alerts_and_caches_render_with_labels_and_types() {
        let metrics = Metrics::default();
        metrics.alert_delivered("token-read", "HIGH");
        metrics.alert_delivered("token-read", "HIGH");
        Metrics::bump(&metrics.cri_cache_misses);
        metrics.subscribers.store(3, Ordering::Relaxed);
        let text = render(&metrics);
        assert!(text.contains("# TYPE tokenwatch_alerts_total counter\n"), "{text}");
        assert!(text.contains("tokenwatch_alerts_total{rule=\"token-read\",severity=\"HIGH\"} 2\n"), "{text}");
        assert!(text.contains("tokenwatch_metadata_cache_misses_total{cache=\"cri\"} 1\n"), "{text}");
        assert!(text.contains("tokenwatch_grpc_subscribers 3\n"), "{text}");
        assert!(text.contains("tokenwatch_ready 0\n"), "{text}");
        assert!(!text.contains("tokenwatch_otlp_export_lag"), "no exporter, no lag: {text}");
        assert!(text.contains("# TYPE tokenwatch_enforcement_actions_total counter\n"), "declared before any: {text}");
    }

    #[test]
    fn enforcement_renders_actions_and_what_is_covered() {
        let metrics = Metrics::default();
        metrics.enforcement_action("ENFORCEMENT_ACTION_KILLED", "no-reads");
        metrics.enforced_cgroups.store(3, Ordering::Relaxed);
        metrics.enforcement_fences.store(2, Ordering::Relaxed);
        metrics.enforcement_binaries.store(4, Ordering::Relaxed);
        let text = render(&metrics);
        let want = "tokenwatch_enforcement_actions_total{action=\"ENFORCEMENT_ACTION_KILLED\",block=\"no-reads\"} 1\n";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("tokenwatch_enforcement_cgroups 3\n"), "{text}");
        assert!(text.contains("tokenwatch_enforcement_fences 2\n"), "{text}");
        assert!(text.contains("tokenwatch_enforcement_binaries 4\n"), "{text}");
    }
}
