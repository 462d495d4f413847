//! `cargo xtask bench`: what tokenwatch costs on the node's hot paths,
//! measured side by side with the floor (empty programs on the same hooks),
//! bpftrace and auditd, in one run, A/B interleaved: every repeat starts
//! each configuration in turn and measures every operation under it, so
//! drift on this shared machine spreads over all of them. Each figure is a
//! median over the repeats, with min and max. Prints a table and writes
//! `target/bench/bench.json` and `BENCHMARKS.md`.
//!
//! Measured: the cost per operation (here), alert latency, the drop-free
//! rate of matched events with the agent's CPU and RSS under it (`load`),
//! and its resident memory idle and with a node's pods cached (`memory`).

mod agent;
mod configs;
mod empty_programs;
mod load;
mod memory;
mod new_volumes;
mod offered;
mod ops;
mod profile;
mod report;
mod token_volume;
mod verdicts;

use std::{ffi::CString, fs, net::TcpListener, path::Path};

use anyhow::{bail, Context, Result};

use crate::util::{self, say};
use configs::{Config, Setup};
use ops::{Op, Targets};

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
pub struct BenchArgs {
    /// Repeats of the whole interleaved round.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Measure only the load figures (latency, throughput, CPU, memory),
    /// skipping the cost per operation: for iterating on the pipeline.
    /// Writes the table only, not BENCHMARKS.md.
    #[arg(long)]
    pub load_only: bool,
}

/// How many pods' worth of metadata the memory figure is taken with.
const PODS: usize = 1000;

/// Every measurement of one (configuration, operation): ns per operation.
pub struct Cell {
    /// Which configuration.
    pub config: Config,
    /// Which operation.
    pub op: Op,
    /// One value per repeat.
    pub ns: Vec<f64>,
}

impl Cell {
    /// The median of the repeats.
    pub fn median(&self) -> f64 {
        let mut sorted = self.ns.clone();
        sorted.sort_by(f64::total_cmp);
        let mid = sorted.len() / 2;
        if sorted.len().is_multiple_of(2) {
            (sorted[mid - 1] + sorted[mid]) / 2.0
        } else {
            sorted[mid]
        }
    }

    /// The smallest and the largest repeat.
    pub fn range(&self) -> (f64, f64) {
        let min = self.ns.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.ns.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (min, max)
    }
}

