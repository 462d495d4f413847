//! Running commands and saying so: every command xtask starts is printed
//! (to stderr, prefixed `xtask:`) with the reason it is run.

use std::env;
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The eBPF crate. It builds only for `bpfel-unknown-none`, which
/// agent/build.rs does with its own nested cargo.
pub const EBPF_PACKAGE: &str = "tokenwatch-ebpf";

/// `--workspace` without the eBPF crate. Built for the host in the same cargo
/// run as the agent, it would get the agent's features of tokenwatch-common
/// (aya, and with it std), whose panic handler clashes with its own (E0152).
pub const HOST_WORKSPACE: [&str; 3] = ["--workspace", "--exclude", EBPF_PACKAGE];

/// Print one line of xtask's progress report.
pub fn say(message: impl Display) {
    eprintln!("xtask: {message}");
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_owned()
}

/// The cargo that runs xtask (cargo sets `CARGO`), so every nested build uses
/// the same toolchain.
fn cargo_program() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// A `cargo` command run from the workspace root.
pub fn cargo() -> Command {
    let mut command = Command::new(cargo_program());
    command.current_dir(workspace_root());
    command
}

/// Whether xtask runs as root (effective uid 0).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The first `program` on PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}

/// A command that needs root: run as is when xtask is root, through `sudo`
/// otherwise, and an error naming `what` when there is no sudo. `envs` are set
/// for the program itself (through `env`, since sudo resets the environment).
pub fn privileged(program: &str, envs: &[(&str, &str)], what: &str) -> Result<Command> {
    if is_root() {
        let mut command = Command::new(program);
        command.envs(envs.iter().copied());
        return Ok(command);
    }
    if which("sudo").is_none() {
        bail!("{what} needs root, and sudo is not installed: run this as root");
    }
    let mut command = Command::new("sudo");
    if !envs.is_empty() {
        command.arg("env").args(envs.iter().map(|(key, value)| format!("{key}={value}")));
    }
    command.arg(program);
    Ok(command)
}

/// The command as a shell line: explicitly set variables, program, arguments.
pub fn shell_line(command: &Command) -> String {
    let mut words: Vec<String> = command
        .get_envs()
        .filter_map(|(key, value)| Some(format!("{}={}", key.to_string_lossy(), quote(value?))))
        .collect();
    let program = command.get_program();
    words.push(if program == cargo_program() { "cargo".to_owned() } else { quote(program) });
    words.extend(command.get_args().map(quote));
    words.join(" ")
}

/// Quote one shell word if it needs it.
fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    let plain = !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+^@%".contains(c));
    if plain {
        word.into_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Announce `command` and why, run it with its stdout sent to stderr (stdout
/// is the product's: `cargo xtask run | jq` must see alerts only, never
/// apt's or cargo's chatter), and fail unless it succeeds.
pub fn run(command: &mut Command, why: &str) -> Result<()> {
    say(format!("running `{}` ({why})", shell_line(command)));
    command.stdout(std::process::Stdio::from(std::io::stderr()));
    let status = command.status().with_context(|| format!("starting `{}`", shell_line(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shell_line(command));
    }
    Ok(())
}

/// Run a probe quietly and return its output, or `None` if it cannot start.
pub fn probe(command: &mut Command) -> Option<Output> {
    command.output().ok()
}

/// The trimmed stdout of a probe that succeeded.
pub fn probe_stdout(command: &mut Command) -> Option<String> {
    probe(command)
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// `~/.cargo/bin` (or `$CARGO_HOME/bin`), where rustup's cargo and
/// `cargo install`ed tools such as bpf-linker live.
pub fn cargo_bin_dir() -> Option<PathBuf> {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))?;
    Some(home.join("bin"))
}

/// Put the cargo bin directory on PATH for every process xtask starts: the
/// agent's build script finds bpf-linker on PATH, and `cargo install` puts it
/// there.
pub fn ensure_cargo_bin_on_path() -> Result<()> {
    let Some(bin) = cargo_bin_dir() else {
        say("neither CARGO_HOME nor HOME is set: cannot tell where `cargo install` puts bpf-linker");
        return Ok(());
    };
    let path = env::var_os("PATH").unwrap_or_default();
    let wanted = bin.canonicalize().unwrap_or_else(|_| bin.clone());
    if env::split_paths(&path).any(|dir| dir == bin || dir.canonicalize().is_ok_and(|dir| dir == wanted)) {
        return Ok(());
    }
    say(format!(
        "prepending {} to PATH for the commands xtask starts (agent/build.rs looks for bpf-linker on PATH, \
         and `cargo install` puts it there)",
        bin.display()
    ));
    let joined = env::join_paths(std::iter::once(bin).chain(env::split_paths(&path))).context("building PATH")?;
    // xtask is single-threaded: nothing reads the environment concurrently.
    env::set_var("PATH", joined);
    Ok(())
}

/// Bytes free to an unprivileged writer on the filesystem holding `path`
/// (`statvfs`), or `None` if it cannot be asked.
pub fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statvfs is a valid value for the call to fill.
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct the call fills.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// A duration as people read it: `8.2s`, `3m 07s`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m {:02}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set in the child run of [`a_tools_output_goes_to_stderr`].
    const CHILD: &str = "XTASK_TEST_RUN_CHILD";

    #[test]
    fn a_tools_output_goes_to_stderr() {
        if std::env::var_os(CHILD).is_some() {
            super::run(Command::new("sh").args(["-c", "echo from-the-tool"]), "a test").expect("runs");
            return;
        }
        // This test binary again, running only this test, as the child.
        let output = Command::new(std::env::current_exe().expect("the test binary"))
            .args(["--exact", "util::tests::a_tools_output_goes_to_stderr", "--nocapture"])
            .env(CHILD, "1")
            .output()
            .expect("run the child");
        let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{stdout}{stderr}");
        assert!(!stdout.contains("from-the-tool"), "a tool wrote to xtask's stdout:\n{stdout}");
        assert!(stderr.contains("from-the-tool"), "the tool's output is on stderr:\n{stderr}");
    }
}
