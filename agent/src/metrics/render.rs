//! The agent's own counters in the Prometheus text format, then every
//! registered source's families.

use std::sync::{atomic::Ordering, PoisonError};

use super::{Exposition, Metrics};

/// Renders every metric. Families with no samples yet are still declared,
/// so a dashboard sees the name before the first alert.
pub fn render(metrics: &Metrics) -> String {
    let mut out = Exposition::new();
    for source in metrics.sources.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        source(&mut out);
    }
    out.family("tokenwatch_alerts_total", "counter", "Alerts delivered, by rule and severity.");
    for ((rule, severity), count) in metrics.alerts.lock().unwrap_or_else(PoisonError::into_inner).iter() {
        out.sample("tokenwatch_alerts_total", &[("rule", rule), ("severity", severity)], *count);
    }
    out.family("tokenwatch_grpc_subscribers", "gauge", "gRPC subscribers connected now.");
    out.sample("tokenwatch_grpc_subscribers", &[], metrics.subscribers.load(Ordering::Relaxed));
    caches(metrics, &mut out);
    enforcement(metrics, &mut out);
    out.family("tokenwatch_ready", "gauge", "1 when the hooks are attached and the gRPC server serves.");
    out.sample("tokenwatch_ready", &[], u64::from(metrics.ready()));
    out.into_string()
}

/// Hits and misses of the metadata caches.
fn caches(metrics: &Metrics, out: &mut Exposition) {
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
fn enforcement(metrics: &Metrics, out: &mut Exposition) {
    const ACTIONS: &str = "tokenwatch_enforcement_actions_total";
    out.family(ACTIONS, "counter", "Events the kernel acted on for a block entry, by action and block id.");
    let actions = metrics.enforcement.lock().unwrap_or_else(PoisonError::into_inner);
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn registered_sources_write_their_families() {
        let metrics = Metrics::default();
        metrics.register_source(|out| {
            out.family("tokenwatch_x_total", "counter", "X.");
            out.sample("tokenwatch_x_total", &[("k", "v")], 7);
        });
        let text = render(&metrics);
        assert!(text.contains("# TYPE tokenwatch_x_total counter\ntokenwatch_x_total{k=\"v\"} 7\n"), "{text}");
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
