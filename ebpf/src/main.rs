//! tokenwatch's eBPF programs. Tracepoints and cgroup socket-address
//! programs only: what every kernel the DaemonSet meets can load (no LSM,
//! fentry or kprobes needed).
//!
//! * `open`, `openat`, `openat2`: exits only. The exit resolves the returned
//!   fd to its file and looks its device up in `WATCHED_DEVS` (then its
//!   inode or name). Only a hit reads the arguments (`syscall_args`, from
//!   the saved registers) and sends an event.
//! * `open_by_handle_at`, `pidfd_getfd` (`fd_sources`): new fds of existing
//!   files without an open; judged as opens.
//! * `io_uring_submit_req`/`io_uring_complete` (`uring`): opens submitted to
//!   an io_uring, judged like the syscalls' on completion.
//! * `connect4`/`connect6` (`sock_addr`, cgroup programs): the connect
//!   matcher. Every connect's destination, as the kernel copied it, is
//!   looked up in `WATCHED_ENDPOINTS`; a hit made by `connect(2)` is left
//!   for its exit, any other (io_uring, TCP Fast Open) is sent at once.
//! * `fence_connect4`/`fence_connect6` and `token_opened` (`enforce`): the
//!   policy's blocks, refused in the kernel (`EPERM`, `SIGKILL`).
//! * `connect`: the exit sends a watched `connect(2)` with its result. The
//!   entry, attached only where the cgroup programs are not, matches from
//!   the process's memory.
//!
//! On the host (`cargo clippy --workspace`) the crate builds as an ordinary
//! program that does nothing, so the programs are type-checked and linted by
//! the same toolchain as the rest of the workspace.
#![cfg_attr(target_arch = "bpf", no_std)]
// `asm!` for the one atomic add Rust's BPF target has no `core` API for
// (`maps::add_connects_in_flight`); agent/build.rs lets this crate use it.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", no_main)]

mod connect;
mod enforce;
mod fd_sources;
mod identity;
mod kernel;
mod maps;
mod open;
mod sock_addr;
mod sock_endpoint;
mod syscall_args;
mod uring;
mod uring_file;
mod uring_skip;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies
    // the compiler.
    loop {}
}

/// Host builds exist only to be linted; the programs run in the kernel.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
