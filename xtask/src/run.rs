//! `cargo xtask run`: start the agent as root in the foreground.
//!
//! Ctrl-C in a terminal sends SIGINT to the whole foreground process group:
//! the agent (which shuts down cleanly on it), sudo (which does not forward a
//! signal its own group already got) and xtask. xtask ignores SIGINT while it
//! waits, so it outlives the agent and returns the agent's exit status.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{bail, Context, Result};

use crate::util::{self, say};

/// What the agent runs with when no arguments are given: no Kubernetes needed.
const DEFAULT_ARGS: [&str; 1] = ["--standalone"];

/// Run `binary agent args...` (as root, through `sudo -E` if xtask is not
/// root), wait for it and return its exit code.
pub fn agent(binary: &Path, args: &[String]) -> Result<ExitCode> {
    let args: Vec<String> =
        if args.is_empty() { DEFAULT_ARGS.iter().map(|&arg| arg.to_owned()).collect() } else { args.to_vec() };
    let mut command = if util::is_root() {
        Command::new(binary)
    } else if util::which("sudo").is_some() {
        let mut command = Command::new("sudo");
        command.arg("-E").arg(binary);
        command
    } else {
        bail!("the agent loads eBPF programs and needs root, and sudo is not installed: run this as root");
    };
    command.arg("agent").args(&args);
    say(format!(
        "running `{}` (the agent loads eBPF programs, so it runs as root; Ctrl-C stops it cleanly)",
        util::shell_line(&command)
    ));
    let mut child = command.spawn().with_context(|| format!("starting {}", binary.display()))?;
    let status = {
        let _ignored = IgnoreSigint::new();
        child.wait().context("waiting for the agent")?
    };
    say(format!("the agent exited ({status})"));
    Ok(exit_code(status))
}

/// The shell's convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status.code().or_else(|| status.signal().map(|signal| 128 + signal)).unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Ignores SIGINT in xtask while alive; restores the previous disposition on
/// drop. Set after the child is spawned, so the child keeps the default.
struct IgnoreSigint(libc::sighandler_t);

impl IgnoreSigint {
    fn new() -> Self {
        // SAFETY: SIG_IGN is a valid disposition, and xtask installs no
        // handlers of its own that this could replace.
        IgnoreSigint(unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) })
    }
}

impl Drop for IgnoreSigint {
    fn drop(&mut self) {
        if self.0 != libc::SIG_ERR {
            // SAFETY: restores the disposition `signal` returned before.
            unsafe { libc::signal(libc::SIGINT, self.0) };
        }
    }
}
