//! Folds repeated identical alerts into one, so a process that reads its
//! token 1,000 times a minute is one alert with `count: 1000`, not 1,000.
//!
//! Identical means: same rule, same container (`container.id`, else the
//! cgroup id), same binary (`process.exe`, else `comm`), same severity
//! (an occurrence the detector judged more severe, e.g. exec'd, is never
//! hidden inside a milder alert) and the same enforcement (a refused
//! connect or a killed reader is never counted inside an alert that says
//! nothing was done, nor a dry run's report inside a real refusal). The first occurrence passes through at
//! once (count 1), so detection latency does not depend on the window.
//! Later ones within the window only count. When the window closes, an alert
//! that absorbed any is sent again with the same id, its total count and
//! first/last seen: a SIEM that upserts by id ends with one alert and the
//! final count. Windows are fixed, starting at the first occurrence; the
//! next occurrence after a window closes opens a new one (and a new alert).
//!
//! The re-emission says who: `folded_processes` lists each distinct
//! process (pid, start, parent) the alert stands for with its own count,
//! at most [`MAX_FOLDED_PROCESSES`], and `folded_processes_more` counts the
//! events of the rest. A second shell's reads are never hidden behind the
//! first's pid.
//!
//! Memory is bounded by `max_keys` open windows; when full, the oldest
//! window is closed early (re-emitted if it absorbed anything), so counts
//! are never dropped.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use tokenwatch_proto::v1::{Alert, FoldedProcess};

#[cfg(test)]
mod tests;

/// The default window: long enough to fold a polling client's reads, short
/// enough that the final count arrives within a minute.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
/// The default bound on open windows (distinct rule/container/binary
/// triples seen within one window).
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// The most processes a re-emitted alert lists.
pub const MAX_FOLDED_PROCESSES: usize = 16;

/// What makes two alerts the same.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    rule: String,
    container: Container,
    binary: Binary,
    severity: i32,
    /// `enforcement` (action, block id); `None` when nothing was done.
    enforcement: Option<(i32, String)>,
}

/// The container: its id, else its cgroup (host processes, unknown
/// runtimes). Kept apart so an id can never collide with a cgroup number.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Container {
    Id(String),
    Cgroup(u64),
}

/// The binary: its executable path, else its comm (the process exited
/// before the agent looked).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Binary {
    Exe(String),
    Comm(String),
}

impl Key {
    fn of(alert: &Alert) -> Key {
        let container = match &alert.container {
            Some(c) if !c.id.is_empty() => Container::Id(c.id.clone()),
            c => Container::Cgroup(c.as_ref().map_or(0, |c| c.cgroup_id)),
        };
        let binary = match &alert.process {
            Some(p) if !p.exe.is_empty() => Binary::Exe(p.exe.clone()),
            p => Binary::Comm(p.as_ref().map_or_else(String::new, |p| p.comm.clone())),
        };
        let enforcement = alert.enforcement.as_ref().map(|e| (e.action, e.block_id.clone()));
        Key { rule: alert.rule.clone(), container, binary, severity: alert.severity, enforcement }
    }
}

/// One open window: the alert as first sent, with the running count and
/// the processes folded in.
#[derive(Debug)]
struct Window {
    alert: Alert,
    closes: Instant,
    processes: Vec<FoldedProcess>,
    /// Events of processes beyond [`MAX_FOLDED_PROCESSES`].
    more: u64,
}

impl Window {
    /// Counts `occurrences` of `alert`'s process.
    fn fold(&mut self, alert: &Alert, occurrences: u64) {
        let folded = folded_process(alert, occurrences);
        let same = |known: &FoldedProcess| known.pid == folded.pid && known.start_time == folded.start_time;
        match self.processes.iter().position(same) {
            Some(at) => self.processes[at].count = self.processes[at].count.saturating_add(occurrences),
            None if self.processes.len() < MAX_FOLDED_PROCESSES => self.processes.push(folded),
            None => self.more = self.more.saturating_add(occurrences),
        }
    }
}

/// `alert`'s process as one of those an alert stands for.
fn folded_process(alert: &Alert, count: u64) -> FoldedProcess {
    let process = alert.process.as_ref();
    let parent = process.and_then(|p| p.parents.first());
    FoldedProcess {
        pid: process.map_or(0, |p| p.pid),
        start_time: process.and_then(|p| p.start_time),
        parent_pid: parent.map_or(0, |p| p.pid),
        parent_comm: parent.map(|p| p.comm.clone()).unwrap_or_default(),
        count,
    }
}