/// Runs the benchmark with `binary` (a release `tokenwatch`).
pub fn bench(binary: &Path, args: &BenchArgs) -> Result<()> {
    for tool in ["bpftrace", "auditctl"] {
        if util::which(tool).is_none() {
            bail!("{tool} is not installed (cargo xtask bench installs bpftrace and auditd with setup)");
        }
    }
    let work = util::workspace_root().join("target/bench");
    token_volume::TokenVolume::clear_stale(&work.join("token-volume"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).context("creating target/bench")?;
    // The token lives on a tmpfs of its own, as kubelet mounts each pod's
    // token volume: the unwatched file is on another filesystem, as the
    // files a workload opens are.
    let volume = token_volume::TokenVolume::mount(&work.join("token-volume"))?;
    let token = volume.path().join("token");
    fs::write(&token, "bench-token-not-a-credential")?;
    let plain = work.join("plain");
    fs::write(&plain, "nothing to see")?;
    // A second volume laid out as kubelet's atomic writer lays one out,
    // with no token in it: its `ca.crt` is unwatched, but the kernel's
    // layout match walks it to the name.
    token_volume::TokenVolume::clear_stale(&work.join("beside-volume"));
    let beside_volume = token_volume::TokenVolume::mount(&work.join("beside-volume"))?;
    let timestamped = beside_volume.path().join("..2026_12_04_00_00_00.1");
    fs::create_dir(&timestamped)?;
    let beside = timestamped.join("ca.crt");
    fs::write(&beside, "not a certificate")?;
    let targets = Targets {
        plain: CString::new(plain.display().to_string())?,
        beside: CString::new(beside.display().to_string())?,
        token: CString::new(token.display().to_string())?,
        plain_listener: TcpListener::bind("127.0.0.1:0")?,
        api_listener: TcpListener::bind("127.0.0.1:0")?,
    };
    let setup = Setup {
        binary: binary.to_owned(),
        work: work.clone(),
        token,
        api_port: targets.api_listener.local_addr()?.port(),
    };
    let mut cells: Vec<Cell> = Config::ALL
        .iter()
        .flat_map(|&config| Op::ALL.iter().map(move |&op| Cell { config, op, ns: Vec::new() }))
        .collect();
    let rounds = if args.load_only { 0 } else { args.repeats };
    for repeat in 1..=rounds {
        for config in Config::ALL {
            say(format!("bench: repeat {repeat}/{}: {}", args.repeats, config.name()));
            let running = configs::start(config, &setup).with_context(|| format!("starting {}", config.name()))?;
            for op in Op::ALL {
                running.settle();
                let value = ops::measure(op, &targets);
                if let Some(cell) = cells.iter_mut().find(|c| c.config == config && c.op == op) {
                    cell.ns.push(value);
                }
            }
            running.stop().with_context(|| format!("stopping {}", config.name()))?;
        }
    }
    let profiles = if args.load_only { Vec::new() } else { profile_pass(&setup, &targets)? };
    let load = load::measure(binary, &work.join("load"), &setup.token)?;
    let volumes = new_volumes::measure(binary, &work.join("new-volumes"))?;
    drop(volume);
    drop(beside_volume);
    say(format!("bench: memory with {PODS} pods cached"));
    let memory = memory::measure(binary, &work.join("memory"), PODS)?;
    let report = report::Report {
        cells: &cells,
        repeats: args.repeats,
        profiles: &profiles,
        load: &load,
        memory: &memory,
        volumes: &volumes,
    };
    if args.load_only {
        eprintln!("{}", report.load_tables());
        return Ok(());
    }
    eprintln!("{}\n{}\n{}", report.table(), report.profile_table(), report.load_tables());
    fs::write(work.join("bench.json"), report.json()).context("writing bench.json")?;
    fs::write(util::workspace_root().join("BENCHMARKS.md"), report.markdown()).context("writing BENCHMARKS.md")?;
    say(format!("bench: wrote {} and BENCHMARKS.md", work.join("bench.json").display()));
    Ok(())
}

/// One configuration's programs' cost per operation, from the kernel's
/// run-time statistics.
pub struct Profile {
    /// Which configuration.
    pub config: Config,
    /// Per operation, what each program that ran cost.
    pub ops: Vec<(Op, Vec<profile::ProgramCost>)>,
}

/// A pass with the kernel's BPF statistics on over the configurations that
/// load programs, after the timed rounds (the statistics cost a clock read
/// per run, so they stay off while timing).
fn profile_pass(setup: &Setup, targets: &Targets) -> Result<Vec<Profile>> {
    let _stats = profile::StatsOn::new()?;
    let mut profiles = Vec::new();
    for config in [Config::Floor, Config::Tokenwatch, Config::Bpftrace] {
        say(format!("bench: profiling {}", config.name()));
        let existing = profile::snapshot()?;
        let running = configs::start(config, setup).with_context(|| format!("starting {}", config.name()))?;
        let ids = profile::new_ids(&existing, &profile::snapshot()?);
        let mut ops = Vec::new();
        for op in Op::ALL {
            running.settle();
            let before = profile::snapshot()?;
            ops::measure(op, targets);
            let after = profile::snapshot()?;
            ops.push((op, profile::costs(&ids, &before, &after, op.iterations())));
        }
        running.stop().with_context(|| format!("stopping {}", config.name()))?;
        profiles.push(Profile { config, ops });
    }
    Ok(profiles)
}
