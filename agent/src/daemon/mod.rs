//! The running agent: loads the hooks, starts one task per stage, and stops
//! them all through one cancellation token (SIGTERM and SIGINT cancel it; a
//! failing task cancels it too, and its error is returned).

mod cluster;
mod health;
mod inventory;
mod node_name;
mod pipeline;
mod reload;
mod tasks;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::{mpsc, watch, Notify};
use tokio_util::sync::CancellationToken;

use self::tasks::Tasks;
use crate::{
    config::Config,
    deliver::{otlp::OtlpConfig, spool::Spool, stdout::StdoutError},
    detect::{chain::DEFAULT_WINDOW as DEFAULT_CHAIN_WINDOW, health::HealthAlerts, policy::Policy, Judge},
    enforce::{BlockNames, Enforcer},
    inventory::Inventory,
    kernel::{
        clock::BootClock,
        counters::CounterMap,
        loader::HookMaps,
        offsets::{resolve_running_kernel, OffsetsError},
        reader::{self, ReaderError},
        watchlist::WatchlistError,
        Hooks, KernelEvent, LoadError,
    },
    metadata::{
        cri::CriCache,
        enrich::Enricher,
        kube::KubeError,
        scanner::{ScanError, Scanner},
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
    /// The token-file scanner stopped.
    #[error(transparent)]
    Scan(#[from] ScanError),
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
    /// The agent's own pid on the host is unknown: the hooks could not
    /// skip the agent's own reads, and guessing would skip another process.
    #[error(
        "cannot find the agent's own pid on the node from {0}: {1} (is --host-proc the node's /proc? \
         the DaemonSet mounts it at /host/proc)"
    )]
    OwnPid(PathBuf, String),
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

/// How long the start-up check of the runtime's socket may take.
const CRI_DIAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs until `cancel` fires or a task fails. Hooks are detached on return.
pub async fn run(config: Config, cancel: CancellationToken) -> Result<(), DaemonError> {
    let own_tgid = own_tgid(&config.host_proc)?;
    let policy = load_policy(config.policy.as_deref())?;
    let boot_id = run_id();
    let spool = Spool::open(&config.spool_dir, config.spool_max_bytes, SPOOL_SEGMENT_BYTES, &boot_id)?;
    tracing::info!(dir = %config.spool_dir.display(), last_sequence = spool.last_sequence(), "delivery log open");
    let inventory = Inventory::open(&config.state_dir, &config.node_name)?;
    let offsets = resolve_running_kernel()?;
    let debug_logs = tracing::enabled!(target: "tokenwatch_ebpf", tracing::Level::DEBUG);
    let mut hooks = Hooks::load(&offsets, config.ring_buffer_bytes, debug_logs, own_tgid)?;
    let HookMaps { events, files, endpoints, counters, logger, enforcement } = hooks.take_maps()?;
    let counters = Arc::new(counters);
    let (policy_tx, policy) = watch::channel(policy);
    register_metrics(&counters, &spool, &policy, config.metrics_inventory.then(|| inventory.clone()));
    log_enforcement(&policy.borrow());
    let mut tasks = Tasks::new(&cancel);

    // Metadata: the cluster's pods and API-server endpoints, the container
    // runtime, and the token files, whose first scan fills the kernel's map
    // before the hooks go live, so everything present is watched from the
    // first event.
    let (pods, api) = cluster::start(&config, endpoints, &mut tasks).await?;
    let store = pods.store();
    let mut scanner = Scanner::new(config.token_paths.clone(), config.host_proc.clone(), files, store.clone());
    let initial = scanner.scan_once().await?;
    let (snapshot_tx, snapshot_rx) = watch::channel(Arc::clone(&initial));
    scanner.announce(&initial);
    let cri = container_runtime(&config).await;
    if let (Some(pods), Some(client)) = (store.clone(), api) {
        let (node, source, cri) = (config.node_name.clone(), config.node_name_source, cri.clone());
        tasks.spawn("node-name-check", |token| node_name::NodeNameCheck { node, source, pods, cri, client }.run(token));
    }
    let rescan = Arc::new(Notify::new());
    let enricher = Enricher::new(cri.clone(), pods, snapshot_rx, Arc::clone(&rescan), config.host_proc.clone());
    let blocks = BlockNames::default();
    let judge = Judge::new(config.node_name.clone(), boot_id.clone(), BootClock::measure(), DEFAULT_CHAIN_WINDOW)
        .naming_blocks(blocks.clone());

    // The hooks go live. The stream is bound first: a script that waits
    // for "hooks attached" can subscribe at once.
    let grpc_bound = crate::deliver::grpc::bind(&config.grpc_listen).await?;
    let attached = hooks.attach()?.join(",");
    let attached_at = SystemTime::now();
    tracing::info!(hooks = %attached, "hooks attached");
    crate::metrics::global().set_hooks_attached();
    // The enforcer attaches fences through the hooks while it runs; the
    // hooks are dropped (everything detached) once every task has stopped.
    let hooks = Arc::new(std::sync::Mutex::new(hooks));
    let root = crate::kernel::cgroup_hooks::unified_root();
    let enforcer =
        Enforcer::new(Arc::clone(&hooks), enforcement, root, store.clone(), cri, blocks, config.host_proc.clone());
    let watched = policy.clone();
    tasks.spawn("enforce", |token| async move {
        enforcer.run(watched, token).await;
        Ok::<(), DaemonError>(())
    });
    if let Some(addr) = config.metrics_listen {
        tasks.spawn("metrics", |token| crate::metrics::serve(addr, token));
    }

    // Events: kernel -> metadata -> detect -> deliver, with the agent's own
    // health alerts beside them.
    let (event_tx, event_rx) = mpsc::channel(EVENT_QUEUE);
    tasks.spawn("reader", |token| read_events(events, event_tx, token));
    let interval = config.rescan_interval;
    tasks.spawn("scanner", |token| scanner.run(interval, snapshot_tx, rescan, token));
    let (loss_tx, loss_rx) = mpsc::channel(LOSS_QUEUE);
    let losses = HealthAlerts::new(config.node_name.clone(), format!("{boot_id}-loss"));
    let kernel = Arc::clone(&counters);
    tasks.spawn("losses", |token| health::watch_losses(kernel, attached_at, losses, loss_tx, token));
    let spool_alerts = HealthAlerts::new(config.node_name.clone(), format!("{boot_id}-spool"));
    let health = pipeline::Health { losses: loss_rx, alerts: spool_alerts };
    let delivery =
        pipeline::Delivery { spool: spool.clone(), format: config.stdout, health, inventory: inventory.clone() };
    let (watched, window) = (policy.clone(), config.dedup_window);
    tasks.spawn("pipeline", |_| pipeline::pipeline(event_rx, enricher, judge, watched, window, delivery));

    // Upkeep and the ways out: SIGHUP reloads the policy and the gRPC
    // server's TLS files; the inventory syncs and saves; the stream, OTLP
    // and the delivery log's flushes.
    let tls_reload = Arc::new(Notify::new());
    let (path, hangup) = (config.policy.clone(), Arc::clone(&tls_reload));
    tasks.spawn("policy-reload", |token| reload::reload_on_hangup(path, policy_tx, hangup, token));
    let book = inventory.clone();
    tasks.spawn("inventory", |token| inventory::keep(book, store, token));
    let (tls, log, book) = (config.grpc_tls.clone(), spool.clone(), inventory.clone());
    tasks.spawn("grpc", |token| crate::deliver::grpc::serve(grpc_bound, tls, tls_reload, log, book, token));
    if let Some(otlp) = config.otlp.clone() {
        spawn_otlp(&mut tasks, otlp, &spool, config.metrics_inventory.then(|| inventory.clone()));
    }
    let log = spool.clone();
    tasks.spawn("spool-sync", |token| async move { log.keep_flushed(token).await });
    if let Some(logger) = logger {
        tasks.spawn("ebpf-log", |token| reader::forward_logs(logger, token));
    }

    let first_error = tasks.supervise().await;
    shut_down(&inventory, &spool, &counters);
    drop(hooks);
    tracing::info!("hooks detached");
    first_error.map_or(Ok(()), Err)
}

/// The policy file's, or the shipped default; says which rules it turns off.
fn load_policy(path: Option<&Path>) -> Result<Arc<Policy>, DaemonError> {
    let policy = match path {
        Some(path) => Policy::load(path)?,
        None => Policy::default_policy(),
    };
    for rule in crate::detect::rules::ALL.iter().filter(|r| !policy.rule_enabled(r.id)) {
        tracing::info!(rule = rule.id, "rule disabled by policy");
    }
    Ok(Arc::new(policy))
}

/// The container runtime's client. It dials lazily: say now, once, if
/// nothing answers there (within a bound: a stuck runtime must not hold
/// the start).
async fn container_runtime(config: &Config) -> CriCache {
    let cri = CriCache::new(config.cri_socket.clone());
    match cri.socket() {
        Ok(socket) => {
            let dialled = tokio::time::timeout(CRI_DIAL_TIMEOUT, tokio::net::UnixStream::connect(socket)).await;
            match dialled.unwrap_or_else(|_| Err(std::io::Error::from(std::io::ErrorKind::TimedOut))) {
                Ok(_) => tracing::info!(socket = %socket.display(), "container metadata from the runtime over CRI"),
                Err(error) => tracing::warn!(
                    socket = %socket.display(), %error,
                    "cannot reach the container runtime: alerts lack container metadata until it answers"
                ),
            }
        }
        Err(reason) => tracing::warn!(%reason, "no container runtime: alerts will lack container metadata"),
    }
    cri
}

/// The ring-buffer reader, saying at its end what it delivered.
async fn read_events(
    events: RingBuf<MapData>,
    out: mpsc::Sender<KernelEvent>,
    cancel: CancellationToken,
) -> Result<(), DaemonError> {
    let stats = reader::read_events(events, out, cancel).await?;
    tracing::info!(delivered = stats.delivered, undecodable = stats.undecodable, "event reader stopped");
    Ok(())
}

/// The OTLP exporters: the alerts as logs, and the inventory as metrics
/// when it is exported.
fn spawn_otlp(tasks: &mut Tasks, otlp: OtlpConfig, spool: &Spool, inventory: Option<Inventory>) {
    crate::metrics::global().otlp_enabled.store(true, Ordering::Relaxed);
    if let Some(book) = inventory {
        let config = otlp.clone();
        tasks.spawn("otlp-metrics", |token| crate::deliver::otlp::metrics::export_inventory(book, config, token));
    }
    let log = spool.clone();
    tasks.spawn("otlp", |token| crate::deliver::otlp::export(log, otlp, token));
}

/// After every task has stopped: keep the inventory's last counts, mark the
/// delivery log cleanly closed (the next start continues its sequence
/// exactly), and say what the kernel saw.
fn shut_down(inventory: &Inventory, spool: &Spool, counters: &CounterMap) {
    if let Err(error) = inventory.save() {
        tracing::warn!(%error, "saving the inventory");
    }
    if let Err(error) = spool.close() {
        tracing::warn!(%error, "closing the delivery log");
    }
    match counters.read() {
        Ok(counters) => tracing::info!(counters = %counters.summary(), "kernel counters"),
        Err(error) => tracing::warn!(%error, "reading kernel counters"),
    }
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
/// hostPID, `std::process::id()` is the pid in the pod's namespace (often
/// 1, which on the node is init); the host's /proc names the host's pid in
/// its `self` link. Without that link the agent does not start: any guess
/// would hide another process from the hooks.
fn own_tgid(host_proc: &Path) -> Result<u32, DaemonError> {
    let link = host_proc.join("self");
    let target = std::fs::read_link(&link).map_err(|error| DaemonError::OwnPid(link.clone(), error.to_string()))?;
    target
        .to_str()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| DaemonError::OwnPid(link.clone(), format!("`{}` is not a pid", target.display())))
}

/// Registers the parts read at scrape time: the kernel's counters, the
/// hooks' states (also `/readyz`'s detail), the policy in force, the
/// delivery log and, with `--metrics-inventory`, the inventory.
fn register_metrics(
    counters: &Arc<crate::kernel::counters::CounterMap>,
    spool: &Spool,
    policy: &tokio::sync::watch::Receiver<Arc<Policy>>,
    inventory: Option<crate::inventory::Inventory>,
) {
    use std::sync::atomic::Ordering;
    let metrics = crate::metrics::global();
    let kernel = Arc::clone(counters);
    metrics.register_source(move |out| kernel.expose(out));
    metrics.register_source(|out| crate::kernel::hook_status::status().expose(out));
    metrics.set_ready_detail(|| crate::kernel::hook_status::status().degraded_lines());
    let policy = policy.clone();
    metrics.register_source(move |out| policy.borrow().expose(out));
    let log = spool.clone();
    metrics.register_source(move |out| {
        let counts = crate::metrics::global();
        let acknowledged =
            counts.otlp_enabled.load(Ordering::Relaxed).then(|| counts.otlp_acknowledged.load(Ordering::Relaxed));
        log.expose(out, acknowledged)
    });
    if let Some(book) = inventory {
        let scrape = crate::inventory::scrape::InventoryScrape::new(book);
        metrics.register_source(move |out| scrape.expose(out));
    }
}
