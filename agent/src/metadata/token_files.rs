//! Finds the token files to watch: each configured path, resolved inside
//! every mount namespace on the node as a process there would resolve it.
//!
//! Resolution uses `openat2(RESOLVE_IN_ROOT)` from `/proc/<pid>/root`, so an
//! absolute symlink inside a container (`/var/run -> /run`) resolves inside
//! that container, and kubelet's `token -> ..data/token -> ..<ts>/token`
//! chain ends at the real file. The file is opened `O_PATH`: never read.

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    fs,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use tokenwatch_common::FileKey;

/// Where a watched file was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchedFile {
    /// The configured path it was found at.
    pub path: PathBuf,
    /// Inode of the mount namespace it was found in.
    pub mount_ns: u64,
    /// A process in that namespace.
    pub pid: u32,
}

/// The token files found by one scan.
pub type TokenFiles = HashMap<FileKey, WatchedFile>;

/// Converts a userspace `st_dev` to the kernel's `s_dev` encoding.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | (minor & 0xf_ffff)
}

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
        let Ok(root) = open_path(&process.join("root")) else { continue };
        for path in paths {
            if let Some(key) = resolve_in_root(&root, path) {
                found.entry(key).or_insert_with(|| WatchedFile { path: path.clone(), mount_ns: ns.ino(), pid });
            }
        }
    }
    found
}

fn open_path(path: &Path) -> std::io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: valid C string; the returned fd is owned below.
    let fd = unsafe { libc::open(c_path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Resolves `path` under `root` as the namespace's processes would; returns
/// the key of a regular file, or `None`.
fn resolve_in_root(root: &OwnedFd, path: &Path) -> Option<FileKey> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let c_path = CString::new(relative.as_os_str().as_bytes()).ok()?;
    // SAFETY: open_how is plain integers; zero is "no flags" for each.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: valid pointers for the call's duration; fd owned below.
    let fd = unsafe {
        libc::syscall(libc::SYS_openat2, root.as_raw_fd(), c_path.as_ptr(), &how, std::mem::size_of::<libc::open_how>())
    };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: fresh descriptor we own.
    let file = fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = file.metadata().ok()?;
    meta.is_file().then(|| FileKey { dev: kernel_dev(meta.dev()), _pad: 0, ino: meta.ino() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_uses_the_20_bit_minor_split() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 57)), 57);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }

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
