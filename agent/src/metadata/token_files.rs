//! Finds the token files to watch: each configured path, resolved inside
//! every mount namespace on the node as a process there would resolve it,
//! and each path a pod's spec declares ([`DeclaredPath`]), resolved only
//! inside that pod's own containers and counted only on the volume kubelet
//! mounted for it: a pod's author chooses those paths, and must not point
//! the agent at the node's files (`/etc/hostname`, libc) or another pod's.
//!
//! Resolution uses `openat2(RESOLVE_IN_ROOT)` from `/proc/<pid>/root`, so an
//! absolute symlink inside a container (`/var/run -> /run`) resolves inside
//! that container, and kubelet's `token -> ..data/token -> ..<ts>/token`
//! chain ends at the real file. The file is opened `O_PATH`: never read.

use std::{
    collections::HashMap,
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use tokenwatch_common::FileKey;

use super::{
    cgroup,
    container_fs::{kernel_dev, open_dir, open_in_root, OFlags},
};

/// Where a watched file was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedFile {
    /// The configured path it was found at.
    pub path: PathBuf,
    /// Inode of the mount namespace it was found in.
    pub mount_ns: u64,
    /// A process in that namespace.
    pub pid: u32,
    /// The pod whose container that namespace is, from the process's cgroup.
    pub pod_uid: Option<String>,
    /// Every container whose mount namespace holds this same file (by
    /// runtime id, from the cgroup of a process there): whom the token was
    /// given to. A sibling reading it through `/proc/<pid>/root` is not
    /// among them unless it mounts the same volume.
    pub container_ids: Vec<String>,
    /// Set when the file lies on a token volume (a tmpfs whose root holds
    /// kubelet's `..data` layout): the file name every token on it has, so
    /// the kernel can match the volume by device and name and a rotation
    /// leaves no blind spot.
    pub volume_name: Option<String>,
}

/// Finds the watched file an open matched: by inode, else (after a
/// rotation the scanner has not seen yet) by the token volume's device.
pub fn find(files: &TokenFiles, key: &FileKey) -> Option<WatchedFile> {
    files
        .get(key)
        .or_else(|| files.iter().find(|(k, w)| k.dev == key.dev && w.volume_name.is_some()).map(|(_, w)| w))
        .cloned()
}

/// The token files found by one scan.
pub type TokenFiles = HashMap<FileKey, WatchedFile>;

/// A token path a pod's spec declares (a projected volume's or a legacy
/// Secret's `mountPath` and file): resolved only in mount namespaces whose
/// process is in the pod's cgroup, and a file found there counts only on
/// one of `devices`, the pod's token volume as kubelet mounted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredPath {
    /// Where the pod's containers see the token.
    pub path: PathBuf,
    /// The pod's uid.
    pub pod_uid: String,
    /// The devices (kernel encoding) of the volumes kubelet mounted for it.
    pub devices: Vec<u32>,
}

