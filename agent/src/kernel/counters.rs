//! The kernel programs' per-CPU counters as the agent reads them: per hook,
//! per CPU, so a drop can be traced to the hook and the CPU that lost it.

use aya::maps::{MapData, MapError, PerCpuArray};
use tokenwatch_common::{counter_slot, Counter, Hook};

use crate::metrics::{family, Kind, Scrape};

/// The programs' `COUNTERS` map, taken from the loaded object so the
/// shutdown summary and every metrics scrape read the same map.
pub struct CounterMap {
    array: PerCpuArray<MapData, u64>,
}

impl CounterMap {
    /// Wraps the taken map.
    pub fn new(array: PerCpuArray<MapData, u64>) -> Self {
        CounterMap { array }
    }

    /// Every counter of every hook, per CPU, as the kernel has it now.
    pub fn read(&self) -> Result<KernelCounters, MapError> {
        let mut readings = Vec::with_capacity(Hook::ALL.len() * Counter::ALL.len());
        for hook in Hook::ALL {
            for counter in Counter::ALL {
                let values = self.array.get(&counter_slot(hook, counter), 0)?;
                readings.push(CounterReading { hook, counter, per_cpu: values.iter().copied().collect() });
            }
        }
        Ok(KernelCounters { readings })
    }

    /// The counters for Prometheus: per hook and stage, and drops per CPU
    /// (non-zero CPUs only). A map that cannot be read leaves the families
    /// declared and empty.
    pub fn expose(&self, out: &mut Scrape<'_>) -> std::fmt::Result {
        let counters = self.read().unwrap_or_default();
        let stages = counters.readings.iter().filter_map(|reading| {
            let is_connect = matches!(reading.hook, Hook::Connect | Hook::CgroupConnect);
            let stage = match reading.counter {
                Counter::OpensSeen if !is_connect => "seen",
                Counter::ConnectsSeen if is_connect => "seen",
                Counter::OpensMatched if !is_connect => "matched",
                Counter::ConnectsMatched if is_connect => "matched",
                Counter::EventsSent => "sent",
                Counter::EventsDropped => "dropped",
                Counter::EntriesMissing => "entry_missing",
                _ => return None,
            };
            Some(([("hook", reading.hook.name()), ("stage", stage)], reading.total()))
        });
        family(
            out,
            "tokenwatch_kernel_events_total",
            Kind::Counter,
            "Kernel hook calls by stage: seen, matched, sent, dropped, entry_missing.",
            stages,
        )?;
        let drops = counters.readings.iter().filter(|r| r.counter == Counter::EventsDropped).flat_map(|reading| {
            let per_cpu = reading.per_cpu.iter().enumerate().filter(|(_, &count)| count > 0);
            per_cpu.map(|(cpu, &count)| ([("hook", reading.hook.name().to_owned()), ("cpu", cpu.to_string())], count))
        });
        family(
            out,
            "tokenwatch_kernel_dropped_per_cpu_total",
            Kind::Counter,
            "Matched events lost to a full ring buffer, by hook and CPU.",
            drops,
        )
    }
}

/// One counter of one hook, per CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CounterReading {
    /// The hook whose row this is.
    pub hook: Hook,
    /// Which counter.
    pub counter: Counter,
    /// The value on each possible CPU, in CPU order.
    pub per_cpu: Vec<u64>,
}

impl CounterReading {
    /// The sum over CPUs.
    pub fn total(&self) -> u64 {
        self.per_cpu.iter().sum()
    }
}

/// A snapshot of every counter of every hook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// One reading per (hook, counter), hooks in index order.
    pub readings: Vec<CounterReading>,
}

impl KernelCounters {
    /// `counter` summed over every hook and CPU.
    pub fn total(&self, counter: Counter) -> u64 {
        self.readings.iter().filter(|r| r.counter == counter).map(CounterReading::total).sum()
    }

    /// `counter=total` for each counter, then `hook.counter=total` for each
    /// non-zero reading: one log line that answers "what did the kernel see".
    pub fn summary(&self) -> String {
        let totals = Counter::ALL.iter().map(|&c| format!("{}={}", c.name(), self.total(c)));
        let per_hook = self
            .readings
            .iter()
            .filter(|r| r.total() != 0)
            .map(|r| format!("{}.{}={}", r.hook.name(), r.counter.name(), r.total()));
        totals.chain(per_hook).collect::<Vec<_>>().join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_over_hooks_and_cpus_and_the_summary_names_nonzero_rows() {
        let counters = KernelCounters {
            readings: vec![
                CounterReading { hook: Hook::Openat, counter: Counter::EventsDropped, per_cpu: vec![2, 3] },
                CounterReading { hook: Hook::Connect, counter: Counter::EventsDropped, per_cpu: vec![0, 1] },
                CounterReading { hook: Hook::Open, counter: Counter::EventsSent, per_cpu: vec![0, 0] },
            ],
        };
        assert_eq!(counters.total(Counter::EventsDropped), 6);
        let summary = counters.summary();
        assert!(summary.starts_with("opens_seen=0 "), "{summary}");
        assert!(summary.contains(" events_dropped=6 "), "{summary}");
        assert!(summary.ends_with("openat.events_dropped=5 connect.events_dropped=1"), "{summary}");
    }
}
