//! One kind of use (token reads or API-server connects) and the times of
//! the inventory: what a book records and a merge combines, kept apart from
//! both so neither depends on the other.

use pbjson_types::Timestamp;
use tokenwatch_proto::v1::Usage;

/// Binaries remembered per kind of use.
pub const MAX_BINARIES: usize = 32;

/// Whether `a` is after `b`.
pub fn later(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

/// The earlier of two times.
pub fn min_time(a: Timestamp, b: Timestamp) -> Timestamp {
    if later(&a, &b) {
        b
    } else {
        a
    }
}

/// The later of two times.
pub fn max_time(a: Timestamp, b: Timestamp) -> Timestamp {
    if later(&a, &b) {
        a
    } else {
        b
    }
}

/// Adds `count` uses by `binary` at `time`.
pub fn add_use(usage: &mut Usage, count: u64, binary: &str, time: Timestamp) {
    usage.count = usage.count.saturating_add(count);
    add_binary(&mut usage.binaries, binary);
    usage.first_seen = Some(usage.first_seen.map_or(time, |t| min_time(t, time)));
    usage.last_seen = Some(usage.last_seen.map_or(time, |t| if later(&time, &t) { time } else { t }));
}

/// Inserts a binary into a sorted, bounded list.
pub fn add_binary(binaries: &mut Vec<String>, binary: &str) {
    if binary.is_empty() || binaries.len() >= MAX_BINARIES {
        return;
    }
    if let Err(at) = binaries.binary_search_by(|b| b.as_str().cmp(binary)) {
        binaries.insert(at, binary.to_owned());
    }
}
