//! The io_uring offsets: optional, because io_uring's internal structs
//! change shape between kernels (the fixed-file table became an array of
//! `io_rsrc_node` pointers in 6.13) and a kernel may be built without
//! io_uring at all. When any is missing, `io_uring_ready` stays 0 and the
//! programs still judge io_uring opens by the returned fd, only without the
//! arguments and without direct descriptors.

use tokenwatch_common::offsets::KernelOffsets;

use crate::kernel::btf::Btf;

/// Fills the io_uring fields of `offsets` from `btf`; returns whether all
/// resolved (the reason is logged by the caller when they did not).
pub fn fill(btf: &Btf, offsets: &mut KernelOffsets) -> Result<(), String> {
    let field = |structure: &str, member: &str| {
        btf.member_offset(structure, member).map_err(|err| format!("{structure}.{member}: {err}"))
    };
    let (array, indirect, file_ptr) = match field("io_file_table", "data") {
        // 6.13+: `struct io_rsrc_data data { nr; struct io_rsrc_node **nodes; }`.
        Ok(data) => (data + field("io_rsrc_data", "nodes")?, 1, field("io_rsrc_node", "file_ptr")?),
        // Older: `struct io_fixed_file *files`, each a bare `file_ptr`.
        Err(_) => (field("io_file_table", "files")?, 0, 0),
    };
    *offsets = KernelOffsets {
        io_uring_ready: 1,
        io_kiocb_cmd: field("io_kiocb", "cmd")?,
        io_open_dfd: field("io_open", "dfd")?,
        io_open_file_slot: field("io_open", "file_slot")?,
        io_open_filename: field("io_open", "filename")?,
        io_open_how: field("io_open", "how")?,
        filename_uptr: field("filename", "uptr")?,
        open_how_flags: field("open_how", "flags")?,
        io_ring_ctx_file_table: field("io_ring_ctx", "file_table")?,
        io_file_table_array: array,
        io_file_table_indirect: indirect,
        io_rsrc_node_file_ptr: file_ptr,
        io_kiocb_flags: field("io_kiocb", "flags")?,
        files_next_fd: field("files_struct", "next_fd")?,
        ..*offsets
    };
    Ok(())
}
