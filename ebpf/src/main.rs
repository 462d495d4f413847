//! tokenwatch's eBPF programs. Syscall tracepoints only: this is what every
//! kernel the DaemonSet meets can load (no LSM, fentry or kprobes needed).
//!
//! * `open`, `openat`, `openat2`: the entry records the arguments per thread;
//!   the exit resolves the returned fd to its file and looks the file's
//!   (device, inode) up in `WATCHED_FILES`. Only a hit sends an event.
//! * `connect`: the entry reads the destination and looks it up in
//!   `WATCHED_ENDPOINTS`; only a hit is remembered, and the exit sends it with
//!   the result.
#![no_std]
#![no_main]

mod connect;
mod identity;
mod kernel;
mod maps;
mod open;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here; this only satisfies
    // the compiler.
    loop {}
}
