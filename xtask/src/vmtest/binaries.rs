//! The two programs each VM runs: the release agent (`kernel-check`) and the
//! `kernel_matrix` test executable. The test executable has the agent's
//! absolute path compiled in (`CARGO_BIN_EXE_tokenwatch`), which is why the
//! initramfs puts both at their host paths.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::capture;
use crate::util::{self, say};

/// The agent's package.
const AGENT_PACKAGE: &str = "tokenwatch-agent";
/// The agent's binary target.
const AGENT_BIN: &str = "tokenwatch";
/// The agent's test target the VMs run (`agent/tests/kernel_matrix/`).
pub const TEST_TARGET: &str = "kernel_matrix";

/// What goes into the initramfs.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The release `tokenwatch`.
    pub agent: PathBuf,
    /// The `kernel_matrix` test executable, `None` when the target is missing
    /// (the matrix then reports the kernel check only, and fails).
    pub tests: Option<PathBuf>,
}

/// Build the release agent and the release `kernel_matrix` test executable.
pub fn build() -> Result<Binaries> {
    let mut command = util::cargo();
    command.args(["build", "--release", "-p", AGENT_PACKAGE, "--message-format=json-render-diagnostics"]);
    let json = capture(&mut command, "the release agent the VMs run; agent/build.rs compiles the eBPF programs")?;
    let agent = executable(&json, AGENT_BIN).context("cargo built no `tokenwatch` executable")?;

    let mut command = util::cargo();
    command.args(["test", "--release", "--no-run", "-p", AGENT_PACKAGE, "--test", TEST_TARGET]);
    command.arg("--message-format=json-render-diagnostics");
    let tests = match capture(&mut command, "the kernel test cases, run inside each VM") {
        Ok(json) => Some(executable(&json, TEST_TARGET).context("cargo built no kernel_matrix test executable")?),
        Err(err) if !test_target_exists() => {
            say(format!("vmtest: WARNING: agent/tests/{TEST_TARGET} does not exist yet ({err:#}); the VMs run the kernel check only"));
            None
        }
        Err(err) => return Err(err),
    };
    Ok(Binaries { agent, tests })
}

/// The binaries an earlier build left: the release agent and the newest
/// `kernel_matrix` executable in `target/release/deps`.
pub fn prebuilt() -> Result<Binaries> {
    let release = util::workspace_root().join("target/release");
    let agent = release.join(AGENT_BIN);
    if !agent.is_file() {
        bail!("--skip-build, but {} is not there: run without --skip-build once", agent.display());
    }
    let tests = newest_test_executable(&release.join("deps"))?;
    if tests.is_none() {
        say(format!("vmtest: WARNING: no {TEST_TARGET} test executable in target/release/deps; the VMs run the kernel check only"));
    }
    Ok(Binaries { agent, tests })
}

/// Whether the agent has the test target's directory (or file) yet.
fn test_target_exists() -> bool {
    let tests = util::workspace_root().join("agent/tests");
    tests.join(TEST_TARGET).join("main.rs").exists() || tests.join(format!("{TEST_TARGET}.rs")).exists()
}

/// The newest `kernel_matrix-<hash>` executable (not its `.d` file) in `deps`.
fn newest_test_executable(deps: &Path) -> Result<Option<PathBuf>> {
    let prefix = format!("{TEST_TARGET}-");
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for entry in fs::read_dir(deps).with_context(|| format!("listing {}", deps.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(&prefix) || name.contains('.') {
            continue;
        }
        let modified = entry.metadata()?.modified()?;
        if newest.as_ref().is_none_or(|(time, _)| modified > *time) {
            newest = Some((modified, entry.path()));
        }
    }
    Ok(newest.map(|(_, path)| path))
}

/// The `executable` of the artifact whose target is `name`, from cargo's
/// JSON messages (one per line).
fn executable(json: &str, name: &str) -> Option<PathBuf> {
    json.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact" && message["target"]["name"] == name)
        .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// cargo's JSON names many artifacts: the right one must be taken.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_executable_of_the_named_target() {
        let json = r#"{"reason":"compiler-artifact","target":{"name":"tokenwatch_agent"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"kernel_matrix"},"executable":"/w/target/release/deps/kernel_matrix-0a1b"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(executable(json, TEST_TARGET), Some(PathBuf::from("/w/target/release/deps/kernel_matrix-0a1b")));
        assert_eq!(executable(json, AGENT_BIN), None);
    }
}
