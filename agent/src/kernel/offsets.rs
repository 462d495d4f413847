//! The kernel struct offsets the eBPF programs need, resolved from BTF.
//!
//! Rust eBPF gets no CO-RE relocations, and a DaemonSet meets many kernels,
//! so the agent looks every field up by name in the running kernel's BTF at
//! start-up and writes the result into the programs' read-only global
//! ([`KernelOffsets`]). Fields that were renamed between kernel versions are
//! tried under each known name.

use tokenwatch_common::offsets::KernelOffsets;

use crate::kernel::btf::{Btf, BtfError};

mod uring;

/// Why the offsets could not be resolved. The agent cannot run its programs
/// without every offset, so the message names the exact field that failed.
#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    /// The kernel's BTF could not be read or parsed.
    #[error("cannot load the kernel's BTF: {0}")]
    Btf(#[from] BtfError),
    /// A field the programs need is not in this kernel's BTF under any known
    /// name.
    #[error("cannot resolve kernel field {structure}.{member}: {source}")]
    Field {
        /// The struct looked in.
        structure: &'static str,
        /// The member looked for, with its alternative names joined by `|`.
        member: String,
        /// What the BTF lookup reported (for the last name tried).
        #[source]
        source: BtfError,
    },
}

/// Byte offset of the first of `members` that `structure` has. Only a
/// missing member moves on to the next name; any other failure (missing
/// struct, unaligned bitfield, corrupt BTF) is reported at once.
fn field(btf: &Btf, structure: &'static str, members: &[&str]) -> Result<u32, OffsetsError> {
    let fail = |source| OffsetsError::Field { structure, member: members.join("|"), source };
    let mut last = None;
    for member in members {
        match btf.member_offset(structure, member) {
            Ok(offset) => return Ok(offset),
            Err(err @ BtfError::MemberNotFound { .. }) => last = Some(err),
            Err(err) => return Err(fail(err)),
        }
    }
    Err(fail(
        last.unwrap_or_else(|| BtfError::MemberNotFound { struct_name: structure.to_owned(), member: String::new() }),
    ))
}

/// Index of the v1 controller whose cgroup names are reported:
/// `memory_cgrp_id`, else `cpu_cgrp_id`, else `pids_cgrp_id`, else 0 (the
/// first controller) when the enum or all of them are missing.
fn v1_subsys_index(btf: &Btf) -> u32 {
    ["memory_cgrp_id", "cpu_cgrp_id", "pids_cgrp_id"]
        .iter()
        .find_map(|name| btf.enum_value("cgroup_subsys_id", name).ok().and_then(|value| u32::try_from(value).ok()))
        .unwrap_or(0)
}

