//! Prometheus metrics and the health endpoints, on one small HTTP listener.
//!
//! The figures live in one process-wide [`Metrics`] ([`global`]): the stages
//! that count (the pipeline, the metadata caches, the gRPC stream, the OTLP
//! exporter) bump its counters without being handed a registry, and the parts
//! that already keep their own numbers (kernel counters, hook states, the
//! delivery log, the policy's per-exception counts, the inventory) are
//! registered by the daemon as sources, closures that write their families
//! when Prometheus scrapes, so nothing is counted twice. This module knows
//! none of them: every part depends on it, it on no part. Kubelet's gRPC
//! probes cannot speak TLS, so the probes read the gRPC server's health
//! state here instead (`/readyz`). prometheus-client keeps the metrics and
//! writes the Prometheus text format.

mod render;
mod server;
mod source;

use std::sync::{
    atomic::{AtomicBool, AtomicU64, Ordering},
    LazyLock, Mutex, OnceLock, PoisonError,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

pub use render::{render, CONTENT_TYPE};
pub use server::{serve, MetricsError};
pub use source::{family, single, FamilyWriter, Kind, Scrape};

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

/// Everything the agent counts for Prometheus: its own counters as
/// prometheus-client metrics, and the sources registered beside them.
pub struct Metrics {
    /// Alerts delivered, by rule and severity.
    alerts: Family<AlertLabels, Counter>,
    /// Metadata lookups answered from a cache, by cache.
    cache_hits: Family<CacheLabels, Counter>,
    /// Metadata lookups the cache could not answer, by cache.
    cache_misses: Family<CacheLabels, Counter>,
    /// Alerts the delivery log refused (a full disk): they went to stdout only.
    pub spool_write_failures: Counter,
    /// gRPC subscribers connected now.
    pub subscribers: Gauge,
    /// The last sequence the OTLP collector acknowledged; 0 before any.
    pub otlp_acknowledged: AtomicU64,
    /// Whether an OTLP exporter runs (export lag is only meaningful then).
    pub otlp_enabled: AtomicBool,
    /// The kernel hooks are attached: events are being seen.
    hooks_attached: AtomicBool,
    /// The gRPC server is serving (its health service says SERVING).
    grpc_serving: AtomicBool,
    /// 1 when both of the above hold: `tokenwatch_ready`.
    ready: Gauge,
    /// When the event pipeline last went round its loop (ms since the Unix
    /// epoch; 0 before it started): `/healthz` fails when it stops turning.
    pub pipeline_beat_ms: AtomicU64,
    /// What the kernel did because of a block entry, by action and block id.
    enforcement: Family<ActionLabels, Counter>,
    /// Cgroups the enforcement map covers now.
    pub enforced_cgroups: Gauge,
    /// Pod cgroups with a connect fence attached now.
    pub enforcement_fences: Gauge,
    /// Executables block entries' `binaries` resolved to, over all covered
    /// containers, now.
    pub enforcement_binaries: Gauge,
    /// Every metric above plus the registered sources, in scrape order.
    registry: Mutex<Registry>,
    /// What `/readyz` adds to its body (the hooks this kernel refused).
    ready_detail: OnceLock<Detail>,
}

/// The labels of `tokenwatch_alerts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    rule: String,
    severity: String,
}

/// The labels of `tokenwatch_enforcement_actions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
    block: String,
}

/// The label of the metadata cache families.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    cache: &'static str,
}

/// A metadata cache whose hits and misses are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cache {
    /// The CRI container cache.
    Cri,
    /// The pod store.
    Pods,
}

impl Cache {
    fn labels(self) -> CacheLabels {
        CacheLabels { cache: if self == Cache::Cri { "cri" } else { "pods" } }
    }
}

/// Lines for `/readyz`'s body.
type Detail = Box<dyn Fn() -> String + Send + Sync>;

impl Default for Metrics {
    /// Every family registered; the caches' rows exist at zero, so a
    /// dashboard sees them before the first lookup.
    fn default() -> Self {
        let metrics = Metrics {
            alerts: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            spool_write_failures: Counter::default(),
            subscribers: Gauge::default(),
            otlp_acknowledged: AtomicU64::new(0),
            otlp_enabled: AtomicBool::new(false),
            hooks_attached: AtomicBool::new(false),
            grpc_serving: AtomicBool::new(false),
            ready: Gauge::default(),
            pipeline_beat_ms: AtomicU64::new(0),
            enforcement: Family::default(),
            enforced_cgroups: Gauge::default(),
            enforcement_fences: Gauge::default(),
            enforcement_binaries: Gauge::default(),
            registry: Mutex::new(Registry::default()),
            ready_detail: OnceLock::new(),
        };
        for cache in [Cache::Cri, Cache::Pods] {
            drop(metrics.cache_hits.get_or_create(&cache.labels()));
            drop(metrics.cache_misses.get_or_create(&cache.labels()));
        }
        render::register(&metrics);
        metrics
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Counts one delivered alert of `rule` at `severity`.
    pub fn alert_delivered(&self, rule: &str, severity: &str) {
        self.alerts.get_or_create(&AlertLabels { rule: rule.to_owned(), severity: severity.to_owned() }).inc();
    }

    /// Counts one event the kernel acted on (`action` as the proto names it).
    pub fn enforcement_action(&self, action: &str, block: &str) {
        self.enforcement.get_or_create(&ActionLabels { action: action.to_owned(), block: block.to_owned() }).inc();
    }

    /// Counts one lookup in `cache`, answered from it (`hit`) or not.
    pub fn cache_lookup(&self, cache: Cache, hit: bool) {
        let counters = if hit { &self.cache_hits } else { &self.cache_misses };
        counters.get_or_create(&cache.labels()).inc();
    }

    /// Adds a part read at scrape time: `source` writes its families (with
    /// [`family`] and [`single`]). A source that fails ends that scrape
    /// with a 500, never the agent.
    pub fn register_source(&self, source: impl Fn(&mut Scrape<'_>) -> std::fmt::Result + Send + Sync + 'static) {
        let collector = source::SourceCollector(Box::new(source));
        self.registry.lock().unwrap_or_else(PoisonError::into_inner).register_collector(Box::new(collector));
    }

    /// Notes that the kernel hooks are attached.
    pub fn set_hooks_attached(&self) {
        self.hooks_attached.store(true, Ordering::Relaxed);
        self.ready.set(i64::from(self.ready()));
    }

    /// Notes whether the gRPC server serves.
    pub fn set_grpc_serving(&self, up: bool) {
        self.grpc_serving.store(up, Ordering::Relaxed);
        self.ready.set(i64::from(self.ready()));
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
