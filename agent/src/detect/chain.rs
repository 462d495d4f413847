//! The theft-then-use chain: a token read followed by an API-server connect
//! from the same container within a window. Raised once per read, so a pod
//! that reads once and polls the API for hours makes one chain alert.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// The default window between the read and the connect.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(600);
/// Containers remembered at most; the oldest reads are forgotten beyond.
const MAX_CONTAINERS: usize = 16_384;

/// The last token read of each container.
#[derive(Debug)]
pub struct ChainTracker {
    window: Duration,
    reads: HashMap<String, Read>,
}

#[derive(Debug)]
struct Read {
    at: Instant,
    alert_id: String,
    raised: bool,
}

impl ChainTracker {
    /// A tracker with the given window.
    pub fn new(window: Duration) -> Self {
        ChainTracker { window, reads: HashMap::new() }
    }

    /// Records a token read by `container` (its alert is `alert_id`). The
    /// first read of a chain not yet raised is kept: it is the one dedup
    /// lets through, so the chain names an alert the SIEM has.
    pub fn read(&mut self, container: &str, alert_id: &str, now: Instant) {
        if let Some(read) = self.reads.get(container) {
            if !read.raised && now.saturating_duration_since(read.at) <= self.window {
                return;
            }
        }
        if self.reads.len() >= MAX_CONTAINERS && !self.reads.contains_key(container) {
            self.reads.retain(|_, read| now.saturating_duration_since(read.at) < self.window);
            if self.reads.len() >= MAX_CONTAINERS {
                if let Some(oldest) = self.reads.iter().min_by_key(|(_, r)| r.at).map(|(k, _)| k.clone()) {
                    self.reads.remove(&oldest);
                }
            }
        }
        self.reads.insert(container.to_owned(), Read { at: now, alert_id: alert_id.to_owned(), raised: false });
    }

    /// A connect by `container`: the read's alert id when this completes a
    /// chain not yet raised.
    pub fn connect(&mut self, container: &str, now: Instant) -> Option<String> {
        let read = self.reads.get_mut(container)?;
        if read.raised || now.saturating_duration_since(read.at) > self.window {
            return None;
        }
        read.raised = true;
        Some(read.alert_id.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_then_connect_raises_once() {
        let start = Instant::now();
        let mut chains = ChainTracker::new(Duration::from_secs(600));
        assert_eq!(chains.connect("c1", start), None, "connect with no read");
        chains.read("c1", "a-1", start);
        chains.read("c1", "a-1b", start + Duration::from_secs(1));
        assert_eq!(chains.connect("c2", start), None, "another container");
        assert_eq!(chains.connect("c1", start + Duration::from_secs(5)), Some("a-1".to_owned()));
        assert_eq!(chains.connect("c1", start + Duration::from_secs(6)), None, "raised once");
        chains.read("c1", "a-2", start + Duration::from_secs(7));
        assert_eq!(chains.connect("c1", start + Duration::from_secs(8)), Some("a-2".to_owned()), "a new read");
    }

    #[test]
    fn the_window_closes() {
        let start = Instant::now();
        let mut chains = ChainTracker::new(Duration::from_secs(10));
        chains.read("c1", "a-1", start);
        assert_eq!(chains.connect("c1", start + Duration::from_secs(11)), None);
    }
}