/// Scans `proc` (normally `/proc`) for every mount namespace and resolves
/// each of `paths` in it, and each of `declared` in its pod's namespaces.
/// Namespaces that vanish mid-scan are skipped.
pub fn scan(proc: &Path, paths: &[PathBuf], declared: &[DeclaredPath]) -> TokenFiles {
    let mut found = TokenFiles::new();
    // Each namespace once, by its first process; and its pod's declared
    // paths once a process of it names the pod (the first may be a
    // process entered from outside, `nsenter`, in no pod's cgroup). The
    // node's own namespace is no pod's: its processes are not asked.
    let mut namespaces: HashMap<u64, bool> = HashMap::new();
    let node_ns = fs::metadata(proc.join("1/ns/mnt")).map(|ns| ns.ino()).ok();
    let Ok(entries) = fs::read_dir(proc) else { return found };
    let mut pids: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        let process = proc.join(pid.to_string());
        let Ok(ns) = fs::metadata(process.join("ns/mnt")) else { continue };
        let seen = namespaces.get(&ns.ino()).copied();
        if seen == Some(true) || (seen == Some(false) && (declared.is_empty() || Some(ns.ino()) == node_ns)) {
            continue;
        }
        let (pod_uid, container_id) = cgroup_of(&process);
        if seen == Some(false) && pod_uid.is_none() {
            continue;
        }
        namespaces.insert(ns.ino(), pod_uid.is_some());
        let Ok(root) = open_dir(&process.join("root")) else { continue };
        let configured = if seen.is_none() { paths } else { &[] };
        let own = declared.iter().filter(|d| Some(&d.pod_uid) == pod_uid.as_ref());
        let candidates = configured.iter().map(|path| (path, None)).chain(own.map(|d| (&d.path, Some(&d.devices))));
        for (path, devices) in candidates {
            let Some(key) = resolve_in_root(&root, path) else { continue };
            if devices.is_some_and(|devices| !devices.contains(&key.dev)) {
                continue;
            }
            let file = found.entry(key).or_insert_with(|| WatchedFile {
                path: path.clone(),
                mount_ns: ns.ino(),
                pid,
                pod_uid: pod_uid.clone(),
                container_ids: Vec::new(),
                volume_name: volume_name(&root, path, key.dev),
            });
            if let Some(id) = container_id.as_ref().filter(|id| !file.container_ids.contains(id)) {
                file.container_ids.push(id.clone());
            }
        }
    }
    found
}

/// The pod uid and the container id in `/proc/<pid>/cgroup` (one read),
/// each when the process is in one.
fn cgroup_of(process: &Path) -> (Option<String>, Option<String>) {
    let Ok(text) = fs::read_to_string(process.join("cgroup")) else { return (None, None) };
    let paths = || text.lines().filter_map(|line| line.splitn(3, ':').nth(2));
    (paths().find_map(cgroup::pod_uid_in_path), paths().find_map(|path| cgroup::identify_path(path).container_id))
}

/// The token's file name when its directory is a token volume: a tmpfs, the
/// same filesystem as the file, holding kubelet's `..data` link.
fn volume_name(root: &OwnedFd, path: &Path, dev: u32) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.len() >= tokenwatch_common::TOKEN_NAME_LEN {
        return None;
    }
    let dir = path.parent()?;
    let dir_fd = open_in_root(root, dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
    let dir_file = fs::File::from(dir_fd);
    let is_tmpfs =
        nix::sys::statfs::fstatfs(&dir_file).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let same_fs = dir_file.metadata().is_ok_and(|m| kernel_dev(m.dev()) == dev);
    let atomic_writer =
        open_in_root(root, &dir.join("..data"), OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC).is_some();
    (is_tmpfs && same_fs && atomic_writer).then(|| name.to_owned())
}

