//! Removing what a containerd of the harness leaves behind: shims and pod
//! processes, mounts under its directory (overlay rootfs, sandbox shm, token
//! tmpfs), the directory itself, and the `kubepods/…/pod<uid>` cgroup
//! directories that runc creates as parents of the containers' cgroups and
//! nobody removes. Everything here is best effort and never panics: it runs
//! from `Drop` after failed tests too.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use nix::{
    mount::{umount2, MntFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::super::wait_for;

/// Where kubelet's QoS classes put pod cgroups, under each hierarchy's root.
const QOS_PARENTS: [&str; 3] = ["kubepods/besteffort", "kubepods/burstable", "kubepods"];

/// The fields of each line of /proc/self/mountinfo: (mount point, fs type).
fn mounts() -> Vec<(PathBuf, String)> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            Some((PathBuf::from(unescape(mount_point)), fs_type.to_owned()))
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points at or under `root`, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mounts().into_iter().map(|(p, _)| p).filter(|p| p.starts_with(root)).collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Lazily unmounts everything at or under `root` (stacked mounts included).
pub fn unmount_under(root: &Path) {
    for _ in 0..8 {
        let found = mounts_under(root);
        if found.is_empty() {
            return;
        }
        for mount_point in found {
            let _ = umount2(&mount_point, MntFlags::MNT_DETACH);
        }
    }
}

/// The mount points of every cgroup hierarchy (v1 controllers, named v1
/// hierarchies such as `name=systemd`, and cgroup2).
pub fn cgroup_roots() -> Vec<PathBuf> {
    mounts().into_iter().filter(|(_, fs_type)| fs_type == "cgroup" || fs_type == "cgroup2").map(|(p, _)| p).collect()
}

/// Every existing `pod<uid>` cgroup directory of pod `uid`, on every hierarchy.
pub fn pod_cgroup_dirs(uid: &str) -> Vec<PathBuf> {
    let leaf = format!("pod{uid}");
    let roots = cgroup_roots();
    roots
        .iter()
        .flat_map(|root| QOS_PARENTS.map(|parent| root.join(parent).join(&leaf)))
        .filter(|d| d.is_dir())
        .collect()
}

/// Every existing `kubepods` cgroup directory, on every hierarchy.
pub fn kubepods_dirs() -> Vec<PathBuf> {
    cgroup_roots().into_iter().map(|root| root.join("kubepods")).filter(|dir| dir.is_dir()).collect()
}

/// `dir` and its descendants, children before parents.
fn cgroup_tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(cgroup_tree(&entry.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// SIGKILLs every process in the cgroup `dir` and below.
fn kill_cgroup_members(dir: &Path) {
    for cgroup in cgroup_tree(dir) {
        let procs = fs::read_to_string(cgroup.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Kills what is left in pod `uid`'s cgroups and removes its `pod<uid>`
/// directories on every hierarchy, then the `kubepods` parents that are now
/// empty (a parent another pod still uses stays). Returns the directories
/// that could not be removed.
pub fn remove_pod_cgroups(uid: &str) -> Vec<PathBuf> {
    let dirs = pod_cgroup_dirs(uid);
    for dir in &dirs {
        kill_cgroup_members(dir);
    }
    // rmdir fails with EBUSY until the killed processes are gone.
    let left = wait_for(Duration::from_secs(5), || {
        for dir in &dirs {
            for cgroup in cgroup_tree(dir) {
                let _ = fs::remove_dir(cgroup);
            }
        }
        let left: Vec<PathBuf> = dirs.iter().filter(|d| d.exists()).cloned().collect();
        left.is_empty().then_some(())
    });
    for root in cgroup_roots() {
        for parent in QOS_PARENTS {
            let _ = fs::remove_dir(root.join(parent));
        }
    }
    match left {
        Some(()) => Vec::new(),
        None => dirs.into_iter().filter(|d| d.exists()).collect(),
    }
}

/// The argument vector of process `pid`.
fn cmdline(pid: i32) -> Vec<String> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect()
}

/// Every live process's pid.
fn pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .map(|entries| entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Pids of the containerd shims that serve the containerd at `socket`
/// (`containerd-shim-runc-v2 … -address <socket>`).
pub fn shims_of(socket: &Path) -> Vec<i32> {
    let socket = socket.to_string_lossy();
    pids()
        .into_iter()
        .filter(|pid| {
            let args = cmdline(*pid);
            args.first().is_some_and(|a| a.contains("containerd-shim"))
                && args.windows(2).any(|w| w[0] == "-address" && w[1] == socket)
        })
        .collect()
}

/// Pids of containerd daemons started with `--config <config>`.
pub fn daemons_of(config: &Path) -> Vec<i32> {
    let config = config.to_string_lossy();
    pids()
        .into_iter()
        .filter(|pid| {
            let args = cmdline(*pid);
            args.first().is_some_and(|a| a.ends_with("containerd")) && args.iter().any(|a| *a == config)
        })
        .collect()
}

/// SIGKILLs `pids` and waits (up to 5 s) until they are gone.
pub fn kill_and_wait(pids: &[i32]) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
    }
    let _ = wait_for(Duration::from_secs(5), || pids.iter().all(|pid| !alive(*pid)).then_some(()));
}

/// Whether `pid` is a live process (not gone, not a zombie waiting for its
/// parent).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// Where containerd 1.6's shims put their sockets, whatever the config says.
const SHIM_SOCKETS: &str = "/run/containerd/s";

/// The shim sockets of the containerd whose state directory is `state`: each
/// task's bundle (`<state>/io.containerd.runtime.v2.task/<ns>/<id>/`) has an
/// `address` file, `unix:///run/containerd/s/<sha256>`.
pub fn shim_sockets(state: &Path) -> Vec<PathBuf> {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let bundles =
        fs::read_dir(tasks).into_iter().flatten().flatten().flat_map(|ns| fs::read_dir(ns.path()).into_iter());
    bundles
        .flatten()
        .flatten()
        .filter_map(|bundle| fs::read_to_string(bundle.path().join("address")).ok())
        .map(|address| PathBuf::from(address.trim().trim_start_matches("unix://")))
        .filter(|socket| socket.starts_with(SHIM_SOCKETS))
        .collect()
}

/// Removes `sockets` a killed shim could not remove itself, then
/// `/run/containerd/s` and `/run/containerd` if they are empty (a system
/// containerd's are never empty: its own socket is there).
pub fn remove_shim_sockets(sockets: &[PathBuf]) {
    for socket in sockets {
        let _ = fs::remove_file(socket);
    }
    let _ = fs::remove_dir(SHIM_SOCKETS);
    let _ = fs::remove_dir(Path::new(SHIM_SOCKETS).parent().unwrap_or(Path::new(SHIM_SOCKETS)));
}

/// Directories of earlier harness runs (`/tmp/tokenwatch-containerd-<pid>-<n>`)
/// whose test process is gone: a test binary killed before its `Drop`s ran.
pub fn stale_dirs(prefix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/tmp") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid: i32 = name.strip_prefix(prefix)?.split('-').next()?.parse().ok()?;
            (!alive(pid)).then(|| entry.path())
        })
        .collect()
}
