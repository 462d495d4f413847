//! Events the programs write to the ring buffer. Every event starts with an
//! [`EventHeader`] whose `kind` says which struct follows.

use crate::{
    Enforcement, CGROUP_NAME_LEN, COMM_LEN, EXE_NAME_LEN, MAX_ANCESTORS, MAX_PATH_COMPONENTS, PATH_COMPONENT_LEN,
    REQUESTED_PATH_LEN,
};

/// An integer that names no variant of the enum it was decoded into.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownValue(pub u32);

/// What an event reports; the first field of every event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A watched token file was opened: an [`OpenEvent`] follows.
    Open = 1,
    /// A watched API-server endpoint was dialled: a [`ConnectEvent`].
    Connect = 2,
}

impl TryFrom<u32> for EventKind {
    type Error = UnknownValue;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(EventKind::Open),
            2 => Ok(EventKind::Connect),
            other => Err(UnknownValue(other)),
        }
    }
}

/// Which syscall opened the file.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenSyscall {
    /// `open(2)`.
    Open = 1,
    /// `openat(2)`.
    Openat = 2,
    /// `openat2(2)`.
    Openat2 = 3,
    /// `IORING_OP_OPENAT` submitted to an io_uring: no syscall tracepoint
    /// sees it; the `io_uring:io_uring_complete` tracepoint does.
    IoUringOpenat = 4,
    /// `IORING_OP_OPENAT2` submitted to an io_uring.
    IoUringOpenat2 = 5,
    /// `open_by_handle_at(2)`: no path; `dirfd` is the mount fd.
    OpenByHandleAt = 6,
    /// `pidfd_getfd(2)`: an fd copied out of another process; `dirfd` is
    /// the pidfd.
    PidfdGetfd = 7,
}

impl TryFrom<u32> for OpenSyscall {
    type Error = UnknownValue;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(OpenSyscall::Open),
            2 => Ok(OpenSyscall::Openat),
            3 => Ok(OpenSyscall::Openat2),
            4 => Ok(OpenSyscall::IoUringOpenat),
            5 => Ok(OpenSyscall::IoUringOpenat2),
            6 => Ok(OpenSyscall::OpenByHandleAt),
            7 => Ok(OpenSyscall::PidfdGetfd),
            other => Err(UnknownValue(other)),
        }
    }
}

/// Which hook saw a connect: the syscall tracepoints see `connect(2)` and
/// its result; the cgroup `connect4`/`connect6` hook sees every other way a
/// socket starts connecting (io_uring's `IORING_OP_CONNECT`, TCP Fast Open's
/// `sendto`/`sendmsg(MSG_FASTOPEN)`), before the result is known.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectVia {
    /// `sys_enter_connect`/`sys_exit_connect`: `result` is the syscall's.
    Syscall = 1,
    /// The cgroup `connect4`/`connect6` program: `fd` is -1 and `result` 0
    /// (not known when the hook runs).
    CgroupSockAddr = 2,
}

impl TryFrom<u32> for ConnectVia {
    type Error = UnknownValue;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(ConnectVia::Syscall),
            2 => Ok(ConnectVia::CgroupSockAddr),
            other => Err(UnknownValue(other)),
        }
    }
}

/// Names of the cgroup directories the task sat in, read in the kernel so a
/// process that exits at once is still placed in its container. A container
/// runtime names the leaf after the container id and its parent after the pod.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CgroupNames {
    /// Leaf directory on the unified (v2) hierarchy.
    pub v2_leaf: [u8; CGROUP_NAME_LEN],
    /// Its parent directory on the unified hierarchy.
    pub v2_parent: [u8; CGROUP_NAME_LEN],
    /// Leaf directory on a v1 controller's hierarchy (the memory controller
    /// where it exists).
    pub v1_leaf: [u8; CGROUP_NAME_LEN],
    /// Its parent directory on that v1 hierarchy.
    pub v1_parent: [u8; CGROUP_NAME_LEN],
}

