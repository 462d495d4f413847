//! Maps and globals shared with userspace, and the counter helper.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    Global,
};
use tokenwatch_common::{
    counter_slot, Counter, DevWatch, EndpointKey, FileKey, Hook, KernelOffsets, OpenEvent, COUNTER_SLOTS,
    RING_QUIET_NS, TOKEN_NAME_LEN,
};

/// Matched events for userspace; the agent sets the size at load
/// (`--ring-buffer-kib`, 8 MiB by default: about 3,600 open events).
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// When the last record that could wake the agent was taken (boot ns).
#[map(name = "LAST_WAKEUP")]
static LAST_WAKEUP: Array<u64> = Array::with_max_entries(1, 0);

/// The flags to submit a record taken at `now_ns` (its header's time) with.
/// Within [`tokenwatch_common::RING_QUIET_NS`] of the last record that
/// could wake the agent: `BPF_RB_NO_WAKEUP`, since the agent is still
/// draining on its own after that one (`kernel/reader.rs`). Otherwise the
/// record may wake it, and this time is noted: by the kernel's default
/// (only if the agent has read everything), or by force once the ring is
/// [`RING_WAKE_FILL`] full, because an agent that is behind gets no default
/// wakeup and a late timer must not let the ring fill (a full ring drops).
/// At most one record per quiet time can wake the agent, so a flood pays
/// for one wakeup per half millisecond, not one per record. A race between
/// CPUs only lets a record wake the agent once more.
#[inline(always)]
pub fn wakeup_flags(now_ns: u64) -> u64 {
    let Some(last) = LAST_WAKEUP.get_ptr_mut(0) else { return 0 };
    // SAFETY: the map's one value, valid while the program runs; plain
    // loads and stores of a u64, as racy between CPUs as said above.
    unsafe {
        if now_ns.wrapping_sub(*last) < RING_QUIET_NS {
            return BPF_RB_NO_WAKEUP;
        }
        *last = now_ns;
    }
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS.query(BPF_RB_RING_SIZE) / RING_WAKE_FILL {
        BPF_RB_FORCE_WAKEUP
    } else {
        0
    }
}

/// The ring buffer helpers' flags and queries (5.8+).
const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const BPF_RB_RING_SIZE: u64 = 1;

/// The share of the ring buffer that, once unread, wakes the agent by
/// force: an eighth (1 MiB, some 400 open events, of the default 8 MiB).
const RING_WAKE_FILL: u64 = 8;

/// One open event per CPU, built before it is copied into [`EVENTS`]
/// (`open::send` says why it is not built in a reservation).
#[map(name = "OPEN_SCRATCH")]
pub static OPEN_SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);

/// Devices holding watched files, and how they are watched. The first and,
/// for unrelated files, only lookup of an open.
#[map(name = "WATCHED_DEVS")]
pub static WATCHED_DEVS: HashMap<u32, DevWatch> = HashMap::with_max_entries(16384, 0);

/// The file names a token has (those of the agent's configured token
/// paths: `token` by default; never a name from a pod spec, which would
/// let a pod's author choose what is matched in other pods), NUL-padded
/// to `TOKEN_NAME_LEN`, filled by userspace. A file of such a name laid out as
/// kubelet lays out a token volume matches before the agent has found the
/// volume (`open::on_new_token_volume`). The value is unused.
#[map(name = "TOKEN_NAMES")]
pub static TOKEN_NAMES: HashMap<[u8; TOKEN_NAME_LEN], u32> = HashMap::with_max_entries(256, 0);

/// 1 while some device in [`WATCHED_DEVS`] is a disk
/// (`tokenwatch_common::DISK_WATCHES_MAP` says why), written by the agent.
#[map(name = "DISK_WATCHES")]
pub static DISK_WATCHES: Array<u32> = Array::with_max_entries(1, 0);

/// Token files to watch by inode, filled by userspace. The value is unused.
#[map(name = "WATCHED_FILES")]
pub static WATCHED_FILES: HashMap<FileKey, u32> = HashMap::with_max_entries(16384, 0);

/// API-server endpoints to watch, filled by userspace. The value is unused.
#[map(name = "WATCHED_ENDPOINTS")]
pub static WATCHED_ENDPOINTS: HashMap<EndpointKey, u32> = HashMap::with_max_entries(1024, 0);

/// Per-CPU counters, one row of `Counter`s per `Hook` (`counter_slot`).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

/// Watched connects in flight, by thread id.
#[map(name = "PENDING_CONNECTS")]
pub static PENDING_CONNECTS: LruHashMap<u32, PendingConnect> = LruHashMap::with_max_entries(4096, 0);

/// How many entries [`PENDING_CONNECTS`] holds, about: added to after an
/// entry is made, taken from after one is removed. While it is 0, which is
/// nearly always, `connect(2)`'s exit skips the hash lookup that every
/// connect of the node would otherwise pay. An entry the LRU evicts leaves
/// it too high, which costs that lookup again, never a report.
#[map(name = "CONNECTS_IN_FLIGHT")]
static CONNECTS_IN_FLIGHT: Array<u64> = Array::with_max_entries(1, 0);

