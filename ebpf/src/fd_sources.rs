//! Syscalls other than `open*` that hand a process a new fd of an existing
//! file, so a token can be read without any open the other hooks see:
//!
//! * `open_by_handle_at(2)`: opens by file handle (from
//!   `name_to_handle_at(2)`), no path at all; needs `CAP_DAC_READ_SEARCH`,
//!   which a node process or a privileged container has.
//! * `pidfd_getfd(2)`: copies an fd out of another process (one the caller
//!   may ptrace), e.g. the application's own open token fd.
//!
//! Both are judged exactly as an open: the returned fd is resolved to its
//! file and looked up ([`crate::open`]).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tokenwatch_common::{Hook, OpenSyscall};

use crate::open::{judge, remember, ARG0, ARG2};

#[tracepoint]
pub fn sys_enter_open_by_handle_at(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format (mount_fd, handle, flags).
    let (mount_fd, flags) = unsafe { (ctx.read_at::<u64>(ARG0), ctx.read_at::<u64>(ARG2)) };
    remember(&ctx, OpenSyscall::OpenByHandleAt, mount_fd.unwrap_or(0) as i32, 0, flags.unwrap_or(0), 0);
    0
}

#[tracepoint]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::OpenByHandleAt);
    0
}

#[tracepoint]
pub fn sys_enter_pidfd_getfd(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format (pidfd, fd, flags).
    let pidfd = unsafe { ctx.read_at::<u64>(ARG0) };
    remember(&ctx, OpenSyscall::PidfdGetfd, pidfd.unwrap_or(0) as i32, 0, 0, 0);
    0
}

#[tracepoint]
pub fn sys_exit_pidfd_getfd(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::PidfdGetfd);
    0
}
