//! `open`, `openat` and `openat2`: judge the file actually opened, not the
//! string passed, by resolving the returned fd to its (device, inode).

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use tokenwatch_common::{
    is_disk, Counter, EventKind, FileKey, Hook, OpenEvent, OpenSyscall, ResolvedPath, DEV_EXACT_FILES,
    DEV_TOKEN_VOLUME, TMPFS_MAGIC, TOKEN_NAME_LEN,
};

use crate::{
    identity::fill_header,
    kernel::{read_ptr, read_str, read_u32},
    maps::{
        count, is_agent, kernel_offset, wakeup_flags, PendingOpen, DISK_WATCHES, EVENTS, OPEN_SCRATCH, TOKEN_NAMES,
        WATCHED_DEVS, WATCHED_FILES,
    },
    syscall_args::{syscall_return, SyscallArgs, AT_FDCWD},
};

#[tracepoint]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::Open, OpenSyscall::Open);
    0
}

#[tracepoint]
pub fn sys_exit_openat(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::Openat, OpenSyscall::Openat);
    0
}

#[tracepoint]
pub fn sys_exit_openat2(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::Openat2, OpenSyscall::Openat2);
    0
}

/// On exit: resolve the returned fd to its file, look the file up, and on a
/// hit recover the arguments and send an event. No entry program: an open
/// of an unwatched file costs this one program, a few reads and one hash
/// lookup, and no map write (see BENCHMARKS.md for what the entry record
/// used to cost).
#[inline(always)]
pub fn judge(ctx: &TracePointContext, hook: Hook, syscall: OpenSyscall) {
    count(hook, Counter::OpensSeen);
    let ret = syscall_return(ctx);
    if ret < 0 {
        return;
    }
    if kernel_offset!(ready) == 0 {
        return;
    }
    let Some(file) = new_fd_to_file(ret as u64) else { return };
    let Some(key) = watched(file) else { return };
    // The agent's own reads (its ServiceAccount token) are not reported.
    // Asked only of a match: the helper call would cost every open.
    if is_agent((bpf_get_current_pid_tgid() >> 32) as u32) {
        return;
    }
    // SAFETY: returns the current task_struct pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    let pending = SyscallArgs::current()
        .map_or(PendingOpen { filename: 0, how: 0, flags: 0, dirfd: AT_FDCWD, syscall: syscall as u32 }, |args| {
            args.open(syscall)
        });
    send(ctx, hook, &pending, ret, task, file, key);
}

/// Looks `file` up and sends an event on a hit; `ret` is what the open
/// returned (an fd, or a direct descriptor's slot for io_uring).
#[inline(always)]
pub fn report_file<C: EbpfContext>(ctx: &C, hook: Hook, pending: &PendingOpen, ret: i64, task: u64, file: u64) {
    if kernel_offset!(ready) == 0 {
        return;
    }
    let Some(key) = watched(file) else { return };
    send(ctx, hook, pending, ret, task, file, key);
}