/// The deduplicator. One per pipeline; not shared, so `&mut self`.
#[derive(Debug)]
pub struct Deduper {
    window: Duration,
    max_keys: usize,
    open: HashMap<Key, Window>,
    /// Keys in the order their windows opened, which is the order they close
    /// (one window length for all, and `now` does not go backwards).
    order: VecDeque<Key>,
    /// Re-emissions due but not yet collected by `flush`, and since when.
    due: Vec<Alert>,
    due_since: Option<Instant>,
}

impl Deduper {
    /// A deduplicator folding identical alerts within `window`, keeping at
    /// most `max_keys` windows open (at least one).
    pub fn new(window: Duration, max_keys: usize) -> Self {
        Deduper {
            window,
            max_keys: max_keys.max(1),
            open: HashMap::new(),
            order: VecDeque::new(),
            due: Vec::new(),
            due_since: None,
        }
    }

    /// Offers a freshly judged alert. Returns it (count 1, first and last
    /// seen set to its time) when it opens a window, `None` when an open
    /// window absorbs it. `now` is a monotonic instant supplied by the
    /// caller (testable); if it ever goes backwards, windows merely close
    /// late. A re-emission that becomes due here (a window that closed, or
    /// the oldest one closed early because `max_keys` are open) waits for
    /// the next `flush`, and [`Deduper::next_deadline`] says so.
    pub fn offer(&mut self, mut alert: Alert, now: Instant) -> Option<Alert> {
        self.close_until(now);
        let key = Key::of(&alert);
        let occurrences = alert.count.max(1);
        if let Some(open) = self.open.get_mut(&key) {
            absorb(&mut open.alert, &alert, occurrences);
            open.fold(&alert, occurrences);
            return None;
        }
        if self.open.len() >= self.max_keys {
            if let Some(oldest) = self.order.pop_front() {
                self.close(&oldest, now);
            }
        }
        alert.count = occurrences;
        if alert.first_seen.is_none() {
            alert.first_seen = alert.time;
        }
        if alert.last_seen.is_none() {
            alert.last_seen = alert.time;
        }
        let processes = vec![folded_process(&alert, occurrences)];
        self.open.insert(key.clone(), Window { alert: alert.clone(), closes: now + self.window, processes, more: 0 });
        self.order.push_back(key);
        Some(alert)
    }

    /// The alerts whose windows have closed by `now` and that absorbed
    /// later occurrences, plus any closed early, oldest first: each with the
    /// id it was first sent with and its total count.
    pub fn flush(&mut self, now: Instant) -> Vec<Alert> {
        self.close_until(now);
        self.due_since = None;
        std::mem::take(&mut self.due)
    }

    /// Closes every window, at shutdown: nothing counted is lost.
    pub fn flush_all(&mut self) -> Vec<Alert> {
        while let Some(key) = self.order.pop_front() {
            self.close(&key, Instant::now());
        }
        self.due_since = None;
        std::mem::take(&mut self.due)
    }

    /// When `flush` next has something to do, so the pipeline can sleep
    /// until then: now-or-earlier when a re-emission is already due, else
    /// when the oldest open window closes; `None` when nothing is open.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.due_since.or_else(|| self.order.front().and_then(|key| self.open.get(key)).map(|w| w.closes))
    }

    /// How many windows are open, for metrics and tests.
    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// Closes, oldest first, every window whose time is up.
    fn close_until(&mut self, now: Instant) {
        while let Some(key) = self.order.front() {
            if self.open.get(key).is_some_and(|w| w.closes > now) {
                break;
            }
            if let Some(key) = self.order.pop_front() {
                self.close(&key, now);
            }
        }
    }

    /// Ends one window; queues its alert again if it stands for more than
    /// the one occurrence already sent.
    fn close(&mut self, key: &Key, now: Instant) {
        let Some(mut window) = self.open.remove(key) else { return };
        if window.alert.count > 1 {
            window.alert.folded_processes = window.processes;
            window.alert.folded_processes_more = window.more;
            self.due.push(window.alert);
            self.due_since.get_or_insert(now);
        }
    }
}

/// Counts `occurrences` more of the window's alert, seen at `later.time`.
fn absorb(alert: &mut Alert, later: &Alert, occurrences: u64) {
    alert.count = alert.count.saturating_add(occurrences);
    let first = later.first_seen.or(later.time);
    let last = later.last_seen.or(later.time);
    let key = |t: &pbjson_types::Timestamp| (t.seconds, t.nanos);
    if let Some(first) = first {
        if alert.first_seen.as_ref().is_none_or(|seen| key(&first) < key(seen)) {
            alert.first_seen = Some(first);
        }
    }
    if let Some(last) = last {
        if alert.last_seen.as_ref().is_none_or(|seen| key(&last) > key(seen)) {
            alert.last_seen = Some(last);
        }
    }
}
