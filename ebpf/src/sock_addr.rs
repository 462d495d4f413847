//! The cgroup `connect4`/`connect6` programs, attached to the root of the
//! unified (v2) cgroup hierarchy so every socket on the node passes them.
//!
//! The kernel runs them from `__inet_stream_connect`'s pre-connect step (and
//! UDP's connect), whatever started the connect: `connect(2)`, io_uring's
//! `IORING_OP_CONNECT`, TCP Fast Open's `sendto`/`sendmsg(MSG_FASTOPEN)`.
//! They see the address the kernel copied, not the process's buffer, so a
//! thread rewriting that buffer under the syscall tracepoint changes nothing.
//!
//! They are the node's connect matcher: the destination comes from the
//! context, not from the process's memory, and an unwatched connect ends at
//! one hash lookup. A watched connect made by `connect(2)` (the syscall
//! number in the registers the kernel saved on entry says so) is left for
//! `sys_exit_connect`, which reports it with its fd and result; any other
//! (io_uring, TCP Fast Open, a 32-bit process's connect) is reported here
//! (`ConnectVia::CgroupSockAddr`: no fd, no result yet). Where these hooks
//! are not attached for both families, `sys_enter_connect` matches
//! `connect(2)` instead, and these stay quiet on what it has matched.
//!
//! Always allow: these programs observe. Refusing is the job of the
//! enforcement fences (`enforce.rs`), attached only to the cgroups of the
//! pods a block entry covers; when one refused this connect, the report
//! says so (`take_mark`).

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use tokenwatch_common::{ConnectEvent, ConnectVia, Counter, EndpointKey, EventKind, Hook};

use crate::{
    connect::defer_to_exit,
    enforce::take_mark,
    identity::fill_header,
    maps::{count, is_agent, kernel_offset, wakeup_flags, PendingConnect, EVENTS, PENDING_CONNECTS, WATCHED_ENDPOINTS},
    sock_endpoint::{endpoint4, endpoint6},
    syscall_args::SyscallArgs,
};

/// What a `cgroup/connect*` program returns to let the connect go on.
const ALLOW: i32 = 1;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    let (family, addr, key) = endpoint4(&ctx);
    on_connect(&ctx, family, &addr, key)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    let (family, addr, key) = endpoint6(&ctx);
    on_connect(&ctx, family, &addr, key)
}

/// Matches the destination; a watched one made by `connect(2)` is left for
/// that syscall's exit to report with its result, any other reported now.
/// Returns the verdict.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u16, addr: &[u8; 16], key: EndpointKey) -> i32 {
    count(Hook::CgroupConnect, Counter::ConnectsSeen);
    // SAFETY: value not used beyond presence.
    if unsafe { WATCHED_ENDPOINTS.get(key) }.is_none() {
        return ALLOW;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return ALLOW;
    }
    count(Hook::CgroupConnect, Counter::ConnectsMatched);
    let tid = pid_tgid as u32;
    // SAFETY: copied at once.
    if let Some(pending) = unsafe { PENDING_CONNECTS.get(tid) } {
        if pending.port == key.port {
            // The entry tracepoint, attached where these hooks do not cover
            // both families, has left this connect(2) for its exit already.
            return ALLOW;
        }
    }
    if let Some(fd) = SyscallArgs::current().and_then(|args| args.connect_fd()) {
        if defer_to_exit(tid, &PendingConnect { family, port: key.port, fd, addr: *addr }) {
            return ALLOW;
        }
    }
    if kernel_offset!(ready) == 0 {
        return ALLOW;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Hook::CgroupConnect, Counter::EventsDropped);
        debug!(ctx, "ring buffer full: API-server connect by tgid {} dropped", (pid_tgid >> 32) as u32);
        return verdict();
    };
    // SAFETY: reserved memory of the right size; every field is written.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    fill_header(&mut event.header, EventKind::Connect, task);
    event.family = family;
    event.port = key.port;
    event.fd = -1;
    event.result = 0;
    event.addr = *addr;
    event.via = ConnectVia::CgroupSockAddr as u32;
    event._pad = 0;
    // A fence on the pod's cgroup ran before this root program (the kernel
    // runs a cgroup's own programs before its ancestors').
    event.enforcement = take_mark(key.port);
    let flags = wakeup_flags(event.header.boot_time_ns);
    entry.submit(flags);
    count(Hook::CgroupConnect, Counter::EventsSent);
    verdict()
}

/// Whether a connect to a watched endpoint may go on: always here; the
/// fences of `enforce.rs`, on the covered pods' cgroups, refuse.
#[inline(always)]
fn verdict() -> i32 {
    ALLOW
}
