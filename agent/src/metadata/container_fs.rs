//! Looking at a container's files from the host, as the container's own
//! processes see them, and naming a file the way the kernel's programs do.
//!
//! Paths resolve with `openat2(RESOLVE_IN_ROOT)` from `/proc/<pid>/root`, so
//! an absolute symlink inside a container (`/var/run -> /run`,
//! `/usr/bin/python3 -> /usr/bin/python3.11`) resolves inside that
//! container, never on the host. Files are opened `O_PATH`: never read.

use std::{fs, os::fd::OwnedFd, path::Path};

pub use rustix::fs::OFlags;
use rustix::fs::{AtFlags, FileType, Mode, ResolveFlags, StatxFlags};

/// Converts a userspace `st_dev` to the kernel's `s_dev` encoding.
pub fn kernel_dev(st_dev: u64) -> u32 {
    kernel_dev_of(libc::major(st_dev), libc::minor(st_dev))
}

/// The kernel's `s_dev` encoding of a major and minor number.
fn kernel_dev_of(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// Opens the directory `path` (`O_PATH`), e.g. `/proc/<pid>/root`.
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// `openat2(root, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
/// absolute symlinks resolve inside `root`, as for a process whose root it is.
pub fn open_in_root(root: &OwnedFd, path: &Path, flags: OFlags) -> Option<OwnedFd> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let relative = if relative.as_os_str().is_empty() { Path::new(".") } else { relative };
    let resolve = ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(root, relative, flags, Mode::empty(), resolve).ok()
}

/// `(s_dev, i_ino)` of the open file `fd` as the kernel's programs read
/// them from its inode, or `None` when it is not a regular file.
///
/// The inode number is `stat`'s. The device is not always: on an overlayfs
/// whose layers lie on different file systems (without `xino`), `stat`
/// reports the layer's device while the inode's superblock is the
/// overlay's. So the device is read from the mount the file is on, by its
/// id in `mountinfo` (which prints the superblock's `s_dev`); `mountinfo`
/// is the text of `/proc/<pid>/mountinfo` of a process that sees the mount.
pub fn kernel_file_key(fd: &OwnedFd, mountinfo: &str) -> Option<(u32, u64)> {
    let wanted = StatxFlags::TYPE | StatxFlags::INO | StatxFlags::MNT_ID;
    let stx = rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, wanted).ok()?;
    if FileType::from_raw_mode(u32::from(stx.stx_mode)) != FileType::RegularFile {
        return None;
    }
    let dev = if stx.stx_mask & StatxFlags::MNT_ID.bits() != 0 {
        mount_dev(mountinfo, stx.stx_mnt_id)?
    } else {
        // Before 5.8 there is no mount id; stat's device is then wrong on a
        // multi-file-system overlay and on btrfs (a subvolume's own device).
        kernel_dev_of(stx.stx_dev_major, stx.stx_dev_minor)
    };
    Some((dev, stx.stx_ino))
}

/// The kernel `s_dev` of mount `id` in `mountinfo` text (`ID PARENT
/// MAJOR:MINOR ...` per line).
pub fn mount_dev(mountinfo: &str, id: u64) -> Option<u32> {
    mountinfo.lines().find_map(|line| {
        let mut fields = line.split(' ');
        if fields.next()?.parse::<u64>().ok()? != id {
            return None;
        }
        kernel_dev_text(fields.nth(1)?)
    })
}

/// The kernel's `s_dev` encoding of a mount table's `MAJOR:MINOR` field.
pub fn kernel_dev_text(text: &str) -> Option<u32> {
    let (major, minor) = text.split_once(':')?;
    Some(kernel_dev_of(major.parse().ok()?, minor.parse().ok()?))
}

/// A kernel `s_dev` as `MAJOR:MINOR`, as mount tables and alerts write it.
pub fn kernel_dev_display(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

/// `/proc/<pid>/mountinfo`, or empty when the process is gone.
pub fn mountinfo_of(proc: &Path, pid: u32) -> String {
    fs::read_to_string(proc.join(pid.to_string()).join("mountinfo")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn kernel_dev_uses_the_20_bit_minor_split() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
        assert_eq!(kernel_dev(libc::makedev(0, 57)), 57);
        assert_eq!(kernel_dev(libc::makedev(259, 300)), (259 << 20) | 300);
    }

    #[test]
    fn mount_dev_reads_the_mounts_major_minor() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    40 27 0:40 / /tmp/m rw,relatime - overlay overlay rw,lowerdir=/l\n\
                    41 27 259:3 / /data rw - ext4 /dev/nvme0n1p3 rw\n";
        assert_eq!(mount_dev(text, 40), Some(40));
        assert_eq!(mount_dev(text, 41), Some((259 << 20) | 3));
        assert_eq!(mount_dev(text, 4), None, "ids are compared whole, not as prefixes");
        assert_eq!(mount_dev("garbage\n\n40 x\n", 40), None);
    }

    #[test]
    fn a_host_file_has_the_key_stat_gives_and_a_directory_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bin");
        fs::write(&file, "x").expect("write");
        let root = open_dir(Path::new("/")).expect("open /");
        let mountinfo = mountinfo_of(Path::new("/proc"), std::process::id());
        let fd = open_in_root(&root, &file, OFlags::PATH | OFlags::CLOEXEC).expect("open");
        let meta = fs::metadata(&file).expect("stat");
        // Off overlayfs, the mount's device is stat's.
        assert_eq!(kernel_file_key(&fd, &mountinfo), Some((kernel_dev(meta.dev()), meta.ino())));
        let dir_fd = open_in_root(&root, dir.path(), OFlags::PATH | OFlags::CLOEXEC).expect("open dir");
        assert_eq!(kernel_file_key(&dir_fd, &mountinfo), None);
    }
}
