//! Reads of kernel memory at offsets the agent resolved from BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes};

/// Reads a pointer-sized field at `base + offset`.
#[inline(always)]
pub fn read_ptr(base: u64, offset: u32) -> Result<u64, i32> {
    if base == 0 {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an Err.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u64) }
}

/// Reads a u32 field at `base + offset`.
#[inline(always)]
pub fn read_u32(base: u64, offset: u32) -> Result<u32, i32> {
    if base == 0 {
        return Err(-1);
    }
    // SAFETY: as above.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const u32) }
}

/// Copies the NUL-terminated kernel string at `ptr` into `dest`; on failure
/// `dest` starts with NUL.
#[inline(always)]
pub fn read_str(ptr: u64, dest: &mut [u8]) {
    // SAFETY: the helper checks the address and bounds the copy by dest.
    let ok = ptr != 0 && unsafe { bpf_probe_read_kernel_str_bytes(ptr as *const u8, dest) }.is_ok();
    if !ok {
        if let Some(first) = dest.first_mut() {
            *first = 0;
        }
    }
}
