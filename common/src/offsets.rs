//! Byte offsets of the kernel struct fields the programs walk.
//!
//! Rust eBPF gets no CO-RE relocations, and field offsets change from one
//! kernel build to the next, so the agent reads them from the running kernel's
//! BTF at start-up and writes them into the programs' read-only global before
//! loading. The verifier then sees them as constants.

/// Offsets of every field the programs dereference, in bytes from the start of
/// the named struct. `ready` is zero until the agent has filled them in; the
/// programs send nothing while it is zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// Non-zero once resolved.
    pub ready: u32,
    /// `task_struct.files`.
    pub task_files: u32,
    /// `task_struct.fs`.
    pub task_fs: u32,
    /// `task_struct.cgroups`.
    pub task_cgroups: u32,
    /// `files_struct.fdt`.
    pub files_fdt: u32,
    /// `fdtable.max_fds`.
    pub fdtable_max_fds: u32,
    /// `fdtable.fd`.
    pub fdtable_fd: u32,
    /// `file.f_path`.
    pub file_f_path: u32,
    /// `file.f_inode`.
    pub file_f_inode: u32,
    /// `path.mnt`.
    pub path_mnt: u32,
    /// `path.dentry`.
    pub path_dentry: u32,
    /// `inode.i_sb`.
    pub inode_i_sb: u32,
    /// `inode.i_ino`.
    pub inode_i_ino: u32,
    /// `super_block.s_dev`.
    pub sb_s_dev: u32,
    /// `dentry.d_parent`.
    pub dentry_d_parent: u32,
    /// `dentry.d_name`.
    pub dentry_d_name: u32,
    /// `qstr.name`.
    pub qstr_name: u32,
    /// `mount.mnt` (the embedded `vfsmount`).
    pub mount_mnt: u32,
    /// `mount.mnt_parent`.
    pub mount_mnt_parent: u32,
    /// `mount.mnt_mountpoint`.
    pub mount_mnt_mountpoint: u32,
    /// `vfsmount.mnt_root`.
    pub vfsmount_mnt_root: u32,
    /// `fs_struct.root`.
    pub fs_root: u32,
    /// `css_set.dfl_cgrp`.
    pub css_set_dfl_cgrp: u32,
    /// `css_set.subsys`.
    pub css_set_subsys: u32,
    /// `cgroup_subsys_state.cgroup`.
    pub css_cgroup: u32,
    /// `cgroup.kn`.
    pub cgroup_kn: u32,
    /// `kernfs_node.name`.
    pub kernfs_node_name: u32,
    /// `kernfs_node.parent` (`__parent` on newer kernels).
    pub kernfs_node_parent: u32,
    /// Index into `css_set.subsys` of the v1 controller whose cgroup names
    /// are reported (`memory_cgrp_id`, else the first controller).
    pub v1_subsys_index: u32,
    /// `task_struct.real_parent`.
    pub task_real_parent: u32,
    /// `task_struct.tgid`.
    pub task_tgid: u32,
    /// `task_struct.comm`.
    pub task_comm: u32,
    /// `task_struct.thread_pid`.
    pub task_thread_pid: u32,
    /// `task_struct.group_leader`: the process's main thread, whose pid is
    /// the process's (a parent pointer may name any thread of it).
    pub task_group_leader: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// `pid.level`: depth of the task's pid namespace (0 = the host's).
    pub pid_level: u32,
    /// `pid.numbers`: one `upid` per namespace level.
    pub pid_numbers: u32,
    /// `upid.nr`.
    pub upid_nr: u32,
    /// `sizeof(struct upid)`.
    pub upid_size: u32,
    /// Non-zero when every io_uring offset below resolved. Without them
    /// io_uring opens are still matched and reported, but without the path
    /// string, dirfd and flags the process passed, and direct-descriptor
    /// opens are not resolved.
    pub io_uring_ready: u32,
    /// `io_kiocb.cmd`: where the opcode's own data (`struct io_open`) lives.
    pub io_kiocb_cmd: u32,
    /// `io_open.dfd`.
    pub io_open_dfd: u32,
    /// `io_open.file_slot`: non-zero for a direct (fixed-file) descriptor.
    pub io_open_file_slot: u32,
    /// `io_open.filename` (a `struct filename *`).
    pub io_open_filename: u32,
    /// `io_open.how` (a `struct open_how`).
    pub io_open_how: u32,
    /// `filename.uptr`: the process's own path pointer.
    pub filename_uptr: u32,
    /// `open_how.flags`.
    pub open_how_flags: u32,
    /// `io_ring_ctx.file_table`.
    pub io_ring_ctx_file_table: u32,
    /// Offset in `io_file_table` of its array of fixed files:
    /// `data.nodes` (6.13+) or `files` (older).
    pub io_file_table_array: u32,
    /// 1 when the array holds pointers to `io_rsrc_node` (6.13+), 0 when it
    /// holds `io_fixed_file`s (a bare `file_ptr` each, older kernels).
    pub io_file_table_indirect: u32,
    /// `io_rsrc_node.file_ptr` (6.13+).
    pub io_rsrc_node_file_ptr: u32,
    /// `io_kiocb.flags` (its low 32 bits hold `REQ_F_CQE_SKIP`).
    pub io_kiocb_flags: u32,
    /// `files_struct.next_fd`: one above the fd the last allocation gave.
    pub files_next_fd: u32,
    /// `task_struct.start_boottime` (`real_start_time` before 5.5).
    pub task_start_boottime: u32,
    /// `task_struct.self_exec_id`.
    pub task_self_exec_id: u32,
    /// `task_struct.mm`: the executable a block entry's `binaries` judge.
    pub task_mm: u32,
    /// `mm_struct.exe_file`.
    pub mm_exe_file: u32,
    /// `task_struct.stack`: the kernel stack, whose top holds the saved
    /// user registers (`pt_regs`). Read only where `bpf_task_pt_regs` is
    /// missing (before 5.15).
    pub task_stack: u32,
    /// 1 when the kernel has the `bpf_task_pt_regs` and
    /// `bpf_get_current_task_btf` helpers (5.15+; its `enum bpf_func_id`
    /// says so). A read-only constant to the verifier: the branch not taken
    /// is never verified, so a helper this kernel lacks is never refused.
    pub has_task_pt_regs: u32,
    /// `kernfs_node.id`: a unified cgroup's id is its kernfs node's (5.5+),
    /// so the enforcement lookup walks a task's cgroup ancestors by their
    /// nodes where `bpf_get_current_ancestor_cgroup_id` is not given to
    /// tracepoints (5.10).
    pub kernfs_node_id: u32,
    /// `super_block.s_magic`: a token volume is a tmpfs.
    pub sb_s_magic: u32,
    /// `super_block.s_root`: a token lies one directory below its volume's
    /// root (`..<timestamp>/token`).
    pub sb_s_root: u32,
    /// Explicit padding.
    pub _pad2: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), u32 fields only.
unsafe impl aya::Pod for KernelOffsets {}
