//! One VM: qemu with TCG (KVM guests hang on this machine: ARCHITECTURE.md,
//! "Build machines"), the kernel and the initramfs given directly, the serial
//! console written whole to `target/vmtest/<label>.log`, and a wall-clock
//! limit past which the VM is killed.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::util::{self, say};

/// The VM's memory: the initramfs is unpacked into RAM, and the verifier of
/// a large program wants some more.
const MEMORY_MIB: &str = "2048";
/// TCG in one host thread for both virtual CPUs. With a thread per vCPU
/// (qemu's default, MTTCG) a 6.12 guest died here of an unhandled `int3`
/// in `syscall_exit_to_user_mode_prepare` as the agent detached its
/// tracepoints: the kernel patches its own text with `int3` breakpoints
/// while the other CPU runs it, which MTTCG does not keep coherent. One
/// thread serialises the vCPUs; the verifier, most of a VM's work, runs on one CPU anyway.
const ACCEL: &str = "tcg,thread=single";
/// Kernel command line: console on the serial port, and a panic ends the VM
/// at once (with `-no-reboot`) rather than hanging until the time limit.
/// `loglevel=5` lets warnings through, with the registers and call trace
/// of a soft lockup or a WARN (printed at the default level): a VM killed
/// at the time limit never gets to print its dmesg.
const APPEND: &str = "console=ttyS0 panic=-1 loglevel=5";
/// How often the VM is checked on, and how often progress is reported.
const POLL: Duration = Duration::from_secs(1);
/// Progress is reported this often, with the log's last line.
const PROGRESS: Duration = Duration::from_secs(60);

/// How a VM ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// qemu exited by itself (poweroff, or a panic with `-no-reboot`).
    Exited,
    /// It ran past the time limit and was killed.
    TimedOut,
}

/// Boot `vmlinuz` with `initramfs`, the serial console into `log`; returns
/// how it ended and its wall time.
pub fn run(vmlinuz: &Path, initramfs: &Path, log: &Path, limit: Duration) -> Result<(Ending, Duration)> {
    let console = File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let errors = console.try_clone()?;
    let mut command = Command::new("qemu-system-x86_64");
    command
        .args(["-accel", ACCEL, "-cpu", "max", "-smp", "2", "-m", MEMORY_MIB])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", APPEND])
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(errors);
    say(format!(
        "running `{}` (TCG: 10-30x slower than natively; limit {}; console in {})",
        util::shell_line(&command),
        util::human(limit),
        log.display()
    ));
    let started = Instant::now();
    let mut child = command.spawn().context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let mut reported = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok((Ending::Exited, started.elapsed()));
        }
        if started.elapsed() > limit {
            say(format!("vmtest: the VM ran past {}: killing it", util::human(limit)));
            child.kill().context("killing qemu")?;
            child.wait()?;
            return Ok((Ending::TimedOut, started.elapsed()));
        }
        if reported.elapsed() >= PROGRESS {
            reported = Instant::now();
            say(format!("vmtest: {} in; last console line: {}", util::human(started.elapsed()), last_line(log)));
        }
        thread::sleep(POLL);
    }
}

/// The last non-empty line of the console so far, shortened.
fn last_line(log: &Path) -> String {
    let text = fs::read(log).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]);
    let line = text.lines().map(str::trim).rfind(|line| !line.is_empty()).unwrap_or("(nothing yet)");
    line.chars().take(160).collect()
}