/// One process of the ancestry, as the kernel knew it at the event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaskRef {
    /// Process id on the host.
    pub tgid: u32,
    /// Process id inside its own pid namespace (1 for a container's init).
    pub ns_pid: u32,
    /// Depth of its pid namespace: 0 is the host's.
    pub ns_level: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Its `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// Who did it; common to every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    /// An [`EventKind`] discriminant.
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `bpf_ktime_get_boot_ns()` when the syscall returned.
    pub boot_time_ns: u64,
    /// Process id (thread group id).
    pub tgid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid of the task.
    pub uid: u32,
    /// Real gid of the task.
    pub gid: u32,
    /// Id of the task's cgroup on the unified hierarchy (its inode).
    pub cgroup_id: u64,
    /// The process's start (`group_leader->start_boottime`). With `tgid` and
    /// `exec_id` it names one program run of one process, so userspace can
    /// cache what /proc says about it without mistaking a reused pid.
    pub process_start_ns: u64,
    /// The task's `comm`, NUL-padded.
    pub comm: [u8; COMM_LEN],
    /// The process id inside its own pid namespace.
    pub ns_pid: u32,
    /// Depth of its pid namespace (0 = the host's). A parent at a lower
    /// level than the process means it was put into the namespace from
    /// outside: `kubectl exec`, `nsenter`.
    pub ns_level: u32,
    /// How many entries of `ancestors` are filled.
    pub ancestor_count: u32,
    /// The task's `self_exec_id` (low 32 bits): bumped by every execve, so
    /// a process that exec'd another program is told apart from itself.
    pub exec_id: u32,
    /// The executable the process runs (`mm->exe_file`), read with the
    /// event: a process that exits at once is still named by it. Its
    /// superblock's `s_dev` (0 for a task without one).
    pub exe_dev: u32,
    /// Explicit padding.
    pub _exe_pad: u32,
    /// Its inode number.
    pub exe_ino: u64,
    /// Its file name, NUL-padded.
    pub exe_name: [u8; EXE_NAME_LEN],
    /// Parent first.
    pub ancestors: [TaskRef; MAX_ANCESTORS],
    /// The cgroup directories that identify its container.
    pub cgroups: CgroupNames,
}

/// The opened file's path, rebuilt in the kernel from its dentries across
/// mounts up to the task's root. Components are stored leaf first; an empty
/// slot marks a mount crossing.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ResolvedPath {
    /// How many entries of `components` are filled.
    pub depth: u32,
    /// Non-zero when the walk stopped before reaching the root.
    pub truncated: u32,
    /// NUL-padded dentry names, leaf first; empty at mount crossings.
    pub components: [[u8; PATH_COMPONENT_LEN]; MAX_PATH_COMPONENTS],
}

/// A watched token file was opened successfully.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OpenEvent {
    /// Who opened it; `kind` is [`EventKind::Open`].
    pub header: EventHeader,
    /// An [`OpenSyscall`] discriminant.
    pub syscall: u32,
    /// The `dirfd` argument (`AT_FDCWD` is -100); -100 for `open(2)`.
    pub dirfd: i32,
    /// The open flags (`O_*`).
    pub flags: u64,
    /// The syscall's return value: the new fd.
    pub result: i64,
    /// Kernel-encoded device of the opened file.
    pub dev: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// Inode of the opened file.
    pub ino: u64,
    /// The path string the process passed, NUL-terminated, maybe truncated.
    pub requested_path: [u8; REQUESTED_PATH_LEN],
    /// The path of the file actually opened.
    pub path: ResolvedPath,
    /// What the kernel did about it (a token read a block entry forbids).
    pub enforcement: Enforcement,
}

/// A watched API-server endpoint was dialled.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ConnectEvent {
    /// Who dialled; `kind` is [`EventKind::Connect`].
    pub header: EventHeader,
    /// `AF_INET` or `AF_INET6`, as the process passed it.
    pub family: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// The socket's fd.
    pub fd: i32,
    /// The syscall's return value: 0, `-EINPROGRESS` or another `-errno`.
    pub result: i64,
    /// Destination address, network byte order; IPv4 in the first four bytes.
    pub addr: [u8; 16],
    /// A [`ConnectVia`] discriminant: which hook saw it.
    pub via: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// What the kernel did about it (a connect a block entry forbids).
    pub enforcement: Enforcement,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY for all: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::OpenEvent {}
    unsafe impl aya::Pod for super::ConnectEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<CgroupNames>(), 4 * CGROUP_NAME_LEN);
        assert_eq!(size_of::<TaskRef>(), 16 + COMM_LEN);
        assert_eq!(
            size_of::<EventHeader>(),
            4 + 4
                + 8
                + 4 * 4
                + 8
                + 8
                + COMM_LEN
                + 16
                + 4
                + 4
                + 8
                + EXE_NAME_LEN
                + MAX_ANCESTORS * size_of::<TaskRef>()
                + size_of::<CgroupNames>()
        );
        assert_eq!(size_of::<ResolvedPath>(), 8 + MAX_PATH_COMPONENTS * PATH_COMPONENT_LEN);
        assert_eq!(
            size_of::<OpenEvent>(),
            size_of::<EventHeader>() + 4 + 4 + 8 + 8 + 4 + 4 + 8 + REQUESTED_PATH_LEN + size_of::<ResolvedPath>() + 8
        );
        assert_eq!(size_of::<ConnectEvent>(), size_of::<EventHeader>() + 2 + 2 + 4 + 8 + 16 + 4 + 4 + 8);
    }

    #[test]
    fn kinds_decode_checked() {
        assert_eq!(EventKind::try_from(1), Ok(EventKind::Open));
        assert_eq!(EventKind::try_from(2), Ok(EventKind::Connect));
        assert_eq!(EventKind::try_from(0), Err(UnknownValue(0)));
        assert_eq!(OpenSyscall::try_from(3), Ok(OpenSyscall::Openat2));
        assert_eq!(OpenSyscall::try_from(9), Err(UnknownValue(9)));
        assert_eq!(OpenSyscall::try_from(5), Ok(OpenSyscall::IoUringOpenat2));
        assert_eq!(ConnectVia::try_from(2), Ok(ConnectVia::CgroupSockAddr));
        assert_eq!(ConnectVia::try_from(0), Err(UnknownValue(0)));
    }
}
