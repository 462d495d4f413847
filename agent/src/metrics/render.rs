//! The agent's own counters registered with prometheus-client, and a
//! scrape: its text of every metric and every registered source.

use std::sync::PoisonError;

use prometheus_client::encoding::prometheus_text;

use super::Metrics;

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Registers `metrics`' own families. The registry appends the `_total` of
/// counters and the full stop of each help text.
pub(super) fn register(metrics: &Metrics) {
    let mut registry = metrics.registry.lock().unwrap_or_else(PoisonError::into_inner);
    registry.register("tokenwatch_alerts", "Alerts delivered, by rule and severity", metrics.alerts.clone());
    registry.register("tokenwatch_grpc_subscribers", "gRPC subscribers connected now", metrics.subscribers.clone());
    registry.register(
        "tokenwatch_metadata_cache_hits",
        "Metadata lookups answered from a cache (cri: containers, pods: the pod store)",
        metrics.cache_hits.clone(),
    );
    registry.register(
        "tokenwatch_metadata_cache_misses",
        "Metadata lookups the cache could not answer",
        metrics.cache_misses.clone(),
    );
    registry.register(
        "tokenwatch_spool_write_failures",
        "Alerts the delivery log refused (disk full?): on stdout only",
        metrics.spool_write_failures.clone(),
    );
    registry.register(
        "tokenwatch_enforcement_actions",
        "Events the kernel acted on for a block entry, by action and block id",
        metrics.enforcement.clone(),
    );
    let gauges = [
        (
            "tokenwatch_enforcement_cgroups",
            "Pod and container cgroups a block entry covers now",
            &metrics.enforced_cgroups,
        ),
        ("tokenwatch_enforcement_fences", "Pods with a connect fence attached now", &metrics.enforcement_fences),
        (
            "tokenwatch_enforcement_binaries",
            "Executables (per container) that block entries' binaries resolved to now",
            &metrics.enforcement_binaries,
        ),
        ("tokenwatch_ready", "1 when the hooks are attached and the gRPC server serves", &metrics.ready),
    ];
    for (name, help, gauge) in gauges {
        registry.register(name, help, gauge.clone());
    }
}

/// Renders every metric, or says which source failed to write (a 500 for
/// that scrape).
pub fn render(metrics: &Metrics) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(4096);
    prometheus_text::encode(&mut text, &metrics.registry.lock().unwrap_or_else(PoisonError::into_inner))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{family, single, Cache, Kind};

    #[test]
    fn alerts_and_caches_render_with_labels_and_types() {
        let metrics = Metrics::default();
        metrics.alert_delivered("token-read", "HIGH");
        metrics.alert_delivered("token-read", "HIGH");
        metrics.cache_lookup(Cache::Cri, false);
        metrics.subscribers.set(3);
        let text = render(&metrics).expect("renders");
        assert!(text.contains("# TYPE tokenwatch_alerts_total counter\n"), "{text}");
        assert!(text.contains("# HELP tokenwatch_alerts_total Alerts delivered, by rule and severity.\n"), "{text}");
        assert!(text.contains("tokenwatch_alerts_total{rule=\"token-read\",severity=\"HIGH\"} 2\n"), "{text}");
        assert!(text.contains("tokenwatch_metadata_cache_misses_total{cache=\"cri\"} 1\n"), "{text}");
        assert!(text.contains("tokenwatch_metadata_cache_hits_total{cache=\"pods\"} 0\n"), "before any: {text}");
        assert!(text.contains("tokenwatch_grpc_subscribers 3\n"), "{text}");
        assert!(text.contains("tokenwatch_ready 0\n"), "{text}");
        assert!(!text.contains("tokenwatch_otlp_export_lag"), "no exporter, no lag: {text}");
        // prometheus-client leaves out a labelled family with no row yet.
        assert!(!text.contains("tokenwatch_enforcement_actions_total"), "{text}");
    }

    #[test]
    fn ready_is_one_once_hooks_and_grpc_are_both_up() {
        let metrics = Metrics::default();
        metrics.set_hooks_attached();
        assert!(render(&metrics).expect("renders").contains("tokenwatch_ready 0\n"));
        metrics.set_grpc_serving(true);
        assert!(render(&metrics).expect("renders").contains("tokenwatch_ready 1\n"));
        metrics.set_grpc_serving(false);
        assert!(render(&metrics).expect("renders").contains("tokenwatch_ready 0\n"));
    }

    #[test]
    fn registered_sources_write_their_families_with_escaped_labels() {
        let metrics = Metrics::default();
        metrics.register_source(|out| {
            family(out, "tokenwatch_x_total", Kind::Counter, "X.", [([("k", "a\"b\\c\nd")], 7)])?;
            single(out, "tokenwatch_y", Kind::Gauge, "Y.", 2)
        });
        let text = render(&metrics).expect("renders");
        let want = "# HELP tokenwatch_x_total X.\n# TYPE tokenwatch_x_total counter\n\
                    tokenwatch_x_total{k=\"a\\\"b\\\\c\\nd\"} 7\n";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("# TYPE tokenwatch_y gauge\ntokenwatch_y 2\n"), "{text}");
    }

    #[test]
    fn a_failing_source_fails_the_scrape_not_the_agent() {
        let metrics = Metrics::default();
        metrics.register_source(|_| Err(std::fmt::Error));
        assert!(render(&metrics).is_err());
    }

    #[test]
    fn enforcement_renders_actions_and_what_is_covered() {
        let metrics = Metrics::default();
        metrics.enforcement_action("ENFORCEMENT_ACTION_KILLED", "no-reads");
        metrics.enforced_cgroups.set(3);
        metrics.enforcement_fences.set(2);
        metrics.enforcement_binaries.set(4);
        let text = render(&metrics).expect("renders");
        let want = "tokenwatch_enforcement_actions_total{action=\"ENFORCEMENT_ACTION_KILLED\",block=\"no-reads\"} 1\n";
        assert!(text.contains(want), "{text}");
        assert!(text.contains("tokenwatch_enforcement_cgroups 3\n"), "{text}");
        assert!(text.contains("tokenwatch_enforcement_fences 2\n"), "{text}");
        assert!(text.contains("tokenwatch_enforcement_binaries 4\n"), "{text}");
    }
}
