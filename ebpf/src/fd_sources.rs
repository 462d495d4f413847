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
//! file and looked up ([`crate::open`]), at the exit only.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tokenwatch_common::{Hook, OpenSyscall};

use crate::open::judge;

#[tracepoint]
pub fn sys_exit_open_by_handle_at(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::OpenByHandleAt, OpenSyscall::OpenByHandleAt);
    0
}

#[tracepoint]
pub fn sys_exit_pidfd_getfd(ctx: TracePointContext) -> u32 {
    judge(&ctx, Hook::PidfdGetfd, OpenSyscall::PidfdGetfd);
    0
}
