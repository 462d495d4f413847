//! Building the fuzz targets, and saying why when that fails.
//!
//! A failed build is not a crash, and its cause is easy to lose: cargo
//! prints the linker's whole command line (some 10,000 characters) before
//! the line that says what went wrong, and a log viewer that cuts long
//! lines keeps the first and drops the second. The build's output still
//! goes to the terminal as it comes; it is also kept whole in
//! `fuzz/target/logs/build.log`, and on failure the error names the lines
//! that matter (the compiler's and linker's errors) and how much disk was
//! free, since an ASan build writes some 5 GiB and a CI machine's free space
//! varies.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util::{self, say};

/// What the fuzz build needs free on its disk, about: six ASan binaries of
/// ~130 MB and the agent's dependencies built with coverage.
const NEEDED_BYTES: u64 = 6 << 30;

/// How many characters of one diagnostic line the error keeps.
const LINE_CHARS: usize = 300;

/// Run `command` (`cargo fuzz build ...`), its output to stderr and to
/// `logs/build.log` under `target_dir`; fails saying what broke.
pub fn build(mut command: Command, target_dir: &Path) -> Result<()> {
    let logs = target_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let free_before = util::free_bytes(target_dir);
    if let Some(free) = free_before.filter(|free| *free < NEEDED_BYTES) {
        say(format!(
            "only {} free on the disk of {}: the fuzz build writes about {}, and may fail for space",
            gib(free),
            target_dir.display(),
            gib(NEEDED_BYTES)
        ));
    }
    let log_path = logs.join("build.log");
    let mut log = File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    say(format!(
        "running `{}` (building every fuzz target once: libFuzzer, AddressSanitizer, nightly; output also in {})",
        util::shell_line(&command),
        log_path.display()
    ));
    command.stdout(Stdio::from(std::io::stderr())).stderr(Stdio::piped());
    let mut child = command.spawn().with_context(|| format!("starting `{}`", util::shell_line(&command)))?;
    let stderr = child.stderr.take().context("the build's stderr was not piped")?;
    let mut diagnosis = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading the build's output")?;
        eprintln!("{line}");
        writeln!(log, "{line}").with_context(|| format!("writing {}", log_path.display()))?;
        if is_diagnostic(&line) {
            diagnosis.push(line.trim().chars().take(LINE_CHARS).collect::<String>());
        }
    }
    let status = child.wait().context("waiting for cargo fuzz build")?;
    if status.success() {
        return Ok(());
    }
    let free_now = util::free_bytes(target_dir).map_or_else(|| "unknown".to_owned(), gib);
    let free_before = free_before.map_or_else(|| "unknown".to_owned(), gib);
    bail!(
        "building the fuzz targets failed ({status}; a build error, not a crash). What the compiler and linker \
         said:\n  {}\nFree on the disk of {}: {free_before} before the build, {free_now} after. The whole output \
         is in {}.",
        if diagnosis.is_empty() { "(no error line found)".to_owned() } else { diagnosis.join("\n  ") },
        target_dir.display(),
        log_path.display()
    )
}

/// A line of a failed build worth showing on its own: rustc's and cargo's
/// errors and the linker's own messages, not the linker's command line.
fn is_diagnostic(line: &str) -> bool {
    let line = line.trim_start();
    if line.starts_with("= note:") && line.contains("\"cc\"") {
        return false;
    }
    line.starts_with("error")
        || [
            "/usr/bin/ld:",
            "collect2",
            "undefined reference",
            "multiple definition",
            "No space left",
            "terminated with signal",
            "Killed",
        ]
        .iter()
        .any(|marker| line.contains(marker))
}

/// Bytes as GiB, one decimal.
fn gib(bytes: u64) -> String {
    #[expect(clippy::cast_precision_loss, reason = "a figure for people, one decimal")]
    let gib = bytes as f64 / f64::from(1u32 << 30);
    format!("{gib:.1} GiB")
}

#[cfg(test)]
mod tests {
    use super::is_diagnostic;

    #[test]
    fn the_linkers_message_is_kept_and_its_command_line_is_not() {
        assert!(is_diagnostic("error: linking with `cc` failed: exit status: 1"));
        assert!(is_diagnostic("          /usr/bin/ld: final link failed: No space left on device"));
        assert!(is_diagnostic("          collect2: fatal error: ld terminated with signal 9 [Killed]"));
        assert!(is_diagnostic("error: could not compile `tokenwatch-fuzz` (bin \"grpc_inventory\")"));
        assert!(!is_diagnostic("  = note:  \"cc\" \"-m64\" \"/check/x/symbols.o\" \"-Wl,-Bstatic\""));
        assert!(!is_diagnostic("   Compiling tokenwatch-agent v0.1.0 (/work/main/agent)"));
    }
}
