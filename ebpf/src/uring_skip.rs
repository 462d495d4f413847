//! io_uring opens submitted with `IOSQE_CQE_SKIP_SUCCESS`: a successful one
//! posts no completion, so `io_uring_complete` never fires for it and the
//! process reads the fd it guesses (the lowest free one) with `read(2)`.
//!
//! Such an open is remembered per process at submission. It is judged at
//! the process's next io_uring event after it (a completion of any request
//! of the process, e.g. a NOP linked behind the open, or the return of
//! `io_uring_enter`, which is where an inline open has already finished):
//! the fds just below `files->next_fd` (the allocator's hint, one above the
//! fd it last gave) are looked up; a direct descriptor is read from its
//! fixed-file slot. Residual gap (README): an open punted to an io-wq
//! worker and never followed by another io_uring event of the process.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use tokenwatch_common::{Counter, Hook, KernelOffsets};

use crate::{
    kernel::{read_ptr, read_u32},
    maps::{count, PendingUringOpen, KERNEL_OFFSETS, SKIPPED_URING_OPENS},
    open::{fd_to_file, report_file, watched},
    uring::fixed_file,
};

/// `REQ_F_CQE_SKIP`: bit 6, mirroring `IOSQE_CQE_SKIP_SUCCESS`.
pub const REQ_F_CQE_SKIP: u32 = 1 << 6;
/// How many fds below `next_fd` are looked at.
const CANDIDATES: u32 = 4;
/// After this many events without a match the open is forgotten (it opened
/// something else, or failed).
const MAX_CHECKS: u32 = 8;

/// Whether the request `req` asked for no completion on success.
#[inline(always)]
pub fn skips_completion(req: u64, offsets: &KernelOffsets) -> bool {
    offsets.io_uring_ready != 0 && read_u32(req, offsets.io_kiocb_flags).unwrap_or(0) & REQ_F_CQE_SKIP != 0
}

/// Remembers a completion-less open of the current process.
#[inline(always)]
pub fn remember(pending: &PendingUringOpen) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let _ = SKIPPED_URING_OPENS.insert(tgid, *pending, 0);
}

#[tracepoint]
pub fn sys_exit_io_uring_enter(ctx: TracePointContext) -> u32 {
    check(&ctx);
    0
}

/// Attached to `io_uring:io_uring_complete` beside `io_uring_complete`: a
/// program of its own, so each stays within the verifier's budget.
#[tracepoint]
pub fn io_uring_complete_skipped(ctx: TracePointContext) -> u32 {
    check(&ctx);
    0
}

/// Judges the current process's completion-less open, if it has one.
#[inline(always)]
fn check<C: EbpfContext>(ctx: &C) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(entry) = SKIPPED_URING_OPENS.get_ptr_mut(tgid) else { return };
    // SAFETY: a map value pointer, valid for this program's run.
    let pending = unsafe { &mut *entry };
    pending._pad += 1;
    let (checks, found) = (pending._pad, *pending);
    let offsets = KERNEL_OFFSETS.load();
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    let hit = if found.file_slot != 0 {
        fixed_file(found.ring, u64::from(found.file_slot) - 1, &offsets)
            .filter(|file| watched(*file, &offsets).is_some())
            .map(|file| (file, i64::from(found.file_slot) - 1))
    } else {
        newest_watched_fd(task, &offsets)
    };
    if let Some((file, ret)) = hit {
        let _ = SKIPPED_URING_OPENS.remove(tgid);
        count(Hook::IoUring, Counter::OpensSeen);
        report_file(ctx, Hook::IoUring, &found.open, ret, task, file);
    } else if checks >= MAX_CHECKS {
        let _ = SKIPPED_URING_OPENS.remove(tgid);
    }
}

/// The highest of the few fds just below `files->next_fd` that is a
/// watched token file: (file, fd).
#[inline(always)]
fn newest_watched_fd(task: u64, offsets: &KernelOffsets) -> Option<(u64, i64)> {
    let files = read_ptr(task, offsets.task_files).ok()?;
    let next = read_u32(files, offsets.files_next_fd).ok()?;
    for back in 1..=CANDIDATES {
        if back > next {
            break;
        }
        let fd = u64::from(next - back);
        if let Some(file) = fd_to_file(task, fd, offsets) {
            if watched(file, offsets).is_some() {
                return Some((file, fd as i64));
            }
        }
    }
    None
}
