//! Finds the token files to watch: each configured path, resolved inside
//! every mount namespace on the node as a process there would resolve it.
//!
//! Resolution uses `openat2(RESOLVE_IN_ROOT)` from `/proc/<pid>/root`, so an
//! absolute symlink inside a container (`/var/run -> /run`) resolves inside
//! that container, and kubelet's `token -> ..data/token -> ..<ts>/token`
//! chain ends at the real file. The file is opened `O_PATH`: never read.

use std::{
    collections::{HashMap, HashSet},
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use tokenwatch_common::FileKey;

use super::{
    cgroup,
    container_fs::{kernel_dev, open_dir, open_in_root},
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

/// Scans `proc` (normally `/proc`) for every mount namespace and resolves
/// each path in it. Namespaces that vanish mid-scan are skipped.
pub fn scan(proc: &Path, paths: &[PathBuf]) -> TokenFiles {
    let mut found = TokenFiles::new();
    let mut namespaces = HashSet::new();
    let Ok(entries) = fs::read_dir(proc) else { return found };
    let mut pids: Vec<u32> = entries.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    for pid in pids {
        let process = proc.join(pid.to_string());
        let Ok(ns) = fs::metadata(process.join("ns/mnt")) else { continue };
        if !namespaces.insert(ns.ino()) {
            continue;
        }
        let Ok(root) = open_dir(&process.join("root")) else { continue };
        for path in paths {
            if let Some(key) = resolve_in_root(&root, path) {
                let file = found.entry(key).or_insert_with(|| WatchedFile {
                    path: path.clone(),
                    mount_ns: ns.ino(),
                    pid,
                    pod_uid: pod_of(&process),
                    container_ids: Vec::new(),
                    volume_name: volume_name(&root, path, key.dev),
                });
                if let Some(id) = container_of(&process).filter(|id| !file.container_ids.contains(id)) {
                    file.container_ids.push(id);
                }
            }
        }
    }
    found
}

/// The pod uid in `/proc/<pid>/cgroup`, if the process is in a pod.
fn pod_of(process: &Path) -> Option<String> {
    let text = fs::read_to_string(process.join("cgroup")).ok()?;
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2)).find_map(|path| cgroup::identify_path(path).pod_uid)
}

/// The container id in `/proc/<pid>/cgroup`, if the process is in one.
fn container_of(process: &Path) -> Option<String> {
    let text = fs::read_to_string(process.join("cgroup")).ok()?;
    text.lines().filter_map(|line| line.splitn(3, ':').nth(2)).find_map(|path| cgroup::identify_path(path).container_id)
}

/// The token's file name when its directory is a token volume: a tmpfs, the
/// same filesystem as the file, holding kubelet's `..data` link.
fn volume_name(root: &OwnedFd, path: &Path, dev: u32) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name.len() >= tokenwatch_common::TOKEN_NAME_LEN {
        return None;
    }
    let dir = path.parent()?;
    let dir_fd = open_in_root(root, dir, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)?;
    let dir_file = fs::File::from(dir_fd);
    let is_tmpfs =
        nix::sys::statfs::fstatfs(&dir_file).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
    let same_fs = dir_file.metadata().is_ok_and(|m| kernel_dev(m.dev()) == dev);
    let atomic_writer =
        open_in_root(root, &dir.join("..data"), libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC).is_some();
    (is_tmpfs && same_fs && atomic_writer).then(|| name.to_owned())
}

/// Resolves `path` under `root` as the namespace's processes would; returns
/// the key of a regular file, or `None`.
fn resolve_in_root(root: &OwnedFd, path: &Path) -> Option<FileKey> {
    let file = fs::File::from(open_in_root(root, path, libc::O_PATH | libc::O_CLOEXEC)?);
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
        let found = scan(&proc, &wanted);
        assert_eq!(found.len(), 1);
        let meta = fs::metadata(root.join("run/secrets/token")).expect("stat");
        let (key, file) = found.iter().next().expect("one");
        assert_eq!(key.ino, meta.ino());
        assert_eq!(key.dev, kernel_dev(meta.dev()));
        assert_eq!(file.path, wanted[0]);
        assert_eq!(file.pid, 7);
    }
}
