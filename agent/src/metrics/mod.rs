//! Prometheus metrics and the health endpoints, on one small HTTP listener.
//!
//! The figures live in one process-wide [`Metrics`] ([`global`]): the stages
//! that count (the pipeline, the metadata caches, the gRPC stream, the OTLP
//! exporter) bump atomics without being handed a registry, and the parts
//! that already keep their own numbers (kernel counters, hook states, the
//! delivery log, the policy's per-exception counts, the inventory) are
//! registered by the daemon as sources, closures that write their families
//! when Prometheus scrapes, so nothing is counted twice. This module knows
//! none of them: every part depends on it, it on no part. Kubelet's gRPC probes cannot speak TLS, so the
//! probes read the gRPC server's health state here instead (`/readyz`).

mod exposition;
mod render;
mod server;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        LazyLock, Mutex, OnceLock, PoisonError,
    },
};

pub use exposition::Exposition;
pub use render::render;
pub use server::{serve, MetricsError};

/// How often the event pipeline notes that it turns, even when idle.
pub const PIPELINE_BEAT: std::time::Duration = std::time::Duration::from_secs(5);
/// A pipeline silent this long is stuck (a sink that never returns, a
/// deadlock): `/healthz` fails, and kubelet restarts the agent.
pub const PIPELINE_STALE: std::time::Duration = std::time::Duration::from_secs(60);

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// The liveness verdict for a pipeline that last turned at `beat_ms`.
fn liveness(beat_ms: u64, now_ms: u64) -> Result<String, String> {
    if beat_ms == 0 {
        return Ok("ok: starting\n".to_owned());
    }
    let silent = std::time::Duration::from_millis(now_ms.saturating_sub(beat_ms));
    if silent > PIPELINE_STALE {
        Err(format!("stuck: the event pipeline has not turned for {} s\n", silent.as_secs()))
    } else {
        Ok(format!("ok: the event pipeline turned {} s ago\n", silent.as_secs()))
    }
}

/// Everything the agent counts for Prometheus.
#[derive(Default)]
pub struct Metrics {
    /// Alerts delivered, by (rule, severity).
    alerts: Mutex<BTreeMap<(String, String), u64>>,
    /// Container lookups answered from the CRI cache.
    pub cri_cache_hits: AtomicU64,
    /// Container lookups that had to ask the runtime.
    pub cri_cache_misses: AtomicU64,
    /// Pod lookups answered from the pod store.
    pub pod_store_hits: AtomicU64,
    /// Pod lookups for a pod the store does not (yet) know.
    pub pod_store_misses: AtomicU64,
    /// Alerts the delivery log refused (a full disk): they went to stdout only.
    pub spool_write_failures: AtomicU64,
    /// gRPC subscribers connected now.
    pub subscribers: AtomicI64,
    /// The last sequence the OTLP collector acknowledged; 0 before any.
    pub otlp_acknowledged: AtomicU64,
    /// Whether an OTLP exporter runs (export lag is only meaningful then).
    pub otlp_enabled: AtomicBool,
    /// The kernel hooks are attached: events are being seen.
    pub hooks_attached: AtomicBool,
    /// The gRPC server is serving (its health service says SERVING).
    pub grpc_serving: AtomicBool,
    /// When the event pipeline last went round its loop (ms since the Unix
    /// epoch; 0 before it started): `/healthz` fails when it stops turning.
    pub pipeline_beat_ms: AtomicU64,
    /// What the kernel did because of a block entry, by (action, block id).
    enforcement: Mutex<BTreeMap<(String, String), u64>>,
    /// Cgroups the enforcement map covers now.
    pub enforced_cgroups: AtomicU64,
    /// Pod cgroups with a connect fence attached now.
    pub enforcement_fences: AtomicU64,
    /// Executables block entries' `binaries` resolved to, over all covered
    /// containers, now.
    pub enforcement_binaries: AtomicU64,
    /// Parts read at scrape time, each writing its own families.
    sources: Mutex<Vec<Source>>,
    /// What `/readyz` adds to its body (the hooks this kernel refused).
    ready_detail: OnceLock<Detail>,
}

/// A part's families, written when scraped.
type Source = Box<dyn Fn(&mut Exposition) + Send + Sync>;
/// Lines for `/readyz`'s body.
type Detail = Box<dyn Fn() -> String + Send + Sync>;

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts one delivered alert of `rule` at `severity`.
    pub fn alert_delivered(&self, rule: &str, severity: &str) {
        let mut alerts = self.alerts.lock().unwrap_or_else(PoisonError::into_inner);
        *alerts.entry((rule.to_owned(), severity.to_owned())).or_default() += 1;
    }

    /// Counts one event the kernel acted on (`action` as the proto names it).
    pub fn enforcement_action(&self, action: &str, block: &str) {
        let mut actions = self.enforcement.lock().unwrap_or_else(PoisonError::into_inner);
        *actions.entry((action.to_owned(), block.to_owned())).or_default() += 1;
    }

    /// Adds a part read at scrape time: `source` writes its families.
    pub fn register_source(&self, source: impl Fn(&mut Exposition) + Send + Sync + 'static) {
        self.sources.lock().unwrap_or_else(PoisonError::into_inner).push(Box::new(source));
    }

    /// Sets what `/readyz` says besides ready or not (the first setting wins:
    /// one daemon runs per process).
    pub fn set_ready_detail(&self, detail: impl Fn() -> String + Send + Sync + 'static) {
        let _ = self.ready_detail.set(Box::new(detail));
    }

    /// `/readyz`'s detail lines, empty when none are set.
    pub fn ready_detail(&self) -> String {
        self.ready_detail.get().map(|detail| detail()).unwrap_or_default()
    }

    /// Ready: hooks attached and the gRPC server serving.
    /// Notes that the event pipeline is turning, for `/healthz`.
    pub fn pipeline_beat(&self) {
        self.pipeline_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// Whether the agent is alive, and why not: the event pipeline must
    /// have gone round within [`PIPELINE_STALE`] (it notes a turn at a tick
    /// of its own every [`PIPELINE_BEAT`]); before its first note the agent
    /// is starting.
    pub fn liveness(&self) -> Result<String, String> {
        liveness(self.pipeline_beat_ms.load(Ordering::Relaxed), now_ms())
    }

    /// Ready: the hooks attached and the gRPC server serving.
    pub fn ready(&self) -> bool {
        self.hooks_attached.load(Ordering::Relaxed) && self.grpc_serving.load(Ordering::Relaxed)
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_fails_once_the_pipeline_stops_turning() {
        let stale = u64::try_from(PIPELINE_STALE.as_millis()).unwrap_or(u64::MAX);
        assert_eq!(liveness(0, 1_000), Ok("ok: starting\n".to_owned()));
        assert_eq!(liveness(1_000, 6_000), Ok("ok: the event pipeline turned 5 s ago\n".to_owned()));
        assert_eq!(
            liveness(1_000, 1_000 + stale),
            Ok(format!("ok: the event pipeline turned {} s ago\n", stale / 1000))
        );
        let stuck = liveness(1_000, 2_000 + stale).expect_err("stuck");
        assert!(stuck.starts_with("stuck: the event pipeline has not turned for 61 s"), "{stuck}");
    }
}
