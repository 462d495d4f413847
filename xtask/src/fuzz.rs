//! `cargo xtask fuzz [--seconds N] [TARGET...]`: run the cargo-fuzz targets
//! in `fuzz/` (libFuzzer, nightly), each for a bounded time, and fail naming
//! the input that crashed one.
//!
//! The targets feed hostile input to what parses it: kernel records
//! (`decode`), cgroup names (`cgroup`), the policy and configuration files
//! (`policy`, `config`) and the gRPC requests (`grpc_subscribe`,
//! `grpc_inventory`). Each run starts from the committed seeds in
//! `fuzz/corpus/<target>/` and keeps what it learns in
//! `fuzz/target/corpus/<target>/` (so the seeds stay small and reviewed);
//! a crash is written to `fuzz/artifacts/<target>/`.
//!
//! The fuzz crate embeds an empty placeholder instead of the eBPF object
//! (`TOKENWATCH_EBPF_OBJECT`): no target loads programs, and the fuzz build
//! then needs neither bpf-linker nor the BPF compiler.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{
    fuzz_build, setup,
    util::{self, say},
};

/// Every fuzz target, as named in `fuzz/Cargo.toml`.
pub const TARGETS: [&str; 6] = ["decode", "cgroup", "policy", "config", "grpc_subscribe", "grpc_inventory"];

/// Seconds per target when `--seconds` is not given.
const DEFAULT_SECONDS: u64 = 60;

/// One input taking longer than this is a hang, reported like a crash.
const INPUT_TIMEOUT_SECONDS: u64 = 10;

/// Time a run gets beyond `--seconds` (start-up, reading the corpus, the
/// final merge) before xtask kills it: the run is bounded even if libFuzzer
/// is not.
const GRACE: Duration = Duration::from_secs(120);

/// Build options shared by `cargo fuzz build` and `cargo fuzz run`, which
/// must agree or the run rebuilds. 16 codegen units, where cargo-fuzz's
/// default is one, make the first build of the agent's large dependency tree
/// (kube, k8s-openapi, tonic) take minutes less, for slightly slower runs.
const BUILD_OPTIONS: [&str; 2] = ["--codegen-units", "16"];

/// Options of `cargo xtask fuzz`.
#[derive(clap::Args)]
pub struct FuzzArgs {
    /// How long to fuzz each target, in seconds.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    pub seconds: u64,
    /// The targets to run (default: all of them).
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub targets: Vec<String>,
}

/// What one target's run came to.
struct Outcome {
    /// The target.
    target: String,
    /// Inputs executed, as libFuzzer counted them.
    executions: Option<u64>,
    /// How long the run took.
    elapsed: Duration,
    /// The input that crashed it (or hung), if one did.
    artifact: Option<String>,
    /// The run failed without naming an input (killed, or did not start).
    failure: Option<String>,
}

/// Build every target once, then run each for `args.seconds`; fails if any
/// crashed, naming the artifact that reproduces it.
pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    let started = Instant::now();
    let targets: Vec<String> =
        if args.targets.is_empty() { TARGETS.iter().map(|t| (*t).to_owned()).collect() } else { args.targets.clone() };
    ensure_tools()?;
    let root = util::workspace_root();
    let placeholder = ebpf_placeholder(&root)?;

    let built = Instant::now();
    fuzz_build::build(cargo_fuzz(&placeholder, "build"), &root.join("fuzz/target"))?;
    say(format!("fuzz targets built in {}", util::human(built.elapsed())));

    let mut outcomes = Vec::new();
    for target in &targets {
        outcomes.push(run_target(&root, &placeholder, target, args.seconds)?);
    }
    for outcome in &outcomes {
        let executions = outcome.executions.map_or_else(|| "?".to_owned(), |n| n.to_string());
        let verdict = match (&outcome.artifact, &outcome.failure) {
            (Some(artifact), _) => format!(
                "CRASHED on {artifact}; reproduce (with the build xtask made) with `{} {artifact}`",
                util::shell_line(cargo_fuzz(&placeholder, "run").arg(&outcome.target))
            ),
            (None, Some(failure)) => format!("FAILED: {failure}"),
            (None, None) => "no crash".to_owned(),
        };
        say(format!(
            "fuzz {:<15} {executions:>10} executions in {:>6}: {verdict}",
            outcome.target,
            util::human(outcome.elapsed)
        ));
    }
    say(format!("fuzzing done in {}", util::human(started.elapsed())));
    let failed: Vec<&str> =
        outcomes.iter().filter(|o| o.artifact.is_some() || o.failure.is_some()).map(|o| o.target.as_str()).collect();
    if !failed.is_empty() {
        bail!(
            "fuzz targets failed: {} (see above; the log of each is in fuzz/target/logs/): fix each crash and add \
             its input as a unit test",
            failed.join(", ")
        );
    }
    Ok(())
}

