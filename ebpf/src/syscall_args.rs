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

use aya_ebpf::helpers::{bpf_get_current_task_btf, bpf_probe_read_kernel, bpf_task_pt_regs};
use tokenwatch_common::OpenSyscall;

use crate::{maps::PendingOpen, open::AT_FDCWD};

/// Offsets in x86_64's `struct pt_regs` of the first three syscall
/// arguments (`rdi`, `rsi`, `rdx`). The object is built for x86_64 only
/// (`agent/build.rs`); another architecture needs its own row here.
const ARG_OFFSETS: [u64; 3] = [112, 104, 96];

/// The first three arguments of the syscall the current task is in.
pub struct SyscallArgs([u64; 3]);

impl SyscallArgs {
    /// Reads them from the current task's saved registers; `None` when a
    /// read fails.
    #[inline(always)]
    pub fn current() -> Option<Self> {
        // SAFETY: helpers without preconditions in tracing programs; the
        // result is only read through bpf_probe_read_kernel.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
        if regs == 0 {
            return None;
        }
        let mut args = [0u64; 3];
        for (arg, offset) in args.iter_mut().zip(ARG_OFFSETS.iter()) {
            // SAFETY: a kernel address the helper checks; a bad one is an Err.
            *arg = unsafe { bpf_probe_read_kernel((regs + offset) as *const u64) }.ok()?;
        }
        Some(Self(args))
    }

    /// What an event reports of `syscall`'s arguments.
    #[inline(always)]
    pub fn open(&self, syscall: OpenSyscall) -> PendingOpen {
        let [a0, a1, a2] = self.0;
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
