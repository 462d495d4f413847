//! Per-CPU counters the programs keep, so operators can see what the kernel
//! side saw, matched, sent and lost, per hook, without any event reaching
//! userspace. The `COUNTERS` array holds one row of [`Counter`]s per
//! [`Hook`]: slot `hook * Counter::COUNT + counter` ([`counter_slot`]).

/// The hook a counter row belongs to: one per syscall family the programs
/// watch, so a drop or a missing entry can be traced to the hook that saw it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `open(2)` (entry and exit tracepoints).
    Open = 0,
    /// `openat(2)`.
    Openat = 1,
    /// `openat2(2)`.
    Openat2 = 2,
    /// `connect(2)`.
    Connect = 3,
    /// io_uring opens (`io_uring:io_uring_submit_req` and
    /// `io_uring:io_uring_complete`).
    IoUring = 4,
    /// The cgroup `connect4`/`connect6` programs: connects made without
    /// `connect(2)` (io_uring, TCP Fast Open).
    CgroupConnect = 5,
    /// `open_by_handle_at(2)`.
    OpenByHandleAt = 6,
    /// `pidfd_getfd(2)`.
    PidfdGetfd = 7,
}

impl Hook {
    /// Rows reserved in `COUNTERS`: room for hooks yet to come, so adding
    /// one does not change the map's size or any existing slot.
    pub const ROWS: u32 = 16;
    /// Every hook, in index order.
    pub const ALL: [Hook; 8] = [
        Hook::Open,
        Hook::Openat,
        Hook::Openat2,
        Hook::Connect,
        Hook::IoUring,
        Hook::CgroupConnect,
        Hook::OpenByHandleAt,
        Hook::PidfdGetfd,
    ];

    /// A stable name for logs and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::Open => "open",
            Hook::Openat => "openat",
            Hook::Openat2 => "openat2",
            Hook::Connect => "connect",
            Hook::IoUring => "io_uring",
            Hook::CgroupConnect => "cgroup_connect",
            Hook::OpenByHandleAt => "open_by_handle_at",
            Hook::PidfdGetfd => "pidfd_getfd",
        }
    }
}

/// Number of slots of the per-CPU `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = Hook::ROWS * Counter::COUNT;

/// The `COUNTERS` slot of `counter` in `hook`'s row.
#[inline(always)]
pub const fn counter_slot(hook: Hook, counter: Counter) -> u32 {
    hook as u32 * Counter::COUNT + counter as u32
}

/// One slot of the per-CPU `COUNTERS` array. The discriminant is the index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `open`, `openat` and `openat2` calls that returned (any result).
    OpensSeen = 0,
    /// Opens whose file was a watched token file.
    OpensMatched = 1,
    /// Connects seen by the matcher: the cgroup hooks (`cgroup_connect`),
    /// or `connect(2)`'s entry (`connect`) where they are not attached. A
    /// watched `connect(2)` matched by the cgroup hooks is sent from its
    /// exit, so `connect` then counts it sent, not seen or matched.
    ConnectsSeen = 2,
    /// Connects whose destination was a watched API-server endpoint.
    ConnectsMatched = 3,
    /// Events written to the ring buffer.
    EventsSent = 4,
    /// Matched events lost because the ring buffer was full.
    EventsDropped = 5,
    /// Syscall exits whose entry record was missing (evicted or never made).
    EntriesMissing = 6,
}

impl Counter {
    /// Number of counters; the size of the per-CPU array.
    pub const COUNT: u32 = 7;
    /// Every counter, in index order.
    pub const ALL: [Counter; Self::COUNT as usize] = [
        Counter::OpensSeen,
        Counter::OpensMatched,
        Counter::ConnectsSeen,
        Counter::ConnectsMatched,
        Counter::EventsSent,
        Counter::EventsDropped,
        Counter::EntriesMissing,
    ];

    /// A stable snake_case name for logs and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::OpensSeen => "opens_seen",
            Counter::OpensMatched => "opens_matched",
            Counter::ConnectsSeen => "connects_seen",
            Counter::ConnectsMatched => "connects_matched",
            Counter::EventsSent => "events_sent",
            Counter::EventsDropped => "events_dropped",
            Counter::EntriesMissing => "entries_missing",
        }
    }
}
