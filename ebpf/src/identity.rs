//! The event header: who did it, and which cgroups (so which container) it
//! ran in, read in the kernel so a process that exits at once is still placed.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use aya_ebpf::helpers::{
    bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns,
};
use tokenwatch_common::{EventHeader, EventKind, TaskRef};

use crate::{
    kernel::{read_ptr, read_str, read_u32},
    maps::kernel_offset,
};

/// Fills `header` for the current task.
#[inline(always)]
pub fn fill_header(header: &mut EventHeader, kind: EventKind, task: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    header.kind = kind as u32;
    header._pad = 0;
    // SAFETY: helpers without preconditions in tracepoint context.
    header.boot_time_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.tgid = (pid_tgid >> 32) as u32;
    header.tid = pid_tgid as u32;
    header.uid = uid_gid as u32;
    header.gid = (uid_gid >> 32) as u32;
    // SAFETY: as above.
    header.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    header.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    let leader = read_ptr(task, kernel_offset!(task_group_leader)).unwrap_or(task);
    let (ns_pid, ns_level) = leader_pid_in_namespace(leader);
    header.ns_pid = ns_pid;
    header.ns_level = ns_level;
    header.process_start_ns = read_ptr(leader, kernel_offset!(task_start_boottime)).unwrap_or(0);
    header.exec_id = read_u32(task, kernel_offset!(task_self_exec_id)).unwrap_or(0);
    let file = exe_file(task);
    let (exe_dev, exe_ino) = file_key(file);
    header.exe_dev = exe_dev;
    header._exe_pad = 0;
    header.exe_ino = exe_ino;
    let dentry = read_ptr(file, kernel_offset!(file_f_path) + kernel_offset!(path_dentry)).unwrap_or(0);
    read_str(
        read_ptr(dentry, kernel_offset!(dentry_d_name) + kernel_offset!(qstr_name)).unwrap_or(0),
        &mut header.exe_name,
    );
    header.ancestor_count = ancestors(task, &mut header.ancestors);

    let css_set = read_ptr(task, kernel_offset!(task_cgroups)).unwrap_or(0);
    let v2 = read_ptr(css_set, kernel_offset!(css_set_dfl_cgrp)).unwrap_or(0);
    let v2_kn = read_ptr(v2, kernel_offset!(cgroup_kn)).unwrap_or(0);
    kernfs_names(v2_kn, &mut header.cgroups.v2_leaf, &mut header.cgroups.v2_parent);

    let subsys = kernel_offset!(css_set_subsys) + kernel_offset!(v1_subsys_index) * 8;
    let css = read_ptr(css_set, subsys).unwrap_or(0);
    let v1 = read_ptr(css, kernel_offset!(css_cgroup)).unwrap_or(0);
    let v1_kn = read_ptr(v1, kernel_offset!(cgroup_kn)).unwrap_or(0);
    kernfs_names(v1_kn, &mut header.cgroups.v1_leaf, &mut header.cgroups.v1_parent);
}

/// The file the process runs (`task->mm->exe_file`), 0 for a task without
/// one (a kernel thread, an exiting task).
#[inline(always)]
pub fn exe_file(task: u64) -> u64 {
    // read_ptr refuses a null base, so a missing link ends the chain.
    let mm = read_ptr(task, kernel_offset!(task_mm)).unwrap_or(0);
    read_ptr(mm, kernel_offset!(mm_exe_file)).unwrap_or(0)
}

/// `(s_dev, i_ino)` of `file`, or `(0, 0)`.
#[inline(always)]
pub fn file_key(file: u64) -> (u32, u64) {
    let Ok(inode) = read_ptr(file, kernel_offset!(file_f_inode)) else { return (0, 0) };
    let sb = read_ptr(inode, kernel_offset!(inode_i_sb)).unwrap_or(0);
    (read_u32(sb, kernel_offset!(sb_s_dev)).unwrap_or(0), read_ptr(inode, kernel_offset!(inode_i_ino)).unwrap_or(0))
}

/// The process's pid in its own pid namespace, and that namespace's depth:
/// `group_leader->thread_pid->numbers[level].nr` (the leader's, so a
/// multi-threaded process is named by its pid, not by one thread's).
#[inline(always)]
pub fn pid_in_namespace(task: u64) -> (u32, u32) {
    leader_pid_in_namespace(read_ptr(task, kernel_offset!(task_group_leader)).unwrap_or(task))
}

/// [`pid_in_namespace`] from the group leader already read, so a caller
/// that needs the leader for more reads it once.
#[inline(always)]
fn leader_pid_in_namespace(leader: u64) -> (u32, u32) {
    let pid = read_ptr(leader, kernel_offset!(task_thread_pid)).unwrap_or(0);
    let level = read_u32(pid, kernel_offset!(pid_level)).unwrap_or(0);
    let at = kernel_offset!(pid_numbers) + level.wrapping_mul(kernel_offset!(upid_size)) + kernel_offset!(upid_nr);
    (read_u32(pid, at).unwrap_or(0), level)
}

/// Fills `out` with the parent chain (parent first) and returns how many
/// entries were filled; stops at the host's init.
#[inline(always)]
fn ancestors(task: u64, out: &mut [TaskRef]) -> u32 {
    let mut count = 0;
    let mut current = task;
    for slot in out.iter_mut() {
        let parent = read_ptr(current, kernel_offset!(task_real_parent)).unwrap_or(0);
        if parent == 0 || parent == current {
            break;
        }
        // The parent pointer names the thread that forked; its comm can be a
        // thread's name, so read the process's (the group leader's).
        let leader = read_ptr(parent, kernel_offset!(task_group_leader)).unwrap_or(parent);
        let (ns_pid, ns_level) = leader_pid_in_namespace(leader);
        slot.tgid = read_u32(parent, kernel_offset!(task_tgid)).unwrap_or(0);
        slot.ns_pid = ns_pid;
        slot.ns_level = ns_level;
        slot._pad = 0;
        // SAFETY: kernel pointer read through the checked helper.
        slot.comm =
            unsafe { bpf_probe_read_kernel((leader + u64::from(kernel_offset!(task_comm))) as *const [u8; 16]) }
                .unwrap_or([0; 16]);
        count += 1;
        if slot.tgid <= 1 {
            break;
        }
        current = parent;
    }
    count
}

/// Names of a kernfs node and of its parent.
#[inline(always)]
fn kernfs_names(kn: u64, leaf: &mut [u8], parent: &mut [u8]) {
    read_str(read_ptr(kn, kernel_offset!(kernfs_node_name)).unwrap_or(0), leaf);
    let parent_kn = read_ptr(kn, kernel_offset!(kernfs_node_parent)).unwrap_or(0);
    read_str(read_ptr(parent_kn, kernel_offset!(kernfs_node_name)).unwrap_or(0), parent);
}
