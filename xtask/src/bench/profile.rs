//! Where the kernel-side time goes: with the kernel's BPF run-time
//! statistics on (`kernel.bpf_stats_enabled`), the run count and total run
//! time of every program a configuration loaded, read with `bpftool` before
//! and after an operation's loop. The statistics add a clock read around
//! each program run, so this is a separate pass from the timed rounds.

use std::{fs, process::Command};

use anyhow::{bail, Context, Result};

/// Where the statistics switch lives.
const STATS_SWITCH: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// One program's counters at one moment.
#[derive(Clone, Debug)]
pub struct ProgramStats {
    /// Its id (stable while loaded).
    pub id: u32,
    /// Its name, as the object named it (bpftool shows up to 15 bytes).
    pub name: String,
    /// Total ns spent in it since the statistics were switched on.
    pub run_time_ns: u64,
    /// Times it ran.
    pub run_cnt: u64,
}

/// What one program cost one operation.
#[derive(Clone, Debug)]
pub struct ProgramCost {
    /// The program.
    pub name: String,
    /// Runs per operation.
    pub runs_per_op: f64,
    /// ns per run.
    pub ns_per_run: f64,
}

/// Turns the statistics on for its lifetime, restoring the previous value.
pub struct StatsOn {
    previous: String,
}

impl StatsOn {
    /// Switches the statistics on.
    pub fn new() -> Result<Self> {
        let previous = fs::read_to_string(STATS_SWITCH).with_context(|| format!("reading {STATS_SWITCH}"))?;
        fs::write(STATS_SWITCH, "1").with_context(|| format!("writing {STATS_SWITCH}"))?;
        Ok(StatsOn { previous: previous.trim().to_owned() })
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = fs::write(STATS_SWITCH, &self.previous);
    }
}

/// Every loaded program, now.
pub fn snapshot() -> Result<Vec<ProgramStats>> {
    let output = Command::new("bpftool").args(["prog", "show"]).output().context("running bpftool prog show")?;
    if !output.status.success() {
        bail!("bpftool prog show failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(parse(&String::from_utf8_lossy(&output.stdout)))
}

/// The ids in `after` that are not in `before`: the programs a
/// configuration loaded. (Which process holds a program is not a reliable
/// test: bpftrace keeps its programs alive through perf events alone.)
pub fn new_ids(before: &[ProgramStats], after: &[ProgramStats]) -> Vec<u32> {
    after.iter().map(|p| p.id).filter(|id| !before.iter().any(|b| b.id == *id)).collect()
}

/// Parses `bpftool prog show`'s text: a block per program whose first
/// line is `ID: type  name NAME ... run_time_ns N run_cnt N`.
fn parse(text: &str) -> Vec<ProgramStats> {
    text.lines()
        .filter_map(|line| {
            let (id, rest) = line.split_once(':')?;
            let id: u32 = id.parse().ok()?;
            let words: Vec<&str> = rest.split_whitespace().collect();
            let after = |key: &str| words.iter().position(|w| *w == key).and_then(|i| words.get(i + 1)).copied();
            let number = |key: &str| after(key).and_then(|v| v.parse().ok()).unwrap_or(0);
            Some(ProgramStats {
                id,
                name: after("name").unwrap_or("?").to_owned(),
                run_time_ns: number("run_time_ns"),
                run_cnt: number("run_cnt"),
            })
        })
        .collect()
}

/// What each program that ran cost per operation between `before` and
/// `after`, over `ops` operations; the busiest first.
pub fn costs(ids: &[u32], before: &[ProgramStats], after: &[ProgramStats], ops: u32) -> Vec<ProgramCost> {
    let mut costs: Vec<ProgramCost> = after
        .iter()
        .filter(|a| ids.contains(&a.id))
        .filter_map(|a| {
            let b = before.iter().find(|b| b.id == a.id)?;
            let runs = a.run_cnt.checked_sub(b.run_cnt).filter(|r| *r > 0)?;
            let time = a.run_time_ns.saturating_sub(b.run_time_ns);
            Some(ProgramCost {
                name: a.name.clone(),
                runs_per_op: runs as f64 / f64::from(ops),
                ns_per_run: time as f64 / runs as f64,
            })
        })
        // Programs that ran less than once per 100 operations are other
        // processes' doing (a context switch), not the operation's.
        .filter(|c| c.runs_per_op >= 0.01)
        .collect();
    costs.sort_by(|x, y| (y.runs_per_op * y.ns_per_run).total_cmp(&(x.runs_per_op * x.ns_per_run)));
    costs
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
13931: tracepoint  name sys_exit_openat  tag 1bb9a9a84687f99b  gpl run_time_ns 2531089 run_cnt 4107
\tloaded_at 2026-11-29T12:54:51+0000  uid 0
\txlated 1234B  jited 789B  memlock 4096B  map_ids 1,2
13948: tracepoint  name sys_exit_openat  tag b11459a0e11ca14c  gpl run_time_ns 12672677 run_cnt 203833
13950: cgroup_sock_addr  name connect4  tag 6bc1233e64e24717  gpl
";

    #[test]
    fn reads_every_program_and_its_counters() {
        let programs: Vec<(u32, String, u64, u64)> =
            parse(SAMPLE).into_iter().map(|p| (p.id, p.name, p.run_time_ns, p.run_cnt)).collect();
        assert_eq!(
            programs,
            [
                (13931, "sys_exit_openat".to_owned(), 2531089, 4107),
                (13948, "sys_exit_openat".to_owned(), 12672677, 203833),
                (13950, "connect4".to_owned(), 0, 0)
            ]
        );
    }

    #[test]
    fn costs_are_per_operation_and_per_run_of_the_configurations_programs() {
        let before = parse(SAMPLE);
        let mut after = before.clone();
        after[0].run_cnt += 2000;
        after[0].run_time_ns += 1_000_000;
        after[1].run_cnt += 5000;
        assert_eq!(new_ids(&before[..1], &before), [13948, 13950]);
        let costs = costs(&[13931], &before, &after, 1000);
        assert_eq!(costs.len(), 1);
        assert_eq!(costs[0].name, "sys_exit_openat");
        assert!((costs[0].runs_per_op - 2.0).abs() < 1e-9);
        assert!((costs[0].ns_per_run - 500.0).abs() < 1e-9);
    }
}
