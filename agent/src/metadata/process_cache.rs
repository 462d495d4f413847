//! What /proc said about a process, kept per program run so the events of a
//! busy process cost one /proc walk, not one each. A walk is some twenty
//! file reads (the process and every ancestor); at thousands of matched
//! events a second it was nearly all of the agent's CPU.
//!
//! The key is the kernel's: pid, process start time and exec generation,
//! all read in the kernel at the event. A reused pid has another start
//! time; an execve bumps the generation; so a cached entry is never
//! another program's. What is cached can still age (a parent that exits
//! after the first event stays named), which is what an alert about the
//! first event would have said anyway.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
};

use super::process::ProcessInfo;

/// How many program runs are remembered; the oldest is forgotten first.
pub const DEFAULT_CAPACITY: usize = 4096;

/// One program run of one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    /// Host pid.
    pub pid: u32,
    /// Start time of the process (boot clock, ns).
    pub start_ns: u64,
    /// Exec generation.
    pub exec_id: u32,
}

/// A bounded map from program run to what /proc said about it.
#[derive(Debug)]
pub struct ProcessCache {
    entries: HashMap<ProcessKey, Arc<ProcessInfo>>,
    order: VecDeque<ProcessKey>,
    capacity: usize,
}

impl ProcessCache {
    /// An empty cache of at most `capacity` runs.
    pub fn new(capacity: usize) -> Self {
        ProcessCache { entries: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    /// What is known of `key`, if anything.
    pub fn get(&self, key: &ProcessKey) -> Option<Arc<ProcessInfo>> {
        self.entries.get(key).cloned()
    }

    /// Remembers `info` for `key`, forgetting the oldest run when full. An
    /// empty walk (the process was already gone) is not remembered: a
    /// later event of the same run may still find it.
    pub fn insert(&mut self, key: ProcessKey, info: Arc<ProcessInfo>) {
        if info.exe.is_empty() && info.args.is_empty() {
            return;
        }
        if self.entries.insert(key, info).is_none() {
            self.order.push_back(key);
        }
        while self.entries.len() > self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            self.entries.remove(&oldest);
        }
    }

    /// How many runs are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pid: u32, start_ns: u64, exec_id: u32) -> ProcessKey {
        ProcessKey { pid, start_ns, exec_id }
    }

    fn info(exe: &str) -> Arc<ProcessInfo> {
        Arc::new(ProcessInfo { exe: exe.to_owned(), ..ProcessInfo::default() })
    }

    #[test]
    fn a_reused_pid_or_an_exec_is_another_entry() {
        let mut cache = ProcessCache::new(8);
        cache.insert(key(10, 100, 1), info("/bin/sh"));
        assert_eq!(cache.get(&key(10, 100, 1)).map(|i| i.exe.clone()).as_deref(), Some("/bin/sh"));
        assert!(cache.get(&key(10, 200, 1)).is_none(), "same pid, later start: another process");
        assert!(cache.get(&key(10, 100, 2)).is_none(), "same process after execve: another program");
    }

    #[test]
    fn forgets_the_oldest_when_full() {
        let mut cache = ProcessCache::new(2);
        cache.insert(key(1, 1, 0), info("/a"));
        cache.insert(key(2, 2, 0), info("/b"));
        cache.insert(key(3, 3, 0), info("/c"));
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&key(1, 1, 0)).is_none());
        assert!(cache.get(&key(3, 3, 0)).is_some());
    }

    #[test]
    fn a_vanished_process_is_not_remembered() {
        let mut cache = ProcessCache::new(2);
        cache.insert(key(1, 1, 0), Arc::new(ProcessInfo::default()));
        assert!(cache.is_empty());
    }
}
