//! `connect(2)`: report a watched attempt with its result at the exit. The
//! match is made before, by the cgroup connect hooks (`sock_addr.rs`), or
//! where they are not attached by the entry tracepoint here.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_user},
    macros::tracepoint,
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use tokenwatch_common::{ConnectEvent, ConnectVia, Counter, EndpointKey, EventKind, Hook, AF_INET, AF_INET6};

use crate::{
    enforce::take_mark,
    identity::fill_header,
    maps::{
        add_connects_in_flight, connects_in_flight, count, is_agent, kernel_offset, wakeup_flags, PendingConnect,
        EVENTS, PENDING_CONNECTS, WATCHED_ENDPOINTS,
    },
    syscall_args::syscall_return,
};

/// `struct sockaddr_in6` as userspace passes it.
#[repr(C)]
#[derive(Clone, Copy)]
struct SockaddrIn6 {
    family: u16,
    port_be: u16,
    flowinfo: u32,
    addr: [u8; 16],
}

/// The fallback matcher, attached only where the cgroup connect hooks
/// (`sock_addr.rs`), which match every connect from the address the kernel
/// copied, do not cover both families (`loader::Hooks::attach`): it reads
/// the address from the process's memory.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    count(Hook::Connect, Counter::ConnectsSeen);
    // SAFETY: offsets within the tracepoint's record (its format): direct
    // context loads, not helper calls, as this runs on every connect.
    let (fd, sockaddr) = unsafe {
        let record = ctx.as_ptr().cast::<u8>();
        (*record.add(16).cast::<u64>(), *record.add(24).cast::<u64>())
    };
    if sockaddr == 0 {
        return 0;
    }
    // sockaddr_in (family, port, 4-byte address) in one read; the family
    // says whether the longer sockaddr_in6 must be read.
    // SAFETY: user pointer; a bad one is an Err.
    let Ok(raw) = (unsafe { bpf_probe_read_user(sockaddr as *const [u8; 8]) }) else { return 0 };
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let mut pending = PendingConnect { family, port: 0, fd: fd as i32, addr: [0; 16] };
    let mut key = EndpointKey { family, port: 0, _pad: 0, addr: [0; 16] };
    if family == AF_INET {
        pending.port = u16::from_be_bytes([raw[2], raw[3]]);
        pending.addr[..4].copy_from_slice(&raw[4..8]);
        key.port = pending.port;
        key.addr = pending.addr;
    } else if family == AF_INET6 {
        // SAFETY: as above.
        let Ok(raw) = (unsafe { bpf_probe_read_user(sockaddr as *const SockaddrIn6) }) else { return 0 };
        pending.port = u16::from_be(raw.port_be);
        pending.addr = raw.addr;
        key.port = pending.port;
        if is_v4_mapped(&raw.addr) {
            key.family = AF_INET;
            key.addr[..4].copy_from_slice(&raw.addr[12..16]);
        } else {
            key.addr = raw.addr;
        }
    } else {
        return 0;
    }
    // SAFETY: value not used beyond presence.
    if unsafe { WATCHED_ENDPOINTS.get(key) }.is_none() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return 0;
    }
    count(Hook::Connect, Counter::ConnectsMatched);
    if !defer_to_exit(pid_tgid as u32, &pending) {
        debug!(&ctx, "pending-connect map update refused for tid {}", pid_tgid as u32);
    }
    0
}

/// Leaves a watched `connect(2)` of thread `tid` for its exit to report,
/// with its result; false when the map refused the entry. A thread's new
/// entry counts one more in flight; one left by a connect whose exit never
/// came (the exit was not attached yet) is replaced, already counted.
#[inline(always)]
pub fn defer_to_exit(tid: u32, pending: &PendingConnect) -> bool {
    if PENDING_CONNECTS.insert(tid, pending, BPF_NOEXIST).is_ok() {
        add_connects_in_flight(1);
        return true;
    }
    PENDING_CONNECTS.insert(tid, pending, BPF_EXIST).is_ok()
}

/// `bpf_map_update_elem`'s flags: only a new key; only an existing one.
const BPF_NOEXIST: u64 = 1;
const BPF_EXIST: u64 = 2;

/// Reports a watched `connect(2)` with its result. Every connect of the
/// node passes here; while no watched one is in flight (nearly always) it
/// ends at one array load, before any hash lookup.
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    if !connects_in_flight() {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    // SAFETY: copied out before removal.
    let Some(pending) = (unsafe { PENDING_CONNECTS.get(tid) }).copied() else { return 0 };
    if PENDING_CONNECTS.remove(tid).is_ok() {
        add_connects_in_flight(u64::MAX);
    }
    if kernel_offset!(ready) == 0 {
        return 0;
    }
    let Some(mut entry) = EVENTS.reserve::<ConnectEvent>(0) else {
        count(Hook::Connect, Counter::EventsDropped);
        debug!(&ctx, "ring buffer full: API-server connect by tgid {} dropped", (pid_tgid >> 32) as u32);
        return 0;
    };
    // SAFETY: reserved memory of the right size; every field is written.
    let event = unsafe { &mut *entry.as_mut_ptr() };
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    fill_header(&mut event.header, EventKind::Connect, task);
    event.family = pending.family;
    event.port = pending.port;
    event.fd = pending.fd;
    event.result = syscall_return(&ctx);
    event.addr = pending.addr;
    event.via = ConnectVia::Syscall as u32;
    event._pad = 0;
    event.enforcement = take_mark(pending.port);
    let flags = wakeup_flags(event.header.boot_time_ns);
    entry.submit(flags);
    count(Hook::Connect, Counter::EventsSent);
    0
}

/// `::ffff:a.b.c.d`: an IPv4 destination dialled through an IPv6 socket.
#[inline(always)]
fn is_v4_mapped(addr: &[u8; 16]) -> bool {
    addr[..10].iter().all(|b| *b == 0) && addr[10] == 0xff && addr[11] == 0xff
}