/// Whether some watched connect may be in flight (see [`CONNECTS_IN_FLIGHT`]).
#[inline(always)]
pub fn connects_in_flight() -> bool {
    CONNECTS_IN_FLIGHT.get(0).is_none_or(|count| *count != 0)
}

/// Adds `delta` (wrapping: `u64::MAX` takes one away) to
/// [`CONNECTS_IN_FLIGHT`], atomically, as threads on other CPUs add and take
/// at the same time: the plain atomic add every kernel has (`BPF_XADD`,
/// `lock +=`), not the fetching form of 5.12. Written out because Rust's
/// BPF target has no atomic read-modify-write in `core`.
#[inline(always)]
pub fn add_connects_in_flight(delta: u64) {
    let Some(count) = CONNECTS_IN_FLIGHT.get_ptr_mut(0) else { return };
    #[cfg(target_arch = "bpf")]
    // SAFETY: the map's one value, valid and 8-byte aligned while the
    // program runs; the instruction reads and writes only it.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) count, in(reg) delta, options(nostack));
    }
    #[cfg(not(target_arch = "bpf"))]
    // SAFETY: as above; the host build only type-checks the programs.
    unsafe {
        *count = (*count).wrapping_add(delta);
    }
}

/// io_uring opens between submission and completion, by request pointer.
/// LRU: an open whose completion is skipped (`IOSQE_CQE_SKIP_SUCCESS`)
/// never removes its entry.
#[map(name = "PENDING_URING_OPENS")]
pub static PENDING_URING_OPENS: LruHashMap<u64, PendingUringOpen> = LruHashMap::with_max_entries(4096, 0);

/// io_uring opens submitted with `IOSQE_CQE_SKIP_SUCCESS`, by tgid, until
/// a later event of the process finds their fd (`uring_skip`).
#[map(name = "SKIPPED_URING_OPENS")]
pub static SKIPPED_URING_OPENS: LruHashMap<u32, SkippedUringOpen> = LruHashMap::with_max_entries(1024, 0);

/// `bpf_ktime_get_ns()` of the node's latest completion-less io_uring open:
/// the `sched_switch` program does nothing more than read it otherwise.
#[map(name = "LAST_SKIPPED_OPEN")]
pub static LAST_SKIPPED_OPEN: Array<u64> = Array::with_max_entries(1, 0);

/// Kernel struct offsets, written by the agent from BTF before load.
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: Global<KernelOffsets> =
    // SAFETY: KernelOffsets is integers only; all-zero means "not ready".
    Global::new(unsafe { core::mem::zeroed() });

/// One field of [`KERNEL_OFFSETS`], read on its own, for code whose callers'
/// frames have no room for a copy of the whole struct (`Global::load`
/// copies it: some 260 bytes of stack). `Global` is `repr(transparent)` over the value and
/// the read is volatile, as `Global::load`'s, so the loader's values are
/// used, not the zeroes the object was built with.
macro_rules! kernel_offset {
    ($field:ident) => {{
        let all = core::ptr::addr_of!($crate::maps::KERNEL_OFFSETS).cast::<tokenwatch_common::KernelOffsets>();
        #[allow(unused_unsafe, reason = "the macro is also expanded inside unsafe blocks")]
        // SAFETY: a valid, aligned static of u32 fields.
        unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*all).$field))
        }
    }};
}
pub(crate) use kernel_offset;

/// The agent's own tgid: its opens and connects are not events.
#[unsafe(no_mangle)]
pub static AGENT_TGID: Global<u32> = Global::new(0);

/// What an event reports of an open's arguments; kernel-only, so defined
/// here.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingOpen {
    /// User pointer to the path string.
    pub filename: u64,
    /// User pointer to `struct open_how` (openat2 only).
    pub how: u64,
    /// Flags (open/openat).
    pub flags: u64,
    /// `dirfd` argument.
    pub dirfd: i32,
    /// `OpenSyscall` discriminant.
    pub syscall: u32,
}

/// An io_uring open between submission and completion; kernel-only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingUringOpen {
    /// What the process passed, as for a syscall.
    pub open: PendingOpen,
    /// The ring (`struct io_ring_ctx *`), to tell a recycled request apart.
    pub ring: u64,
    /// The request's `user_data`, for the same reason.
    pub user_data: u64,
    /// `io_open.file_slot`: non-zero for a direct descriptor.
    pub file_slot: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// A completion-less io_uring open waiting to be found; kernel-only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SkippedUringOpen {
    /// What was submitted.
    pub open: PendingUringOpen,
    /// `bpf_ktime_get_ns()` at submission.
    pub since_ns: u64,
}

/// A watched connect in flight; kernel-only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingConnect {
    /// The destination as the process passed it (family kept as passed).
    pub family: u16,
    /// Destination port, host order.
    pub port: u16,
    /// Socket fd.
    pub fd: i32,
    /// Destination address as passed.
    pub addr: [u8; 16],
}

/// Adds one to `hook`'s per-CPU `counter`.
#[inline(always)]
pub fn count(hook: Hook, counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter_slot(hook, counter)) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// True when the current task belongs to the agent itself.
#[inline(always)]
pub fn is_agent(tgid: u32) -> bool {
    let agent = AGENT_TGID.load();
    agent != 0 && agent == tgid
}
