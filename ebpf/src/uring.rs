//! io_uring opens: `IORING_OP_OPENAT` and `IORING_OP_OPENAT2` open files
//! without any `open*` syscall, so the syscall tracepoints never see them.
//!
//! * `io_uring:io_uring_submit_req` fires for every request after its prep,
//!   with the opcode in the record: only opens are remembered, by request
//!   pointer, with what the process passed (read from `struct io_open` at
//!   offsets from BTF, when the kernel has them).
//! * `io_uring:io_uring_complete` fires when the request posts its result:
//!   a remembered open's new fd is resolved in the current task's file
//!   table (the completing task is the submitter, or an io-wq worker or the
//!   SQPOLL thread of its process, which share that table) and judged by
//!   [`crate::open::report_file`]. A direct descriptor (`file_index` set) is
//!   resolved in the ring's fixed-file table instead.
//!
//! A request submitted with `IOSQE_CQE_SKIP_SUCCESS` posts no completion
//! when it succeeds: [`crate::uring_skip`] judges it at the process's next
//! io_uring event instead.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use tokenwatch_common::{Counter, Hook, OpenSyscall};

use crate::{
    kernel::{read_ptr, read_u32},
    maps::{count, is_agent, kernel_offset, PendingOpen, PendingUringOpen, PENDING_URING_OPENS},
    open::{fd_to_file, report_file},
    syscall_args::AT_FDCWD,
    uring_file::fixed_file,
    uring_skip,
};

/// `IORING_OP_OPENAT`.
const IORING_OP_OPENAT: u8 = 18;
/// `IORING_OP_OPENAT2`.
const IORING_OP_OPENAT2: u8 = 28;
/// `IORING_FILE_INDEX_ALLOC`: the kernel picks the direct descriptor's slot
/// and returns it as the result.
const IORING_FILE_INDEX_ALLOC: u32 = u32::MAX;
/// Record offsets, shared by both tracepoints' formats (and 6.1's).
const CTX: usize = 8;
const REQ: usize = 16;
const USER_DATA: usize = 24;
/// `opcode` of `io_uring_submit_req`, `res` of `io_uring_complete`.
const OPCODE_OR_RES: usize = 32;

#[tracepoint]
pub fn io_uring_submit_req(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format.
    let opcode = unsafe { ctx.read_at::<u8>(OPCODE_OR_RES) }.unwrap_or(0);
    let syscall = match opcode {
        IORING_OP_OPENAT => OpenSyscall::IoUringOpenat,
        IORING_OP_OPENAT2 => OpenSyscall::IoUringOpenat2,
        _ => return 0,
    };
    if is_agent((bpf_get_current_pid_tgid() >> 32) as u32) {
        return 0;
    }
    // SAFETY: as above.
    let (ring, req, user_data) =
        unsafe { (ctx.read_at::<u64>(CTX), ctx.read_at::<u64>(REQ), ctx.read_at::<u64>(USER_DATA)) };
    let (ring, req, user_data) = (ring.unwrap_or(0), req.unwrap_or(0), user_data.unwrap_or(0));
    let mut pending = PendingUringOpen {
        open: PendingOpen { filename: 0, how: 0, flags: 0, dirfd: AT_FDCWD, syscall: syscall as u32 },
        ring,
        user_data,
        file_slot: 0,
        _pad: 0,
    };
    if kernel_offset!(io_uring_ready) != 0 {
        let open = req + u64::from(kernel_offset!(io_kiocb_cmd));
        pending.open.dirfd = read_u32(open, kernel_offset!(io_open_dfd)).unwrap_or(AT_FDCWD as u32) as i32;
        pending.file_slot = read_u32(open, kernel_offset!(io_open_file_slot)).unwrap_or(0);
        let filename = read_ptr(open, kernel_offset!(io_open_filename)).unwrap_or(0);
        // The user's pointer: the completing task shares the submitter's
        // memory, so the exit-side copy works as for a syscall.
        pending.open.filename = read_ptr(filename, kernel_offset!(filename_uptr)).unwrap_or(0);
        pending.open.flags = read_ptr(open, kernel_offset!(io_open_how) + kernel_offset!(open_how_flags)).unwrap_or(0);
    }
    if pending.file_slot != IORING_FILE_INDEX_ALLOC && uring_skip::skips_completion(req) {
        uring_skip::remember(&pending);
        return 0;
    }
    if PENDING_URING_OPENS.insert(req, pending, 0).is_err() {
        debug!(&ctx, "pending io_uring open map update refused");
    }
    0
}

#[tracepoint]
pub fn io_uring_complete(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format.
    let req = unsafe { ctx.read_at::<u64>(REQ) }.unwrap_or(0);
    // SAFETY: copied out before removal.
    let Some(pending) = (unsafe { PENDING_URING_OPENS.get(req) }).copied() else { return 0 };
    let _ = PENDING_URING_OPENS.remove(req);
    // SAFETY: as above.
    let (ring, user_data) = unsafe { (ctx.read_at::<u64>(CTX), ctx.read_at::<u64>(USER_DATA)) };
    // A recycled request whose earlier open never completed (CQE skipped):
    // not this open.
    if ring.unwrap_or(0) != pending.ring || user_data.unwrap_or(0) != pending.user_data {
        count(Hook::IoUring, Counter::EntriesMissing);
        return 0;
    }
    count(Hook::IoUring, Counter::OpensSeen);
    // SAFETY: as above.
    let res = i64::from(unsafe { ctx.read_at::<i32>(OPCODE_OR_RES) }.unwrap_or(-1));
    if res < 0 {
        return 0;
    }
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    // One call of the event's code, whichever table holds the file: each
    // call site is verified on its own, and 6.1's verifier counted both.
    let file = if pending.file_slot == 0 {
        fd_to_file(task, res as u64)
    } else if kernel_offset!(io_uring_ready) == 0 {
        None
    } else {
        let slot =
            if pending.file_slot == IORING_FILE_INDEX_ALLOC { res as u64 } else { u64::from(pending.file_slot) - 1 };
        fixed_file(pending.ring, slot)
    };
    let Some(file) = file else { return 0 };
    report_file(&ctx, Hook::IoUring, &pending.open, res, task, file);
    0
}
