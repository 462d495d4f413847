//! The cgroup `connect4`/`connect6` programs, attached to the root of the
//! unified (v2) cgroup hierarchy so every socket on the node passes them.
//!
//! The kernel runs them from `__inet_stream_connect`'s pre-connect step (and
//! UDP's connect), whatever started the connect: `connect(2)`, io_uring's
//! `IORING_OP_CONNECT`, TCP Fast Open's `sendto`/`sendmsg(MSG_FASTOPEN)`.
//! They see the address the kernel copied, not the process's buffer, so a
//! thread rewriting that buffer under the syscall tracepoint changes nothing.
//!
//! No double alerts: a `connect(2)` to a watched endpoint is reported by the
//! syscall tracepoints, which know its result. When `sys_enter_connect` has
//! a watched connect in flight for this thread, these programs stay quiet;
//! otherwise they report it themselves (`ConnectVia::CgroupSockAddr`: no fd,
//! no result yet).
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
    enforce::take_mark,
    identity::fill_header,
    maps::{count, is_agent, kernel_offset, wakeup_flags, EVENTS, PENDING_CONNECTS, WATCHED_ENDPOINTS},
    sock_endpoint::{endpoint4, endpoint6},
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

/// Reports a watched destination unless `connect(2)`'s tracepoints already
/// will; returns the verdict.
#[inline(always)]
fn on_connect(ctx: &SockAddrContext, family: u16, addr: &[u8; 16], key: EndpointKey) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return ALLOW;
    }
    count(Hook::CgroupConnect, Counter::ConnectsSeen);
    // SAFETY: value not used beyond presence.
    if unsafe { WATCHED_ENDPOINTS.get(key) }.is_none() {
        return ALLOW;
    }
    // SAFETY: copied at once.
    if let Some(pending) = unsafe { PENDING_CONNECTS.get(pid_tgid as u32) } {
        if pending.port == key.port {
            // `connect(2)` of this thread, to this endpoint: its exit reports.
            return ALLOW;
        }
    }
    count(Hook::CgroupConnect, Counter::ConnectsMatched);
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
