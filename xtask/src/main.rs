//! `cargo xtask`: tokenwatch's developer tasks (the alias is in
//! `.cargo/config.toml`).
//!
//! * `setup`: install what is missing (BPF compiler, bpf-linker, tracefs).
//! * `build [--release]`: setup, then build everything.
//! * `run [--release] [-- AGENT_ARGS]`: setup, build, run the agent as root.
//! * `fixtures`: fetch the second kernel's BTF the tests use.
//! * `bench [--repeats N]`: cost per operation side by side with the floor,
//!   bpftrace and auditd; writes BENCHMARKS.md.
//! * `soak [--minutes N]`: the release agent under mixed load, sampled for
//!   memory and file descriptors; fails unless both are flat at the end.
//! * `image [--tag T] [--archive FILE]`: the agent's container image, from
//!   scratch with buildah (deploy/image/build.sh).
//! * `fuzz [--seconds N] [TARGET...]`: the cargo-fuzz targets in `fuzz/`, each
//!   for N seconds (nightly; installs cargo-fuzz if missing).
//! * `test [--no-lint] [--no-fuzz] [--no-vmtest] [-- CARGO_TEST_ARGS]`: every test, as CI
//!   runs it, the fuzz targets briefly included.
//! * `vmtest [--kernel 5.10|6.1|6.12|all] [--skip-build]`: the kernel check
//!   and the kernel_matrix cases inside Debian's 5.10, 6.1 and 6.12 kernels,
//!   each in qemu; writes target/vmtest/report.md.
//!
//! Every step says on stderr what it does and why.
#![expect(clippy::print_stderr, reason = "xtask's output is its progress report")]

mod agent_probe;
mod bench;
mod compile;
mod fixtures;
mod fuzz;
mod fuzz_build;
#[cfg(test)]
mod modgraph;
mod run;
mod setup;
mod soak;
mod test;
mod util;
mod vmtest;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// tokenwatch's developer tasks.
#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "tokenwatch's developer tasks")]
struct Cli {
    /// The task to run.
    #[command(subcommand)]
    task: Task,
}

/// The tasks.
#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need, only what is missing.
    Setup,
    /// Setup, then build the workspace (the agent embeds the eBPF object).
    Build {
        /// Build the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build, then run `tokenwatch agent` as root in the foreground.
    Run {
        /// Build and run the release profile.
        #[arg(long)]
        release: bool,
        /// Arguments for `tokenwatch agent`, after `--` (default: --standalone).
        #[arg(last = true)]
        agent_args: Vec<String>,
    },
    /// Build the test fixtures (the BTF of a second kernel, Debian's 6.1).
    Fixtures,
    /// Setup, build the release agent, then its container image with
    /// buildah (no registry, no Docker daemon).
    Image {
        /// The image's name [default: tokenwatch:<the agent's version>].
        #[arg(long)]
        tag: Option<String>,
        /// Also write the image to this OCI archive (for `ctr images import`).
        #[arg(long, value_name = "FILE")]
        archive: Option<std::path::PathBuf>,
    },
    /// Run every test, as CI does (needs root).
    Test(test::TestArgs),
    /// Setup, build the release agent, then measure what it costs per
    /// operation side by side with the floor, bpftrace and auditd (root).
    Bench(bench::BenchArgs),
    /// Setup, build the release agent, then run it under mixed load for a
    /// bounded time and check its memory and descriptors stay flat (root).
    Soak(soak::SoakArgs),
    /// Fuzz the parsers of hostile input (kernel records, cgroup names,
    /// policy and configuration files, gRPC requests), each target for a
    /// bounded time; fails naming the input that crashed one.
    Fuzz(fuzz::FuzzArgs),
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels in qemu and run the kernel
    /// check and the kernel_matrix cases in each; fails if any VM timed out,
    /// a core hook did not load or a case failed.
    Vmtest(vmtest::VmtestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Run one task; its exit code is the agent's for `run`.
fn dispatch(task: Task) -> Result<ExitCode> {
    util::ensure_cargo_bin_on_path()?;
    match task {
        Task::Setup => setup::setup()?,
        Task::Build { release } => {
            setup::setup()?;
            compile::build(release)?;
        }
        Task::Run { release, agent_args } => {
            setup::setup()?;
            let binary = compile::build(release)?;
            return run::agent(&binary, &agent_args);
        }
        Task::Fixtures => {
            fixtures::second_kernel_btf(&util::workspace_root())?;
        }
        Task::Image { tag, archive } => {
            setup::setup()?;
            let binary = compile::build(true)?;
            let tag = tag.unwrap_or_else(|| format!("tokenwatch:{}", env!("CARGO_PKG_VERSION")));
            let script = util::workspace_root().join("deploy/image/build.sh");
            let mut command = std::process::Command::new(script);
            command.arg(&binary).arg(&tag).args(archive.iter());
            util::run(&mut command, "building the image from scratch with buildah")?;
            util::say(format!("image {tag} built; publish it with: buildah push {tag} docker://REGISTRY/{tag}"));
        }
        Task::Test(args) => test::test(&args)?,
        Task::Bench(args) => {
            if !util::is_root() {
                anyhow::bail!("cargo xtask bench needs root: it loads eBPF programs and audit rules");
            }
            setup::setup()?;
            setup::bench_tools()?;
            let binary = compile::build(true)?;
            bench::bench(&binary, &args)?;
        }
        Task::Soak(args) => {
            if !util::is_root() {
                anyhow::bail!("cargo xtask soak needs root: the agent loads eBPF programs");
            }
            setup::setup()?;
            let binary = compile::build(true)?;
            soak::soak(&binary, &args)?;
        }
        Task::Fuzz(args) => fuzz::fuzz(&args)?,
        Task::Vmtest(args) => vmtest::vmtest(&args)?,
    }
    Ok(ExitCode::SUCCESS)
}
