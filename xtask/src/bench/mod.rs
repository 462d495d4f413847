//! `cargo xtask bench`: what tokenwatch costs on the node's hot paths,
//! measured side by side with the floor (empty programs on the same hooks),
//! bpftrace and auditd, in one run, A/B interleaved: every repeat starts
//! each configuration in turn and measures every operation under it, so
//! drift on this shared machine spreads over all of them. Each figure is a
//! median over the repeats, with min and max. Prints a table and writes
//! `target/bench/bench.json` and `BENCHMARKS.md`.
//!
//! Measured so far: the cost per operation (the point 1). Alert
//! latency, the drop-free rate and the agent's CPU and memory are listed in
//! BENCHMARKS.md as not measured yet.

mod configs;
mod ops;
mod report;

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
}

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
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).context("creating target/bench")?;
    let token = work.join("token");
    fs::write(&token, "bench-token-not-a-credential")?;
    let plain = work.join("plain");
    fs::write(&plain, "nothing to see")?;
    let targets = Targets {
        plain: CString::new(plain.display().to_string())?,
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
    for repeat in 1..=args.repeats {
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
    let report = report::Report::new(&cells, args.repeats);
    eprintln!("{}", report.table());
    fs::write(work.join("bench.json"), report.json()).context("writing bench.json")?;
    fs::write(util::workspace_root().join("BENCHMARKS.md"), report.markdown()).context("writing BENCHMARKS.md")?;
    say(format!("bench: wrote {} and BENCHMARKS.md", work.join("bench.json").display()));
    Ok(())
}
