//! What `/proc` says about a process and its ancestors. Read when the event
//! arrives, so a process that has already exited yields empty fields (the
//! kernel-side identity in the event still stands).

use std::{fs, io::Read, path::Path};

use super::redact;

/// How many ancestors are reported at most.
pub const MAX_ANCESTORS: usize = 16;

/// A process's executable, arguments and parent chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Path of the executable.
    pub exe: String,
    /// Command line, with secrets redacted and long arguments cut.
    pub args: Vec<String>,
    /// Parent first, up to pid 1.
    pub ancestors: Vec<Ancestor>,
}

/// One ancestor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ancestor {
    /// Its pid.
    pub pid: u32,
    /// Its short name.
    pub comm: String,
    /// Its executable.
    pub exe: String,
}

/// Reads `proc/<pid>` and its ancestors' entries.
pub fn inspect(proc: &Path, pid: u32) -> ProcessInfo {
    let dir = proc.join(pid.to_string());
    let mut info = ProcessInfo { exe: exe(&dir), args: args(&dir), ancestors: Vec::new() };
    let mut current = parent_pid(&dir);
    while let Some(ppid) = current.filter(|p| *p != 0) {
        if info.ancestors.len() >= MAX_ANCESTORS {
            break;
        }
        let parent = proc.join(ppid.to_string());
        info.ancestors.push(Ancestor { pid: ppid, comm: comm(&parent), exe: exe(&parent) });
        current = parent_pid(&parent);
    }
    info
}

fn exe(dir: &Path) -> String {
    fs::read_link(dir.join("exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

fn comm(dir: &Path) -> String {
    fs::read_to_string(dir.join("comm")).map(|c| c.trim_end().to_owned()).unwrap_or_default()
}

/// The command line, secrets redacted and cut to size
/// ([`super::redact`]) before anything else holds it.
fn args(dir: &Path) -> Vec<String> {
    let mut raw = Vec::new();
    let read = fs::File::open(dir.join("cmdline"))
        .and_then(|file| file.take(redact::MAX_CMDLINE_READ as u64).read_to_end(&mut raw));
    if read.is_err() {
        return Vec::new();
    }
    let args = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned());
    redact::command_line(args.collect())
}

fn parent_pid(dir: &Path) -> Option<u32> {
    let status = fs::read_to_string(dir.join("status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspects_this_process_and_its_ancestry() {
        let info = inspect(Path::new("/proc"), std::process::id());
        let own_exe = std::env::current_exe().expect("current exe");
        assert_eq!(info.exe, own_exe.to_string_lossy());
        assert_eq!(info.args.first().map(String::as_str), std::env::args().next().as_deref());
        let parent = info.ancestors.first().expect("a parent");
        assert_eq!(parent.pid, std::os::unix::process::parent_id());
        assert!(info.ancestors.len() <= MAX_ANCESTORS);
    }

    #[test]
    fn a_vanished_process_yields_empty_fields() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(inspect(dir.path(), 12345), ProcessInfo::default());
    }
}