/// cargo-fuzz on PATH (installed if missing), a C++ compiler (g++ from
/// Debian if missing) and rustup's nightly present.
fn ensure_tools() -> Result<()> {
    if util::which("c++").is_none() {
        setup::install_missing(
            &["g++"],
            "c++ is not on PATH; libfuzzer-sys compiles libFuzzer, which is C++, with it",
        )?;
    }
    if util::which("cargo-fuzz").is_none() {
        util::run(
            util::cargo().args(["install", "cargo-fuzz", "--locked"]),
            "cargo-fuzz is not on PATH; it builds the fuzz targets with libFuzzer and the sanitizer flags \
             and runs them (about two minutes, once)",
        )?;
    }
    if util::probe_stdout(nightly().args(["rustc", "--version"])).is_none() {
        bail!(
            "rustup has no nightly toolchain: fuzzing needs it (-Z sanitizer, libFuzzer's coverage \
             instrumentation). Install it with `rustup toolchain install nightly`"
        );
    }
    Ok(())
}

/// An empty file the fuzz build embeds in place of the eBPF object.
fn ebpf_placeholder(root: &Path) -> Result<PathBuf> {
    let dir = root.join("fuzz/target");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("ebpf-placeholder");
    if !path.exists() {
        File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    }
    Ok(path)
}

/// `rustup run nightly ...`, from the workspace root, with the stable
/// toolchain xtask runs under kept out of it.
fn nightly() -> Command {
    let mut command = Command::new("rustup");
    command.current_dir(util::workspace_root()).env_remove("RUSTUP_TOOLCHAIN").env_remove("CARGO").env_remove("RUSTC");
    command.args(["run", "nightly"]);
    command
}

/// `cargo fuzz <subcommand>` with the shared build options.
fn cargo_fuzz(placeholder: &Path, subcommand: &str) -> Command {
    let mut command = nightly();
    command.env("TOKENWATCH_EBPF_OBJECT", placeholder).args(["cargo", "fuzz", subcommand]).args(BUILD_OPTIONS);
    command
}

/// Fuzz `target` for `seconds`, its output in `fuzz/target/logs/<target>.log`.
fn run_target(root: &Path, placeholder: &Path, target: &str, seconds: u64) -> Result<Outcome> {
    let corpus = root.join("fuzz/target/corpus").join(target);
    let logs = root.join("fuzz/target/logs");
    for dir in [&corpus, &logs] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let log_path = logs.join(format!("{target}.log"));
    let log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut command = cargo_fuzz(placeholder, "run");
    command
        .arg(target)
        .arg(&corpus)
        .arg(root.join("fuzz/corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1")
        .stdout(log.try_clone().context("duplicating the log's handle")?)
        .stderr(log)
        .process_group(0);
    say(format!(
        "fuzzing {target} for {seconds} s: `{}` (output in {})",
        util::shell_line(&command),
        log_path.display()
    ));
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("starting `{}`", util::shell_line(&command)))?;
    let status = wait_bounded(child, Duration::from_secs(seconds) + GRACE)?;
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&log_path).unwrap_or_default();
    let artifact = artifact(&output);
    let failure = match status {
        None => Some(format!("still running after {}; killed", util::human(elapsed))),
        Some(status) if !status.success() && artifact.is_none() => {
            Some(format!("{status}; see {}", log_path.display()))
        }
        Some(_) => None,
    };
    if artifact.is_some() || failure.is_some() {
        let tail: Vec<&str> = output.lines().rev().take(40).collect();
        say(format!("{target}: the end of its output:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    Ok(Outcome { target: target.to_owned(), executions: executions(&output), elapsed, artifact, failure })
}

/// Wait for `child` at most `limit`; past that, kill its process group (its
/// own, see [`run_target`]: cargo-fuzz runs the fuzzer as a child of its
/// own, which killing cargo-fuzz alone would leave running). `None` when it
/// had to be killed.
fn wait_bounded(mut child: Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().context("waiting for cargo fuzz")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let group = libc::pid_t::try_from(child.id()).context("pid out of range")?;
            // SAFETY: kill(2) has no memory preconditions; the group is the
            // one this child leads, started by xtask.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            child.wait().context("reaping cargo fuzz")?;
            return Ok(None);
        }
        sleep(Duration::from_millis(200));
    }
}

/// libFuzzer's count of executed inputs (`-print_final_stats=1`), or its
/// closing `Done N runs` line.
fn executions(output: &str) -> Option<u64> {
    output.lines().rev().find_map(|line| {
        let line = line.trim();
        if let Some(count) = line.strip_prefix("stat::number_of_executed_units:") {
            return count.trim().parse().ok();
        }
        line.strip_prefix("Done ")?.split_whitespace().next()?.parse().ok()
    })
}

/// The file libFuzzer wrote the crashing (or hanging) input to.
fn artifact(output: &str) -> Option<String> {
    output.lines().find_map(|line| {
        let (_, path) = line.split_once("Test unit written to ")?;
        Some(path.trim().to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_output() {
        let clean =
            "#1048576 pulse cov: 310\nDone 1234567 runs in 11 second(s)\nstat::number_of_executed_units: 1234570\n";
        assert_eq!(executions(clean), Some(1_234_570));
        assert_eq!(executions("Done 42 runs in 1 second(s)\n"), Some(42));
        assert_eq!(artifact(clean), None);
        let crash = "==1== ERROR: libFuzzer: deadly signal\nartifact_prefix='/w/fuzz/artifacts/decode/'; \
                     Test unit written to /w/fuzz/artifacts/decode/crash-da39a3ee\nBase64: AA==\n";
        assert_eq!(artifact(crash).as_deref(), Some("/w/fuzz/artifacts/decode/crash-da39a3ee"));
    }
}
