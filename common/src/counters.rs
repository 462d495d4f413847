//! Per-CPU counters the programs keep, so operators can see what the kernel
//! side saw, matched, sent and lost without any event reaching userspace.

/// One slot of the per-CPU `COUNTERS` array. The discriminant is the index.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `open`, `openat` and `openat2` calls that returned (any result).
    OpensSeen = 0,
    /// Opens whose file was a watched token file.
    OpensMatched = 1,
    /// `connect` calls seen on entry.
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