/// Resolves `path` under `root` as the namespace's processes would; returns
/// the key of a regular file, or `None`.
fn resolve_in_root(root: &OwnedFd, path: &Path) -> Option<FileKey> {
    let file = fs::File::from(open_in_root(root, path, OFlags::PATH | OFlags::CLOEXEC)?);
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| FileKey { dev: kernel_dev(meta.dev()), _pad: 0, ino: meta.ino() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_file_through_absolute_symlinks_inside_the_root() {
        // A fake /proc with one "process" whose root is a temp dir holding
        // var/run -> /run (absolute, must resolve inside the root).
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("run/secrets")).expect("mkdir");
        fs::write(root.join("run/secrets/token"), "x").expect("write");
        fs::create_dir_all(root.join("var")).expect("mkdir");
        std::os::unix::fs::symlink("/run", root.join("var/run")).expect("symlink");
        let proc = dir.path().join("proc");
        fs::create_dir_all(proc.join("7/ns")).expect("mkdir");
        std::os::unix::fs::symlink(&root, proc.join("7/root")).expect("symlink");
        std::os::unix::fs::symlink("/proc/self/ns/mnt", proc.join("7/ns/mnt")).expect("symlink");

        let wanted = [PathBuf::from("/var/run/secrets/token"), PathBuf::from("/missing/token")];
        let found = scan(&proc, &wanted, &[]);
        assert_eq!(found.len(), 1);
        let meta = fs::metadata(root.join("run/secrets/token")).expect("stat");
        let (key, file) = found.iter().next().expect("one");
        assert_eq!(key.ino, meta.ino());
        assert_eq!(key.dev, kernel_dev(meta.dev()));
        assert_eq!(file.path, wanted[0]);
        assert_eq!(file.pid, 7);
    }

    #[test]
    fn a_declared_path_counts_only_in_its_pods_namespaces_and_on_its_volume() {
        const UID: &str = "3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b";
        let dir = tempfile::tempdir().expect("tempdir");
        let proc = dir.path().join("proc");
        // Two "processes" in two mount namespaces: 7 on the node, 8 in the
        // pod; each root holds an etc/hostname.
        for (pid, ns, cgroup) in [(7, "mnt", "0::/system.slice/sshd.service\n"), (8, "uts", "")] {
            let root = dir.path().join(format!("root{pid}"));
            fs::create_dir_all(root.join("etc")).expect("mkdir");
            fs::write(root.join("etc/hostname"), "node").expect("write");
            fs::create_dir_all(proc.join(format!("{pid}/ns"))).expect("mkdir");
            std::os::unix::fs::symlink(&root, proc.join(format!("{pid}/root"))).expect("symlink");
            std::os::unix::fs::symlink(format!("/proc/self/ns/{ns}"), proc.join(format!("{pid}/ns/mnt")))
                .expect("symlink");
            let cgroup = if cgroup.is_empty() {
                format!(
                    "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{}.scope\n",
                    UID.replace('-', "_"),
                    "ab".repeat(32)
                )
            } else {
                cgroup.to_owned()
            };
            fs::write(proc.join(format!("{pid}/cgroup")), cgroup).expect("write");
        }
        let dev_of = |pid: u32| {
            kernel_dev(fs::metadata(dir.path().join(format!("root{pid}/etc/hostname"))).expect("stat").dev())
        };
        let declared = |devices: Vec<u32>| DeclaredPath { path: "/etc/hostname".into(), pod_uid: UID.into(), devices };

        // A process entered into the pod's namespace from the node
        // (`nsenter`), with a lower pid: the pod is still found, by 8.
        fs::create_dir_all(proc.join("6/ns")).expect("mkdir");
        std::os::unix::fs::symlink(dir.path().join("root8"), proc.join("6/root")).expect("symlink");
        std::os::unix::fs::symlink("/proc/self/ns/uts", proc.join("6/ns/mnt")).expect("symlink");
        fs::write(proc.join("6/cgroup"), "0::/user.slice/session-1.scope\n").expect("write");
        let found = scan(&proc, &[], &[declared(vec![dev_of(8)])]);
        let pids: Vec<u32> = found.values().map(|f| f.pid).collect();
        assert_eq!(pids, [8], "only the pod's own namespace");
        assert_eq!(found.values().next().and_then(|f| f.pod_uid.as_deref()), Some(UID));
        assert!(scan(&proc, &[], &[declared(vec![dev_of(8) + 1])]).is_empty(), "not on the pod's volume");
        let other_pod =
            DeclaredPath { pod_uid: "4a1f2d3b-0c8e-4f72-9b30-1d6e7f8a9b0c".into(), ..declared(vec![dev_of(8)]) };
        assert!(scan(&proc, &[], &[other_pod]).is_empty(), "another pod's declaration");
        // The operator's own paths still resolve everywhere.
        assert_eq!(scan(&proc, &[PathBuf::from("/etc/hostname")], &[]).len(), 2, "both namespaces' files");
    }
}
