//! The arguments of the current syscall, read at its exit from the
//! registers the kernel saved on entry (`task_pt_regs`), so the opens need
//! no entry program and no per-thread map write: arguments are recovered
//! only for the rare open that matched.
//!
//! The saved registers are the process's own at `syscall`, which the kernel
//! does not change before the exit (only `ax` gets the result). Offsets
//! are those of x86_64's `struct pt_regs`, which the entry code's push
//! order fixes and ptrace's `user_regs_struct` shares: an ABI, not a
//! layout that moves between kernels.
//!
//! Where they are: `bpf_task_pt_regs` says so on 5.15 and later. Older
//! kernels (5.10) lack that helper (and `bpf_get_current_task_btf`), and
//! there the registers sit where x86_64's `task_pt_regs()` puts them: at
//! the top of the task's kernel stack (`task->stack + THREAD_SIZE`, no
//! padding on x86_64 before FRED, which came in 6.9). Which path runs is a
//! read-only constant ([`KernelOffsets::has_task_pt_regs`]), so each
//! kernel's verifier sees only the path it can load.
//!
//! [`KernelOffsets::has_task_pt_regs`]: tokenwatch_common::KernelOffsets

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs},
    programs::TracePointContext,
    EbpfContext,
};
use tokenwatch_common::OpenSyscall;

use crate::{
    kernel::read_ptr,
    maps::{kernel_offset, PendingOpen},
};

/// `AT_FDCWD`: the dirfd reported for `open(2)`, and when the kernel's own
/// record of one cannot be read.
pub const AT_FDCWD: i32 = -100;

/// Offset in x86_64's `struct pt_regs` of `rdx`, followed by `rsi`, `rdi`
/// and `orig_ax`: the first three syscall arguments in reverse, then the
/// syscall's number, read in one go. The object is built for x86_64 only
/// (`agent/build.rs`); another architecture needs its own layout here.
const RDX_RSI_RDI_ORIG_AX: u64 = 96;
/// x86_64's `__NR_connect`. A 32-bit process's connect has another number
/// (its table's), which the syscall tracepoints do not see either.
const NR_CONNECT: u64 = 42;
/// x86_64's `THREAD_SIZE` (16 KiB; KASAN builds, which double it, are not
/// what nodes run) and `sizeof(struct pt_regs)`.
const THREAD_SIZE: u64 = 16 * 1024;
const PT_REGS_SIZE: u64 = 21 * 8;

/// The first three arguments of the syscall the current task is in, and
/// its number.
pub struct SyscallArgs {
    args: [u64; 3],
    nr: u64,
}

impl SyscallArgs {
    /// Reads them from the current task's saved registers; `None` when a
    /// read fails. Tracing and cgroup programs alike may call it (both have
    /// the helpers it uses, 5.15+ and before).
    #[inline(always)]
    pub fn current() -> Option<Self> {
        let regs = if kernel_offset!(has_task_pt_regs) != 0 {
            // SAFETY: helpers without preconditions in tracing programs; the
            // result is only read through bpf_probe_read_kernel.
            (unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) }) as u64
        } else {
            // SAFETY: the current task pointer, read only via probes.
            let task = unsafe { bpf_get_current_task() };
            let stack = read_ptr(task, kernel_offset!(task_stack)).ok()?;
            if stack == 0 {
                return None;
            }
            stack + THREAD_SIZE - PT_REGS_SIZE
        };
        if regs == 0 {
            return None;
        }
        // SAFETY: a kernel address the helper checks; a bad one is an Err.
        let [rdx, rsi, rdi, nr] =
            unsafe { bpf_probe_read_kernel((regs + RDX_RSI_RDI_ORIG_AX) as *const [u64; 4]) }.ok()?;
        Some(Self { args: [rdi, rsi, rdx], nr })
    }

    /// The socket fd, if the current syscall is `connect(2)`, whose exit
    /// then reports the attempt with its result.
    #[inline(always)]
    pub fn connect_fd(&self) -> Option<i32> {
        (self.nr == NR_CONNECT).then_some(self.args[0] as i32)
    }

    /// What an event reports of `syscall`'s arguments.
    #[inline(always)]
    pub fn open(&self, syscall: OpenSyscall) -> PendingOpen {
        let [a0, a1, a2] = self.args;
        let (dirfd, filename, flags, how) = match syscall {
            OpenSyscall::Open => (AT_FDCWD, a0, a1, 0),
            OpenSyscall::Openat => (a0 as i32, a1, a2, 0),
            OpenSyscall::Openat2 => (a0 as i32, a1, 0, a2),
            // mount_fd, handle, flags: no path.
            OpenSyscall::OpenByHandleAt => (a0 as i32, 0, a2, 0),
            // pidfd, targetfd, flags: reported as the dirfd.
            _ => (a0 as i32, 0, 0, 0),
        };
        PendingOpen { filename, how, flags, dirfd, syscall: syscall as u32 }
    }
}

/// Offset of `ret` in the `sys_exit_*` tracepoint record.
const RET: usize = 16;

/// What the syscall returned, from a `sys_exit_*` record: a direct context
/// load, not a helper call.
#[inline(always)]
pub fn syscall_return(ctx: &TracePointContext) -> i64 {
    // SAFETY: `ret` is within every `sys_exit_*` record (the tracepoint's
    // format), and the context is that record.
    unsafe { *(ctx.as_ptr().cast::<u8>().add(RET).cast::<i64>()) }
}