/// Sends the event of a watched file's open. The event is built in a
/// per-CPU scratch slot and copied into the ring buffer whole, rather than
/// built in a reserved record: a reservation is a reference the verifier
/// tracks, and up to 6.1 it tells two states apart by that reference's id,
/// so every path that reached the reservation was verified again to the end
/// (6.1 refused this program at a million instructions). The price is
/// one event's copy (about 2.5 KiB) on a matched open only.
#[inline(always)]
pub fn send<C: EbpfContext>(ctx: &C, hook: Hook, pending: &PendingOpen, ret: i64, task: u64, file: u64, key: FileKey) {
    count(hook, Counter::OpensMatched);
    // Refuse first: a kill does not wait for the report, nor depend on it.
    let enforcement = crate::enforce::token_opened(pending.flags, task);
    let Some(event) = OPEN_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot, used by one program at a time (tracepoint
    // programs do not nest on a CPU); every field is written below or is a
    // NUL-terminated buffer whose tail userspace ignores.
    let event = unsafe { &mut *event };
    // What differs from one way of reaching here to another (the arguments,
    // the verdict, the key) goes into the event first and is dead after:
    // the long walks below then start from one state whichever way the
    // program came, and the verifier walks them once (6.1 does not prune
    // states whose stacks differ, and walked them once per way).
    event.enforcement = enforcement;
    event.syscall = pending.syscall;
    event.dirfd = pending.dirfd;
    event.flags = pending.flags;
    if pending.how != 0 {
        // SAFETY: user pointer; a bad one is an Err. open_how.flags is first.
        event.flags = unsafe { bpf_probe_read_user(pending.how as *const u64) }.unwrap_or(0);
    }
    event.result = ret;
    event.dev = key.dev;
    event._pad = 0;
    event.ino = key.ino;
    // SAFETY: user pointer read with a bounded copy.
    if unsafe { bpf_probe_read_user_str_bytes(pending.filename as *const u8, &mut event.requested_path) }.is_err() {
        event.requested_path[0] = 0;
    }
    fill_header(&mut event.header, EventKind::Open, task);
    rebuild_path(task, file, &mut event.path);
    if hook == Hook::IoUring {
        // An io-wq worker (`iou-wrk-<pid>`) may complete it: name the process.
        let leader = read_ptr(task, kernel_offset!(task_group_leader)).unwrap_or(task);
        // SAFETY: kernel pointer read through the checked helper.
        if let Ok(comm) =
            unsafe { bpf_probe_read_kernel((leader + u64::from(kernel_offset!(task_comm))) as *const [u8; 16]) }
        {
            event.header.comm = comm;
        }
    }
    let flags = wakeup_flags(event.header.boot_time_ns);
    if EVENTS.output::<OpenEvent>(event, flags).is_err() {
        count(hook, Counter::EventsDropped);
        debug!(ctx, "ring buffer full: token open by tgid {} dropped", (bpf_get_current_pid_tgid() >> 32) as u32);
        return;
    }
    count(hook, Counter::EventsSent);
}

/// The file's key when it is a watched token file: its device is watched and
/// either its inode is (`WATCHED_FILES`) or, on a token volume, its name; or
/// its device is not watched yet but it lies on a new token volume
/// ([`on_new_token_volume`]).
#[inline(always)]
pub fn watched(file: u64) -> Option<FileKey> {
    let inode = read_ptr(file, kernel_offset!(file_f_inode)).ok()?;
    let sb = read_ptr(inode, kernel_offset!(inode_i_sb)).unwrap_or(0);
    let dev = read_u32(sb, kernel_offset!(sb_s_dev)).unwrap_or(0);
    let key = || FileKey { dev, _pad: 0, ino: read_ptr(inode, kernel_offset!(inode_i_ino)).unwrap_or(0) };
    // A disk's file is watched only while some disk device is (most
    // nodes watch none): the common open ends here, without a lookup.
    if is_disk(dev) && DISK_WATCHES.get(0).copied().unwrap_or(1) == 0 {
        return None;
    }
    // SAFETY: the value is copied out at once.
    let Some(watch) = (unsafe { WATCHED_DEVS.get(dev) }).copied() else {
        // A new token volume is a tmpfs, which the layout check asks first.
        // The device's major number is not tested again: the verifier
        // would then tell apart what it learnt of the device above, and
        // walk the rest of the program once for disks and once for the
        // rest (6.1: some 90,000 instructions more).
        return on_new_token_volume(file, sb).then(key);
    };
    let key = key();
    let by_name = watch.mode & DEV_TOKEN_VOLUME != 0 && has_name(file, &watch.name);
    // SAFETY: value not used beyond presence.
    let by_inode = watch.mode & DEV_EXACT_FILES != 0 && unsafe { WATCHED_FILES.get(key) }.is_some();
    (by_name || by_inode).then_some(key)
}

/// Whether `file` lies as kubelet's atomic writer lays out every token
/// volume (projected or Secret): on a tmpfs, in a directory named
/// `..<timestamp>` right under the volume's root, under one of the
/// `TOKEN_NAMES`. The scanner finds a new volume up to a rescan after it
/// appears, and a container may read its token with its first
/// instruction: this match holds from the moment kubelet wrote the file.
/// A tmpfs open that is no token costs a few reads more; the name is read
/// last.
#[inline(always)]
fn on_new_token_volume(file: u64, sb: u64) -> bool {
    if read_ptr(sb, kernel_offset!(sb_s_magic)).unwrap_or(0) != TMPFS_MAGIC {
        return false;
    }
    let dentry = read_ptr(file, kernel_offset!(file_f_path) + kernel_offset!(path_dentry)).unwrap_or(0);
    let parent = read_ptr(dentry, kernel_offset!(dentry_d_parent)).unwrap_or(0);
    let root = read_ptr(sb, kernel_offset!(sb_s_root)).unwrap_or(0);
    if parent == 0 || parent == root || read_ptr(parent, kernel_offset!(dentry_d_parent)).unwrap_or(0) != root {
        return false;
    }
    let parent_name = read_ptr(parent, kernel_offset!(dentry_d_name) + kernel_offset!(qstr_name)).unwrap_or(0);
    // SAFETY: kernel pointer read through the checked helper.
    let prefix = unsafe { bpf_probe_read_kernel(parent_name as *const [u8; 3]) }.unwrap_or([0; 3]);
    if prefix[0] != b'.' || prefix[1] != b'.' || !prefix[2].is_ascii_digit() {
        return false;
    }
    let mut name = [0u8; TOKEN_NAME_LEN];
    dentry_name(dentry, &mut name);
    // SAFETY: value not used beyond presence.
    unsafe { TOKEN_NAMES.get(name) }.is_some()
}

/// Whether the opened file's name (its dentry's) is `name`.
#[inline(always)]
fn has_name(file: u64, name: &[u8; TOKEN_NAME_LEN]) -> bool {
    let dentry = read_ptr(file, kernel_offset!(file_f_path) + kernel_offset!(path_dentry)).unwrap_or(0);
    let mut actual = [0u8; TOKEN_NAME_LEN];
    dentry_name(dentry, &mut actual);
    actual == *name
}

/// A dentry's name, NUL-padded (empty if unreadable).
#[inline(always)]
fn dentry_name(dentry: u64, out: &mut [u8; TOKEN_NAME_LEN]) {
    read_str(read_ptr(dentry, kernel_offset!(dentry_d_name) + kernel_offset!(qstr_name)).unwrap_or(0), out);
}

/// `task->files->fdt->fd[fd]` for an fd the syscall being exited just
/// returned, so below `max_fds` by construction: one read fewer than
/// [`fd_to_file`] on every open of the node. Tables only grow, and an old
/// one outlives this program (RCU).
#[inline(always)]
fn new_fd_to_file(fd: u64) -> Option<u64> {
    let fds = if kernel_offset!(has_task_pt_regs) != 0 {
        current_fd_array()
    } else {
        // SAFETY: returns the current task_struct pointer, read only via probes.
        fd_array(unsafe { bpf_get_current_task() })
    }?;
    read_ptr(fds + fd * 8, 0).ok().filter(|f| *f != 0)
}

/// `task->files->fdt` by helper reads, for any task.
#[inline(always)]
fn fdtable(task: u64) -> Option<u64> {
    let files = read_ptr(task, kernel_offset!(task_files)).ok()?;
    read_ptr(files, kernel_offset!(files_fdt)).ok()
}

/// `task->files->fdt->fd` by helper reads, for any task.
#[inline(always)]
fn fd_array(task: u64) -> Option<u64> {
    read_ptr(fdtable(task)?, kernel_offset!(fdtable_fd)).ok().filter(|fds| *fds != 0)
}

/// `current->files->fdt->fd` by BTF-typed loads, on kernels that give the
/// current task as a BTF pointer (5.11+; taken, as `syscall_args` does,
/// where `bpf_task_pt_regs` is too, 5.15+): the offsets are read-only
/// constants to the verifier, which checks each load against the kernel's
/// own types and turns it into one guarded load instead of a helper call.
/// Every open of the node takes this path, three helper calls fewer.
/// `fd` itself is an array of pointers, not a struct: its element is read
/// by helper.
#[inline(always)]
fn current_fd_array() -> Option<u64> {
    // SAFETY: each load is of a pointer field at its BTF offset from a
    // pointer the verifier types (the current task, then what its fields
    // point to); a fault reads as 0, which ends the walk.
    unsafe {
        let task = bpf_get_current_task_btf().cast::<u8>();
        let files = *task.add(kernel_offset!(task_files) as usize).cast::<*const u8>();
        if files.is_null() {
            return None;
        }
        let fdt = *files.add(kernel_offset!(files_fdt) as usize).cast::<*const u8>();
        if fdt.is_null() {
            return None;
        }
        let fds = *fdt.add(kernel_offset!(fdtable_fd) as usize).cast::<u64>();
        (fds != 0).then_some(fds)
    }
}

/// `task->files->fdt->fd[fd]`, for any fd.
#[inline(always)]
pub fn fd_to_file(task: u64, fd: u64) -> Option<u64> {
    let fdt = fdtable(task)?;
    let max_fds = read_u32(fdt, kernel_offset!(fdtable_max_fds)).ok()?;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fds = read_ptr(fdt, kernel_offset!(fdtable_fd)).ok()?;
    if fds == 0 {
        return None;
    }
    read_ptr(fds + fd * 8, 0).ok().filter(|f| *f != 0)
}

/// Walks dentries up to the task's root, crossing mounts as `d_path` does,
/// storing names leaf first. Each step fills the slot of its own index (a
/// mount crossing leaves it empty), so the verifier tracks one counter, not
/// one per combination of names and crossings.
#[inline(always)]
fn rebuild_path(task: u64, file: u64, out: &mut ResolvedPath) {
    let fs = read_ptr(task, kernel_offset!(task_fs)).unwrap_or(0);
    let root_mnt = read_ptr(fs, kernel_offset!(fs_root) + kernel_offset!(path_mnt)).unwrap_or(0);
    let root_dentry = read_ptr(fs, kernel_offset!(fs_root) + kernel_offset!(path_dentry)).unwrap_or(0);
    let mut vfsmnt = read_ptr(file, kernel_offset!(file_f_path) + kernel_offset!(path_mnt)).unwrap_or(0);
    let mut dentry = read_ptr(file, kernel_offset!(file_f_path) + kernel_offset!(path_dentry)).unwrap_or(0);
    let mut mount = vfsmnt.wrapping_sub(u64::from(kernel_offset!(mount_mnt)));
    let mut depth: u32 = 0;
    let mut reached_root = false;
    for slot in out.components.iter_mut() {
        if dentry == 0 || vfsmnt == 0 {
            break;
        }
        if dentry == root_dentry && vfsmnt == root_mnt {
            reached_root = true;
            break;
        }
        let mnt_root = read_ptr(vfsmnt, kernel_offset!(vfsmount_mnt_root)).unwrap_or(0);
        let parent = read_ptr(dentry, kernel_offset!(dentry_d_parent)).unwrap_or(0);
        if dentry == mnt_root || dentry == parent {
            let mount_parent = read_ptr(mount, kernel_offset!(mount_mnt_parent)).unwrap_or(0);
            if mount_parent == mount || mount_parent == 0 {
                reached_root = true;
                break;
            }
            dentry = read_ptr(mount, kernel_offset!(mount_mnt_mountpoint)).unwrap_or(0);
            mount = mount_parent;
            vfsmnt = mount + u64::from(kernel_offset!(mount_mnt));
            slot[0] = 0;
        } else {
            let name = read_ptr(dentry, kernel_offset!(dentry_d_name) + kernel_offset!(qstr_name)).unwrap_or(0);
            read_str(name, slot);
            dentry = parent;
        }
        depth += 1;
    }
    out.depth = depth;
    out.truncated = u32::from(!reached_root);
}
