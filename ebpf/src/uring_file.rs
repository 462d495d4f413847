//! An io_uring ring's fixed-file table: the file a direct descriptor
//! names, read by the completion hook and by the judges of completion-less
//! opens alike.

use crate::{kernel::read_ptr, maps::kernel_offset};

/// Low bits of a fixed file's `file_ptr` that carry flags, not address.
const FILE_PTR_FLAGS: u64 = 7;
/// Direct descriptors above this are not looked up (the kernel's own limit
/// is 1 << 20; the bound keeps the verifier's arithmetic simple).
const MAX_FIXED_SLOT: u64 = 1 << 20;

/// The file in slot `slot` of the ring's fixed-file table.
#[inline(always)]
pub fn fixed_file(ring: u64, slot: u64) -> Option<u64> {
    if slot >= MAX_FIXED_SLOT {
        return None;
    }
    let table = ring + u64::from(kernel_offset!(io_ring_ctx_file_table));
    let array = read_ptr(table, kernel_offset!(io_file_table_array)).ok()?;
    let file_ptr = if kernel_offset!(io_file_table_indirect) != 0 {
        let node = read_ptr(array, (slot * 8) as u32).ok()?;
        read_ptr(node, kernel_offset!(io_rsrc_node_file_ptr)).ok()?
    } else {
        read_ptr(array, (slot * 8) as u32).ok()?
    };
    Some(file_ptr & !FILE_PTR_FLAGS).filter(|f| *f != 0)
}
