//! Prometheus metrics and the health endpoints, on one small HTTP listener.
//!
//! The figures live in one process-wide [`Metrics`] ([`global`]): the stages
//! that count (the pipeline, the metadata caches, the gRPC stream, the OTLP
//! exporter) bump atomics without being handed a registry, and the sources
//! that already keep their own numbers (kernel counters, the delivery log,
//! the policy's per-exception counts) are read when Prometheus scrapes, so
//! nothing is counted twice. Kubelet's gRPC probes cannot speak TLS, so the
//! probes read the gRPC server's health state here instead (`/readyz`).

mod render;
mod server;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, LazyLock, Mutex, OnceLock, PoisonError,
    },
};

pub use render::render;
pub use server::{serve, MetricsError};

use crate::{deliver::spool::Spool, detect::policy::Policy, kernel::counters::CounterMap};

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
    /// What the kernel did because of a block entry, by (action, block id).
    enforcement: Mutex<BTreeMap<(String, String), u64>>,
    /// Cgroups the enforcement map covers now.
    pub enforced_cgroups: AtomicU64,
    /// Pod cgroups with a connect fence attached now.
    pub enforcement_fences: AtomicU64,
    /// Executables block entries' `binaries` resolved to, over all covered
    /// containers, now.
    pub enforcement_binaries: AtomicU64,
    /// What became of each eBPF program on this kernel (`tokenwatch_hooks`,
    /// `/readyz`'s body).
    pub hooks: crate::kernel::hook_status::HookStatus,
    /// Sources read at scrape time, registered once by the daemon.
    sources: OnceLock<Sources>,
}

/// Figures other components keep themselves; read when scraped.
struct Sources {
    /// The programs' per-hook, per-CPU counters.
    kernel: Arc<CounterMap>,
    /// The delivery log (depth, size, damage).
    spool: Spool,
    /// The policy in force (suppressions per exception); a reload replaces it.
    policy: tokio::sync::watch::Receiver<Arc<Policy>>,
}

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

    /// Registers the sources read at scrape time. The first registration
    /// wins: one daemon runs per process.
    pub fn register(&self, kernel: Arc<CounterMap>, spool: Spool, policy: tokio::sync::watch::Receiver<Arc<Policy>>) {
        let _ = self.sources.set(Sources { kernel, spool, policy });
    }

    /// Ready: hooks attached and the gRPC server serving.
    pub fn ready(&self) -> bool {
        self.hooks_attached.load(Ordering::Relaxed) && self.grpc_serving.load(Ordering::Relaxed)
    }

    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
