//! `cargo xtask test`: the one command that runs every test, as CI does.
//!
//! Steps, each announced, stopping at the first failure: setup, the second
//! kernel's BTF fixture, `cargo fmt --check`, clippy with warnings denied, and
//! `cargo test --workspace -- --include-ignored` (the ignored tests are the
//! ones that need root and the live kernel), the kernel matrix (`cargo
//! xtask vmtest`: Debian's 5.10, 6.1 and 6.12 kernels in qemu, each VM
//! given [`CI_VM_MINUTES`]), then every fuzz target for
//! [`CI_FUZZ_SECONDS`] (`cargo xtask fuzz`). The eBPF crate is left out of
//! `--workspace` (see [`util::HOST_WORKSPACE`]) and linted on its own; the
//! fuzz crate, a workspace of its own, is format-checked on its own.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{self, say};
use crate::{fixtures, fuzz, setup, vmtest};

/// The environment variable that hands the tests the second kernel's BTF.
const SECOND_KERNEL_BTF_ENV: &str = "TOKENWATCH_SECOND_KERNEL_BTF";

/// Seconds CI fuzzes each target: enough to run the seeds and some
/// thousands of mutations of each, so a parser change that panics on
/// hostile input fails CI; the long runs are `cargo xtask fuzz`'s.
const CI_FUZZ_SECONDS: u64 = 10;

/// Minutes each VM of the kernel matrix may run in this task: a VM took
/// 1 to 4 minutes here; a hung one must not eat CI's 90.
const CI_VM_MINUTES: u64 = 15;

/// Options of `cargo xtask test`.
#[derive(clap::Args)]
pub struct TestArgs {
    /// Skip `cargo fmt --check` and `cargo clippy`.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip the brief run of the fuzz targets.
    #[arg(long)]
    pub no_fuzz: bool,
    /// Skip the kernel matrix (`cargo xtask vmtest`: Debian's 5.10, 6.1
    /// and 6.12 kernels in qemu, 1 to 4 minutes each under emulation, plus
    /// the release build the VMs run).
    #[arg(long)]
    pub no_vmtest: bool,
    /// Arguments for `cargo test`, after `--`: e.g. a test name filter. A
    /// second `--` among them passes what follows to the test binaries.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Numbers and announces the steps.
struct Steps {
    /// The step running now, from 1.
    current: usize,
    /// How many steps there are.
    total: usize,
}

impl Steps {
    /// Announce the next step and return its `[n/total] name` label.
    fn next(&mut self, name: &str, why: &str) -> String {
        self.current += 1;
        let label = format!("[{}/{}] {name}", self.current, self.total);
        say(format!("{label}: {why}"));
        label
    }
}

/// Run every test; refuses to run unless root, rather than skip root tests.
pub fn test(args: &TestArgs) -> Result<()> {
    if !util::is_root() {
        bail!("cargo xtask test needs root: the tests load eBPF programs and create mount namespaces and cgroups");
    }
    let started = Instant::now();
    let result = steps(args);
    let elapsed = util::human(started.elapsed());
    match &result {
        Ok(()) => say(format!("all tests passed; total wall time {elapsed}")),
        Err(_) => say(format!("cargo xtask test failed; total wall time {elapsed}")),
    }
    result
}

/// The steps, in order.
fn steps(args: &TestArgs) -> Result<()> {
    let root = util::workspace_root();
    let total = 3 + if args.no_lint { 0 } else { 2 } + usize::from(!args.no_vmtest) + usize::from(!args.no_fuzz);
    let mut steps = Steps { current: 0, total };

    let label = steps.next("setup", "the build needs a BPF compiler and bpf-linker, the tests need tracefs");
    setup::setup().with_context(|| format!("{label} failed"))?;

    let label = steps.next("fixtures", "BTF offsets are tested against a second kernel (Debian's 6.1)");
    let btf = fixtures::second_kernel_btf(&root).with_context(|| format!("{label} failed"))?;

    if args.no_lint {
        say("--no-lint: skipping cargo fmt --check and cargo clippy");
    } else {
        let label = steps.next("format", "every file must be as `cargo fmt` leaves it");
        util::run(util::cargo().args(["fmt", "--all", "--", "--check"]), "checking formatting")
            .with_context(|| format!("{label} failed: run `cargo fmt --all` and look at the diff"))?;
        util::run(
            util::cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]),
            "checking the fuzz crate's formatting (a workspace of its own)",
        )
        .with_context(|| {
            format!("{label} failed: run `cargo fmt --manifest-path fuzz/Cargo.toml` and look at the diff")
        })?;

        let label = steps.next("clippy", "lints of every crate and target, warnings denied");
        util::run(
            util::cargo().arg("clippy").args(util::HOST_WORKSPACE).args(["--all-targets", "--", "-D", "warnings"]),
            "linting every crate but the eBPF one",
        )
        .with_context(|| format!("{label} failed: fix the warnings above"))?;
        util::run(
            util::cargo().args(["clippy", "--package", util::EBPF_PACKAGE, "--all-targets", "--", "-D", "warnings"]),
            "linting the eBPF crate on its own, checked for the host: clippy cannot use the BPF target's core, \
             which comes from Debian's rustc",
        )
        .with_context(|| format!("{label} failed: fix the warnings above"))?;
    }

    let label = steps.next("tests", "unit, integration and the ignored root/live-kernel tests");
    cargo_test(&btf, &args.cargo_test_args).with_context(|| format!("{label} failed: see the test output above"))?;

    if args.no_vmtest {
        say("--no-vmtest: skipping the kernel matrix (`cargo xtask vmtest` runs it alone)");
    } else {
        let label = steps.next(
            "kernel matrix",
            "the DaemonSet meets many kernels: every program must load and every live case pass on Debian's \
             5.10, 6.1 and 6.12 kernels too, each booted in qemu",
        );
        vmtest::vmtest(&vmtest::VmtestArgs {
            kernel: "all".to_owned(),
            skip_build: false,
            timeout_minutes: CI_VM_MINUTES,
        })
        .with_context(|| format!("{label} failed: see target/vmtest/report.md and the console logs"))?;
    }

    if args.no_fuzz {
        say("--no-fuzz: skipping the fuzz targets");
        return Ok(());
    }
    let label = steps.next(
        "fuzz",
        &format!(
            "every parser of hostile input, fuzzed {CI_FUZZ_SECONDS} s per target (`cargo xtask fuzz` runs longer)"
        ),
    );
    let targets = fuzz::TARGETS.iter().map(|t| (*t).to_owned()).collect();
    fuzz::fuzz(&fuzz::FuzzArgs { seconds: CI_FUZZ_SECONDS, targets }).with_context(|| format!("{label} failed"))
}

/// `cargo test --workspace --exclude tokenwatch-ebpf [ARGS] -- --include-ignored [TEST BINARY ARGS]`.
fn cargo_test(btf: &Path, extra: &[String]) -> Result<()> {
    let (for_cargo, for_binaries) = match extra.iter().position(|arg| arg == "--") {
        Some(at) => (&extra[..at], &extra[at + 1..]),
        None => (extra, &[][..]),
    };
    let mut command = util::cargo();
    command
        .env(SECOND_KERNEL_BTF_ENV, btf)
        .arg("test")
        .args(util::HOST_WORKSPACE)
        .args(for_cargo)
        .args(["--", "--include-ignored"])
        .args(for_binaries);
    util::run(&mut command, "every test, including the ones that need root and the live kernel")
}
