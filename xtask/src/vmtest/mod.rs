//! `cargo xtask vmtest`: the agent on the kernels of Debian's releases, each
//! in a VM (TCG: ARCHITECTURE.md, "Build machines"). Each verifier differs,
//! so a program the build machine's kernel accepts may be refused on 5.10 or
//! 6.1; this runs `tokenwatch kernel-check` and the `kernel_matrix` test
//! cases inside each kernel and reports both side by side.
//!
//! The steps: the kernels (kernel.rs, with apt in a state of its own), the
//! release agent and test executable (binaries.rs), one initramfs
//! (initramfs.rs, init.sh), one qemu run per kernel (qemu.rs), the console
//! logs read (console.rs) and the report (report.rs).

mod binaries;
mod console;
mod initramfs;
pub mod kernel;
mod qemu;
mod report;
mod sources;

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::setup;
use crate::util::{self, say};

/// The kernels of the matrix: the label users pick and Debian's suite.
const KERNELS: [(&str, &str); 3] = [("5.10", "bullseye"), ("6.1", "bookworm"), ("6.12", "trixie")];

/// Options of `cargo xtask vmtest`.
#[derive(clap::Args)]
pub struct VmtestArgs {
    /// Which kernel to boot: 5.10 (bullseye), 6.1 (bookworm), 6.12 (trixie)
    /// or all of them.
    #[arg(long, default_value = "all", value_parser = ["5.10", "6.1", "6.12", "all"])]
    pub kernel: String,
    /// Use the release agent and the kernel_matrix executable built before.
    #[arg(long)]
    pub skip_build: bool,
    /// Minutes each VM may run before it is killed. TCG is 10-30x slower
    /// than the machine, and a case that fails waits out its stretched
    /// timeout (5 min): 22 cases on 5.10 did not fit in 25 minutes here
    /// while other builds shared the 2 cores.
    #[arg(long, default_value_t = 40)]
    pub timeout_minutes: u64,
}

/// Run the matrix; fails if any VM timed out, a kernel check failed or a
/// case failed.
pub fn vmtest(args: &VmtestArgs) -> Result<()> {
    let started = Instant::now();
    let root = util::workspace_root();
    let kernels: Vec<(&'static str, &'static str)> =
        KERNELS.into_iter().filter(|(label, _)| args.kernel == "all" || args.kernel == *label).collect();
    setup::vm_tools()?;
    // The kernels first: a fetch that fails should not wait for a build.
    let mut fetched = Vec::new();
    for (label, suite) in &kernels {
        let kernel = kernel::vmlinuz(&root, suite)?;
        say(format!("vmtest: {label}: {} ({})", kernel.package, kernel.vmlinuz.display()));
        fetched.push((*label, kernel));
    }
    let binaries = if args.skip_build { binaries::prebuilt()? } else { binaries::build()? };
    say(format!(
        "vmtest: agent {}, tests {}",
        binaries.agent.display(),
        binaries.tests.as_ref().map_or("(none)".to_owned(), |tests| tests.display().to_string())
    ));
    let limit = Duration::from_secs(args.timeout_minutes * 60);
    // Half the VM's time for the check: the cases still run after a
    // verifier that never finishes, and the report says which it was.
    let image = initramfs::build(&root, &binaries, limit / 2)?;

    let mut runs = Vec::new();
    for (label, kernel) in fetched {
        let log = root.join("target/vmtest").join(format!("{label}.log"));
        let (ending, wall) = qemu::run(&kernel.vmlinuz, &image, &log, limit)?;
        let text = fs::read(&log).with_context(|| format!("reading {}", log.display()))?;
        let console = console::parse(&String::from_utf8_lossy(&text));
        say(format!("vmtest: {label}: {ending:?} after {}", util::human(wall)));
        runs.push(report::Run {
            label,
            package: kernel.package,
            ending,
            wall,
            console,
            log: log.display().to_string(),
        });
    }

    let markdown = report::markdown(&runs);
    for line in markdown.lines() {
        say(line);
    }
    let path = root.join("target/vmtest/report.md");
    fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    let problems: Vec<String> = runs.iter().flat_map(report::Run::problems).collect();
    say(format!("vmtest: report in {}; total wall time {}", path.display(), util::human(started.elapsed())));
    if !problems.is_empty() {
        bail!("the kernel matrix failed: {}", problems.join("; "));
    }
    Ok(())
}

/// Announce `command` and why, run it with stderr shown, and return its
/// stdout; fails unless it succeeds.
fn capture(command: &mut Command, why: &str) -> Result<String> {
    say(format!("running `{}` ({why})", util::shell_line(command)));
    let output = command
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting `{}`", util::shell_line(command)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", util::shell_line(command), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
