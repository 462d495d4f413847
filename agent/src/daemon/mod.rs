//! The running agent: loads the hooks, starts one task per stage, and stops
//! them all through one cancellation token (SIGTERM and SIGINT cancel it; a
//! failing task cancels it too, and its error is returned).

mod cluster;
mod health;
mod inventory;
mod reload;
mod scanner;
mod tasks;

use std::{path::Path, sync::Arc, time::SystemTime};

use tokio::{sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    config::Config,
    deliver::spool::Spool,
    deliver::stdout::StdoutError,
    detect::{health::HealthAlerts, policy::Policy, Judge},
    enforce::{BlockNames, Enforcer},
    kernel::{
        clock::BootClock,
        loader::HookMaps,
        offsets::{resolve_running_kernel, OffsetsError},
        reader::{self, ReaderError},
        watchlist::WatchlistError,
        Hooks, LoadError,
    },
    metadata::{
        cri::CriCache,
        enrich::{Enricher, PodSource},
        kube::KubeError,
    },
};

/// Events queued between the reader and the pipeline. When full, the reader
/// waits and the kernel ring buffer absorbs (and counts) the excess.
const EVENT_QUEUE: usize = 4096;
/// Loss alerts queued for the pipeline: one a second at most, so a few
/// suffice; the watcher waits when it is full.
const LOSS_QUEUE: usize = 16;

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Offsets could not be resolved from this kernel's BTF.
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    /// The hooks could not be loaded or attached.
    #[error("loading the eBPF programs{}", .0.hint())]
    Load(#[from] LoadError),
    /// A watch map update was refused.
    #[error(transparent)]
    Watchlist(#[from] WatchlistError),
    /// The ring buffer could not be read.
    #[error(transparent)]
    Reader(#[from] ReaderError),
    /// Alerts could not be written.
    #[error(transparent)]
    Stdout(#[from] StdoutError),
    /// The Kubernetes API configuration given cannot work.
    #[error(transparent)]
    Kube(#[from] KubeError),
    /// The policy file is unreadable or invalid.
    #[error(transparent)]
    Policy(#[from] crate::detect::policy::PolicyError),
    /// The delivery log failed.
    #[error("delivery log: {0}")]
    Spool(#[from] crate::deliver::spool::SpoolError),
    /// The gRPC server failed.
    #[error(transparent)]
    Grpc(#[from] crate::deliver::grpc::GrpcError),
    /// The OTLP exporter failed (not the collector: its failures are retried).
    #[error(transparent)]
    Otlp(#[from] crate::deliver::otlp::OtlpError),
    /// The metrics listener failed.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// A signal handler could not be installed.
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    /// The inventory's state directory is unusable.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    /// A task panicked.
    #[error("task {0} panicked")]
    Panic(String),
}

impl DaemonError {
    /// Whether the error is the user's input (the policy file), not a
    /// failure of the agent: the CLI exits 2 for it.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, DaemonError::Policy(_))
    }
}

/// The agent's tasks; each reports its name with its result.
type Tasks = JoinSet<(&'static str, Result<(), DaemonError>)>;

/// Runs until `cancel` fires or a task fails. Hooks are detached on return.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    let policy = Arc::new(match &config.policy {
        Some(path) => Policy::load(path)?,
        None => Policy::default_policy(),
    });
    for rule in crate::detect::rules::ALL.iter().filter(|r| !policy.rule_enabled(r.id)) {
        tracing::info!(rule = rule.id, "rule disabled by policy");
    }
    let boot_id = run_id();
    let spool = Spool::open(&config.spool_dir, config.spool_max_bytes, SPOOL_SEGMENT_BYTES, &boot_id)?;
    tracing::info!(dir = %config.spool_dir.display(), last_sequence = spool.last_sequence(), "delivery log open");
    let inventory = crate::inventory::Inventory::open(&config.state_dir, &config.node_name)?;
    let offsets = resolve_running_kernel()?;
    let debug_logs = tracing::enabled!(target: "tokenwatch_ebpf", tracing::Level::DEBUG);
    let mut hooks = Hooks::load(&offsets, config.ring_buffer_bytes, debug_logs, own_tgid(&config.host_proc))?;
    let HookMaps { events, files, endpoints, counters, logger, enforcement } = hooks.take_maps()?;
    let counters = Arc::new(counters);
    let (policy_tx, policy) = tokio::sync::watch::channel(policy);
    crate::metrics::global().register(Arc::clone(&counters), spool.clone(), policy.clone());
    log_enforcement(&policy.borrow());
    let mut set = Tasks::new();

    // The first scan fills the map before the hooks go live, so everything
    // present at start-up is watched from the first event.
    let pods = cluster::start(&config, endpoints, &mut set, &cancel).await?;
    let store = match &pods {
        PodSource::Api(store) => Some(store.clone()),
        PodSource::Standalone => None,
    };
    let store_for_inventory = store.clone();
    let store_for_enforcer = store.clone();
    let mut scanner = scanner::Scanner::new(config.token_paths.clone(), config.host_proc.clone(), files, store);
    let initial = scanner.scan_once().await?;
    let (snapshot_tx, snapshot_rx) = tokio::sync::watch::channel(Arc::clone(&initial));
    scanner.announce(&initial);
    let cri = CriCache::new(config.cri_socket.clone());
    match cri.socket() {
        Ok(socket) => tracing::info!(socket = %socket.display(), "container metadata from the runtime over CRI"),
        Err(reason) => tracing::warn!(%reason, "no container runtime: alerts will lack container metadata"),
    }
    let cri_for_enforcer = cri.clone();
    let rescan = Arc::new(tokio::sync::Notify::new());
    let enricher = Enricher::new(cri, pods, snapshot_rx, Arc::clone(&rescan), config.host_proc.clone());
    let spool_health = HealthAlerts::new(config.node_name.clone(), format!("{boot_id}-spool"));
    let loss_alerts = HealthAlerts::new(config.node_name.clone(), format!("{boot_id}-loss"));
    let blocks = BlockNames::default();
    let judge =
        Judge::new(config.node_name.clone(), boot_id, BootClock::measure(), crate::detect::chain::DEFAULT_WINDOW)
            .naming_blocks(blocks.clone());

    let attached = hooks.attach()?.join(",");
    tracing::info!(hooks = %attached, "hooks attached");
    // The enforcer attaches fences through the hooks while it runs; the
    // hooks are dropped (everything detached) once every task has stopped.
    let hooks = Arc::new(std::sync::Mutex::new(hooks));
    let root = crate::kernel::cgroup_hooks::unified_root();
    let enforcer = Enforcer::new(Arc::clone(&hooks), enforcement, root, store_for_enforcer, cri_for_enforcer, blocks);
    let (watched, token) = (policy.clone(), cancel.clone());
    set.spawn(async move {
        enforcer.run(watched, token).await;
        ("enforce", Ok(()))
    });
    crate::metrics::global().hooks_attached.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(addr) = config.metrics_listen {
        let token = cancel.clone();
        set.spawn(async move { ("metrics", crate::metrics::serve(addr, token).await.map_err(Into::into)) });
    }

    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    let token = cancel.clone();
    set.spawn(async move {
        let result = reader::read_events(events, event_tx, token).await;
        if let Ok(stats) = &result {
            tracing::info!(delivered = stats.delivered, undecodable = stats.undecodable, "event reader stopped");
        }
        ("reader", result.map(drop).map_err(DaemonError::from))
    });
    let token = cancel.clone();
    set.spawn(async move { ("scanner", scanner.run(config.rescan_interval, snapshot_tx, rescan, token).await) });
    let (loss_tx, loss_rx) = mpsc::channel(LOSS_QUEUE);
    let (counters_for_losses, token) = (Arc::clone(&counters), cancel.clone());
    set.spawn(async move { ("losses", health::watch_losses(counters_for_losses, loss_alerts, loss_tx, token).await) });
    let dedup_window = config.dedup_window;
    let health = tasks::Health { losses: loss_rx, alerts: spool_health };
    let delivery =
        tasks::Delivery { spool: spool.clone(), format: config.stdout, health, inventory: inventory.clone() };
    set.spawn(
        async move { ("pipeline", tasks::pipeline(event_rx, enricher, judge, policy, dedup_window, delivery).await) },
    );
    let (path, token) = (config.policy.clone(), cancel.clone());
    set.spawn(async move { ("policy-reload", reload::reload_policy_on_hangup(path, policy_tx, token).await) });
    let (book, token) = (inventory.clone(), cancel.clone());
    set.spawn(async move { ("inventory", inventory::keep(book, store_for_inventory, token).await) });
    let (listen, tls, log, token) =
        (config.grpc_listen.clone(), config.grpc_tls.clone(), spool.clone(), cancel.clone());
    let book = inventory.clone();
    set.spawn(
        async move { ("grpc", crate::deliver::grpc::serve(listen, tls, log, book, token).await.map_err(Into::into)) },
    );
    if let Some(otlp) = config.otlp.clone() {
        crate::metrics::global().otlp_enabled.store(true, std::sync::atomic::Ordering::Relaxed);
        let (log, token) = (spool.clone(), cancel.clone());
        set.spawn(async move { ("otlp", crate::deliver::otlp::export(log, otlp, token).await.map_err(Into::into)) });
    }
    let (log, token) = (spool.clone(), cancel.clone());
    set.spawn(async move { ("spool-sync", tasks::sync_spool(log, token).await) });
    if let Some(logger) = logger {
        let token = cancel.clone();
        set.spawn(async move { ("ebpf-log", reader::forward_logs(logger, token).await.map_err(DaemonError::from)) });
    }

    let first_error = supervise(set, &cancel).await;
    // The pipeline has counted its last event: keep all of it.
    if let Err(error) = inventory.save() {
        tracing::warn!(%error, "saving the inventory");
    }
    // Every writer has stopped: mark the log cleanly closed, so the next
    // start continues its sequence exactly.
    if let Err(error) = spool.close() {
        tracing::warn!(%error, "closing the delivery log");
    }
    match counters.read() {
        Ok(counters) => tracing::info!(counters = %counters.summary(), "kernel counters"),
        Err(error) => tracing::warn!(%error, "reading kernel counters"),
    }
    drop(hooks);
    tracing::info!("hooks detached");
    first_error.map_or(Ok(()), Err)
}

/// Waits for every task; the first failure cancels the rest and is returned.
async fn supervise(mut set: Tasks, cancel: &CancellationToken) -> Option<DaemonError> {
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let (name, result) = match joined {
            Ok(done) => done,
            Err(error) => ("?", Err(DaemonError::Panic(error.to_string()))),
        };
        if let Err(error) = result {
            tracing::error!(task = name, %error, "task failed; shutting down");
            cancel.cancel();
            first_error.get_or_insert(error);
        }
    }
    first_error
}

/// Says at start what the policy's blocks will do, so an operator sees a
/// refusing policy in the log before the first refusal.
fn log_enforcement(policy: &Policy) {
    for (block, enforce) in policy.blocks() {
        let mode = if enforce { "enforce" } else { "dry-run" };
        tracing::info!(block = %block.id, reason = %block.reason, mode, "block entry");
    }
}

/// Segment size of the delivery log.
const SPOOL_SEGMENT_BYTES: u64 = 4 << 20;

/// A prefix that makes alert ids unique across agent restarts.
fn run_id() -> String {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{:x}", nanos, std::process::id())
}

/// The agent's own tgid as the kernel (the host's pid namespace) knows it,
/// so the programs skip its own token reads and API calls. In a pod without
/// hostPID, `std::process::id()` is the pid in the pod's namespace; the
/// host's /proc names the host's pid in its `self` link.
fn own_tgid(host_proc: &Path) -> u32 {
    let link = host_proc.join("self");
    match std::fs::read_link(&link).ok().and_then(|target| target.to_str()?.parse().ok()) {
        Some(tgid) => tgid,
        None => {
            tracing::warn!(link = %link.display(), "cannot read the agent's host pid; assuming this pid namespace is the host's");
            std::process::id()
        }
    }
}
