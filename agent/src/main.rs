//! `tokenwatch`: the CLI. Parses flags, sets up logging and the runtime, and
//! hands over to the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokenwatch_agent::{
    cli::{AgentArgs, Cli, Command},
    config::{self, Config, ConfigLayer, ServiceEnv},
    daemon,
    printable::LogWriter,
};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::{util::SubscriberInitExt, EnvFilter};

/// mimalloc rather than glibc's malloc: under a stream of matched events
/// the agent spent some 40% of its CPU in glibc's malloc and free (a perf
/// profile at 200,000 events/s, `xtask/src/bench/analysis.md`), on the
/// short-lived strings and vectors each alert is made of. With mimalloc
/// the same load costs about 30% less CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (the same in its
/// v2 and v3; the crate does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// A DaemonSet's memory is paid on every node: freed pages go back to the
/// kernel at once rather than after a delay that an idle agent may never
/// reach. With arena memory committed only as it is used (a build-time
/// default, `.cargo/config.toml`) the idle agent's RSS is below glibc's:
/// 38.8 MiB against 48.7 standalone, peak under load 40.3 against 50.6.
fn tune_allocator() {
    // SAFETY: a plain option store, made before the runtime starts threads.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent(args) => run_agent(&args),
        Command::Alerts(args) => client(tokenwatch_agent::cli::alerts::run(&args)),
        Command::Inventory(args) => client(tokenwatch_agent::cli::inventory::run(&args)),
        Command::Advise(args) => client(tokenwatch_agent::cli::advise::run(&args)),
        Command::KernelCheck(args) => kernel_check(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            #[expect(clippy::print_stderr, reason = "the CLI's last word when logging may not be set up")]
            {
                eprintln!("tokenwatch: {error:#}");
            }
            if is_bad_input(&error) {
                ExitCode::from(BAD_INPUT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// `tokenwatch kernel-check`, with warnings (a refused optional program) on
/// stderr and the report on stdout.
fn kernel_check(args: &tokenwatch_agent::cli::kernel_check::KernelCheckArgs) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt().with_env_filter(EnvFilter::new("warn")).with_writer(std::io::stderr).try_init();
    Ok(tokenwatch_agent::cli::kernel_check::run(args)?)
}

/// Threads for blocking work (/proc reads, scans, file writes).
const BLOCKING_THREADS: usize = 8;

/// glibc gives every thread that allocates an arena of its own, up to eight
/// per core, and memory freed in one is not returned to another: a daemon's
/// resident memory then creeps up for hours. Two arenas serve this agent's
/// two worker threads.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only sets an allocator parameter; called once, early.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
    if set == 0 {
        tracing::warn!("mallopt(M_ARENA_MAX) refused; memory may creep under load");
    }
}

/// The exit code for configuration or policy the agent refuses (clap uses
/// the same for bad flags), so a supervisor can tell "fix your input" from
/// "the agent failed".
const BAD_INPUT: u8 = 2;

/// Whether the agent stopped because its configuration or policy is wrong.
fn is_bad_input(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.is::<config::ConfigError>()
            || cause.is::<tokenwatch_agent::detect::policy::PolicyError>()
            || cause.downcast_ref::<daemon::DaemonError>().is_some_and(daemon::DaemonError::is_bad_input)
    })
}

fn run_agent(args: &AgentArgs) -> anyhow::Result<()> {
    // Everything the agent creates (delivery log, state, its unix socket)
    // is its own alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let filter = EnvFilter::try_new(&args.log).with_context(|| format!("--log `{}`", args.log))?;
    // Colours only on a terminal: `kubectl logs` and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter::new(std::io::stderr()))
        .with_ansi(ansi)
        .finish()
        .try_init()?;

    let file = match &args.config {
        Some(path) => config::read_file(path)?,
        None => ConfigLayer::default(),
    };
    let hostname = nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default();
    let service_env = ServiceEnv::from_process();
    let config = Config::resolve(args.settings.clone().over(file), &service_env, &hostname)?;
    tracing::info!(
        node = %config.node_name,
        token_paths = ?config.token_paths,
        api_servers = config.api_servers.len(),
        "tokenwatch agent starting"
    );

    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // /proc reads run on blocking threads; a bounded pool keeps a flood
        // from growing threads (and their malloc arenas) without end.
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        tokio::spawn(cancel_on_signal(cancel.clone()));
        daemon::run(config, cancel).await
    })?;
    Ok(())
}

/// Runs a client command (warnings on stderr, its output on stdout).
fn client<E: std::error::Error + Send + Sync + 'static>(
    command: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("warn"))
        .with_writer(|| LogWriter::new(std::io::stderr()))
        .finish()
        .try_init()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(command)?;
    Ok(())
}

/// SIGTERM and SIGINT cancel the one token every task obeys.
async fn cancel_on_signal(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let name = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
        () = cancel.cancelled() => return Ok(()),
    };
    tracing::info!(signal = name, "shutting down");
    cancel.cancel();
    Ok(())
}