/// Resolve every field of tokenwatch_common::KernelOffsets from a kernel's
/// BTF, so the programs walk the right offsets on whatever kernel the agent
/// lands on.
pub fn resolve(btf: &Btf) -> Result<KernelOffsets, OffsetsError> {
    let mut offsets = KernelOffsets {
        ready: 1,
        task_files: field(btf, "task_struct", &["files"])?,
        task_fs: field(btf, "task_struct", &["fs"])?,
        task_cgroups: field(btf, "task_struct", &["cgroups"])?,
        files_fdt: field(btf, "files_struct", &["fdt"])?,
        fdtable_max_fds: field(btf, "fdtable", &["max_fds"])?,
        fdtable_fd: field(btf, "fdtable", &["fd"])?,
        file_f_path: field(btf, "file", &["f_path"])?,
        file_f_inode: field(btf, "file", &["f_inode"])?,
        path_mnt: field(btf, "path", &["mnt"])?,
        path_dentry: field(btf, "path", &["dentry"])?,
        inode_i_sb: field(btf, "inode", &["i_sb"])?,
        inode_i_ino: field(btf, "inode", &["i_ino"])?,
        sb_s_dev: field(btf, "super_block", &["s_dev"])?,
        sb_s_magic: field(btf, "super_block", &["s_magic"])?,
        sb_s_root: field(btf, "super_block", &["s_root"])?,
        dentry_d_parent: field(btf, "dentry", &["d_parent"])?,
        // 6.14+ wraps it as `union { const struct qstr d_name; struct qstr __d_name; }`.
        dentry_d_name: field(btf, "dentry", &["d_name", "__d_name"])?,
        qstr_name: field(btf, "qstr", &["name"])?,
        mount_mnt: field(btf, "mount", &["mnt"])?,
        mount_mnt_parent: field(btf, "mount", &["mnt_parent"])?,
        mount_mnt_mountpoint: field(btf, "mount", &["mnt_mountpoint"])?,
        vfsmount_mnt_root: field(btf, "vfsmount", &["mnt_root"])?,
        fs_root: field(btf, "fs_struct", &["root"])?,
        css_set_dfl_cgrp: field(btf, "css_set", &["dfl_cgrp"])?,
        css_set_subsys: field(btf, "css_set", &["subsys"])?,
        css_cgroup: field(btf, "cgroup_subsys_state", &["cgroup"])?,
        cgroup_kn: field(btf, "cgroup", &["kn"])?,
        kernfs_node_name: field(btf, "kernfs_node", &["name"])?,
        // Renamed to `__parent` (RCU-protected) in 6.15.
        kernfs_node_parent: field(btf, "kernfs_node", &["parent", "__parent"])?,
        v1_subsys_index: v1_subsys_index(btf),
        task_real_parent: field(btf, "task_struct", &["real_parent"])?,
        task_tgid: field(btf, "task_struct", &["tgid"])?,
        task_comm: field(btf, "task_struct", &["comm"])?,
        task_thread_pid: field(btf, "task_struct", &["thread_pid"])?,
        task_group_leader: field(btf, "task_struct", &["group_leader"])?,
        task_start_boottime: field(btf, "task_struct", &["start_boottime", "real_start_time"])?,
        task_self_exec_id: field(btf, "task_struct", &["self_exec_id"])?,
        task_mm: field(btf, "task_struct", &["mm"])?,
        mm_exe_file: field(btf, "mm_struct", &["exe_file"])?,
        task_stack: field(btf, "task_struct", &["stack"])?,
        kernfs_node_id: field(btf, "kernfs_node", &["id"])?,
        has_task_pt_regs: u32::from(btf.enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs").is_ok()),
        _pad: 0,
        pid_level: field(btf, "pid", &["level"])?,
        pid_numbers: field(btf, "pid", &["numbers"])?,
        upid_nr: field(btf, "upid", &["nr"])?,
        upid_size: btf.struct_size("upid").map_err(|source| OffsetsError::Field {
            structure: "upid",
            member: "(size)".to_owned(),
            source,
        })?,
        ..KernelOffsets::default()
    };
    if let Err(missing) = uring::fill(btf, &mut offsets) {
        tracing::warn!(%missing, "io_uring offsets unresolved: io_uring opens are judged without their arguments and direct descriptors are not resolved");
    }
    Ok(offsets)
}

/// Resolve the offsets for the kernel this process runs on, from
/// /sys/kernel/btf/vmlinux.
pub fn resolve_running_kernel() -> Result<KernelOffsets, OffsetsError> {
    resolve(&Btf::from_running_kernel()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets that live in the same struct must differ from each other.
    fn assert_distinct(what: &str, offsets: &[u32]) {
        for (i, a) in offsets.iter().enumerate() {
            assert!(!offsets[i + 1..].contains(a), "{what}: offset {a} appears twice in {offsets:?}");
        }
    }

    /// Checks that hold on every kernel: layouts fixed by definition, and
    /// fields of one struct at different places.
    fn assert_plausible(o: &KernelOffsets) {
        assert_eq!(o.ready, 1, "ready must be set");
        assert_eq!((o.upid_nr, o.upid_size), (0, 16), "struct upid is {{int nr; struct pid_namespace *ns}}");
        assert_eq!((o.path_mnt, o.path_dentry), (0, 8), "struct path is {{mnt, dentry}}");
        assert_eq!(o.qstr_name, 8, "qstr.name follows the 8-byte hash_len");
        assert!(o.task_files > 0 && o.task_fs > 0 && o.task_cgroups > 0, "{o:?}");
        assert_distinct(
            "task_struct",
            &[
                o.task_files,
                o.task_fs,
                o.task_cgroups,
                o.task_real_parent,
                o.task_tgid,
                o.task_comm,
                o.task_thread_pid,
                o.task_group_leader,
                o.task_mm,
            ],
        );
        assert!(o.mm_exe_file > 0, "mm_struct.exe_file is not its first field: {o:?}");
        assert_distinct("pid", &[o.pid_level, o.pid_numbers]);
        assert_distinct("fdtable", &[o.fdtable_max_fds, o.fdtable_fd]);
        assert_distinct("file", &[o.file_f_path, o.file_f_inode]);
        assert_distinct("inode", &[o.inode_i_sb, o.inode_i_ino]);
        assert_distinct("dentry", &[o.dentry_d_parent, o.dentry_d_name]);
        assert_distinct("mount", &[o.mount_mnt, o.mount_mnt_parent, o.mount_mnt_mountpoint]);
        assert_distinct("css_set", &[o.css_set_dfl_cgrp, o.css_set_subsys]);
        assert_distinct("kernfs_node", &[o.kernfs_node_name, o.kernfs_node_parent]);
        assert!(o.v1_subsys_index < 64, "cgroup subsystem id {}", o.v1_subsys_index);
        assert_eq!(o.io_uring_ready, 1, "io_uring offsets resolve: {o:?}");
        assert_eq!(o.io_kiocb_cmd, 0, "io_kiocb starts with the union holding cmd");
        assert_eq!((o.io_open_dfd, o.io_open_file_slot, o.io_open_filename), (8, 12, 16), "struct io_open");
        assert_eq!((o.filename_uptr, o.open_how_flags), (8, 0), "filename.uptr, open_how.flags");
        assert!(o.io_ring_ctx_file_table > 0 && o.io_kiocb_flags > 0 && o.files_next_fd > 0, "{o:?}");
    }

    #[test]
    fn resolves_on_running_kernel() {
        let offsets = resolve_running_kernel()
            .expect("offsets resolve from /sys/kernel/btf/vmlinux (the build machines have it)");
        assert_plausible(&offsets);
    }

    #[test]
    #[ignore = "needs the second kernel's BTF: cargo xtask test fetches it"]
    fn resolves_on_second_kernel() {
        let path =
            std::env::var_os("TOKENWATCH_SECOND_KERNEL_BTF").map(std::path::PathBuf::from).unwrap_or_else(|| {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures/btf/vmlinux-6.1.btf")
            });
        let bytes = std::fs::read(&path).unwrap_or_else(|err| {
            panic!(
                "cannot read the 6.1 kernel's BTF at {}: {err}; run `cargo xtask fixtures` to build it",
                path.display()
            )
        });
        let btf = Btf::parse(&bytes).expect("the 6.1 fixture is valid BTF");
        let old = resolve(&btf).expect("every offset resolves on 6.1");
        assert_plausible(&old);

        let running = resolve_running_kernel().expect("offsets resolve on the running kernel");
        let layout = |o: &KernelOffsets| {
            [o.task_files, o.task_fs, o.task_cgroups, o.file_f_path, o.file_f_inode, o.dentry_d_parent, o.dentry_d_name]
        };
        assert_eq!(
            (old.io_file_table_indirect, running.io_file_table_indirect),
            (0, 1),
            "6.1's fixed files are io_fixed_file, 6.18's io_rsrc_node pointers"
        );
        assert_ne!(
            layout(&old),
            layout(&running),
            "6.1's task_struct/file/dentry should differ from the running kernel's"
        );
    }
}
