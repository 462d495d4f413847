//! io_uring opens submitted with `IOSQE_CQE_SKIP_SUCCESS`: a successful one
//! posts no completion, so `io_uring_complete` never fires for it and the
//! process reads the fd it guesses (the lowest free one) with `read(2)`.
//!
//! Such an open is remembered per process at submission, and judged when a
//! thread of the process next stops running (`sched_switch`, a raw
//! tracepoint: an io-wq worker that finished the open goes idle, the
//! submitter waits or sleeps before its `read(2)`), at the return of
//! `io_uring_enter` and at any completion of the process: the fds just
//! below `files->next_fd` (the allocator's hint, one above the fd it last
//! gave) are looked up; a direct descriptor is read from its fixed-file
//! slot. One report per open: the thread whose removal of the record
//! succeeds sends it. The `sched_switch` program costs one array lookup per context
//! switch, and a hash lookup only within [`WINDOW_NS`] of a completion-less
//! open anywhere on the node; entries expire after the same window.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
    EbpfContext,
};
use tokenwatch_common::{Counter, FileKey, Hook};

use crate::{
    kernel::{read_ptr, read_u32},
    maps::{count, kernel_offset, SkippedUringOpen, LAST_SKIPPED_OPEN, SKIPPED_URING_OPENS},
    open::{fd_to_file, send, watched},
    uring_file::fixed_file,
};

/// `REQ_F_CQE_SKIP`: bit 6, mirroring `IOSQE_CQE_SKIP_SUCCESS`.
pub const REQ_F_CQE_SKIP: u32 = 1 << 6;
/// How many fds below `next_fd` are looked at.
const CANDIDATES: u32 = 4;
/// How long a completion-less open is looked for (it opened something
/// else, or failed, or the process is gone): 2 s.
pub const WINDOW_NS: u64 = 2_000_000_000;

/// Whether the request `req` asked for no completion on success.
#[inline(always)]
pub fn skips_completion(req: u64) -> bool {
    kernel_offset!(io_uring_ready) != 0
        && read_u32(req, kernel_offset!(io_kiocb_flags)).unwrap_or(0) & REQ_F_CQE_SKIP != 0
}

/// Remembers a completion-less open of the current process.
#[inline(always)]
pub fn remember(pending: &crate::maps::PendingUringOpen) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: helper without preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    let _ = SKIPPED_URING_OPENS.insert(tgid, SkippedUringOpen { open: *pending, since_ns: now }, 0);
    if let Some(last) = LAST_SKIPPED_OPEN.get_ptr_mut(0) {
        // SAFETY: the array's only slot; a racing writer also writes "now".
        unsafe { *last = now };
    }
}

/// A thread stops running: the cheapest moment that surely follows an
/// io-wq worker's open (it goes idle) and precedes the submitter's read.
#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn sched_switch_skipped(ctx: RawTracePointContext) -> i32 {
    check(&ctx);
    0
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
    // The gate: one array read unless such an open happened lately.
    let last = LAST_SKIPPED_OPEN.get(0).copied().unwrap_or(0);
    // SAFETY: helper without preconditions.
    if last == 0 || unsafe { bpf_ktime_get_ns() }.saturating_sub(last) > WINDOW_NS || kernel_offset!(ready) == 0 {
        return;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: copied out at once.
    let Some(skipped) = (unsafe { SKIPPED_URING_OPENS.get(tgid) }).copied() else { return };
    let found = skipped.open;
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    // The key found here is the one reported: judging the file a second
    // time would make the verifier walk every way of finding it twice.
    let hit = if found.file_slot != 0 {
        fixed_file(found.ring, u64::from(found.file_slot) - 1)
            .and_then(|file| watched(file).map(|key| (file, i64::from(found.file_slot) - 1, key)))
    } else {
        newest_watched_fd(task)
    };
    if let Some((file, ret, key)) = hit {
        // Two threads of the process may judge the same open at once (the
        // io-wq worker going idle on one CPU, the submitter's next syscall
        // on another): the one whose removal succeeds reports it.
        if SKIPPED_URING_OPENS.remove(tgid).is_ok() {
            count(Hook::IoUring, Counter::OpensSeen);
            send(ctx, Hook::IoUring, &found.open, ret, task, file, key);
        }
    // SAFETY: helper without preconditions.
    } else if unsafe { bpf_ktime_get_ns() }.saturating_sub(skipped.since_ns) > WINDOW_NS {
        let _ = SKIPPED_URING_OPENS.remove(tgid);
    }
}

/// The highest of the few fds just below `files->next_fd` that is a
/// watched token file: (file, fd, key).
#[inline(always)]
fn newest_watched_fd(task: u64) -> Option<(u64, i64, FileKey)> {
    let files = read_ptr(task, kernel_offset!(task_files)).ok()?;
    let next = read_u32(files, kernel_offset!(files_next_fd)).ok()?;
    for back in 1..=CANDIDATES {
        if back > next {
            break;
        }
        let fd = u64::from(next - back);
        if let Some(file) = fd_to_file(task, fd) {
            if let Some(key) = watched(file) {
                return Some((file, fd as i64, key));
            }
        }
    }
    None
}
