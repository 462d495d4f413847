//! The benchmark's table, JSON and BENCHMARKS.md, with each target said met
//! or not.

use std::fmt::Write;

use super::{
    configs::Config,
    load::{LoadFigures, RateStep},
    memory::MemoryFigures,
    new_volumes::VolumeWatch,
    ops::Op,
    verdicts, Cell, Profile,
};

/// Where the time goes and what was done about it: hand-written, kept
/// beside the code that measures it, appended to BENCHMARKS.md.
const ANALYSIS: &str = include_str!("analysis.md");

/// The measurements, ready to print.
pub struct Report<'a> {
    /// The cost per operation, per configuration.
    pub cells: &'a [Cell],
    /// How many interleaved rounds measured them.
    pub repeats: usize,
    /// The kernel programs' cost, from the statistics pass.
    pub profiles: &'a [Profile],
    /// Latency, throughput, CPU and memory under load.
    pub load: &'a LoadFigures,
    /// Idle memory with and without pods cached.
    pub memory: &'a MemoryFigures,
    /// How soon new token volumes are watched.
    pub volumes: &'a VolumeWatch,
}

impl Report<'_> {
    /// Alert latency and the throughput steps.
    pub fn load_tables(&self) -> String {
        let mut out = String::from(
            "| alerts/s offered | opens | alerts received | p50 | p99 | max |\n|---|---|---|---|---|---|\n",
        );
        for l in &self.load.latency {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {:.2} ms | {:.2} ms | {:.2} ms |",
                l.rate,
                l.sent,
                l.received,
                l.p50_us / 1e3,
                l.p99_us / 1e3,
                l.max_us / 1e3
            );
        }
        let _ = writeln!(
            out,
            "\nThe throughput steps' load came from {} processes at once, each pacing its share.",
            self.load.load_processes
        );
        out.push_str(
            "\n| matched events/s offered | achieved | delivered to the agent | dropped (counted) | agent CPU s per \
             million events | agent RSS peak |\n|---|---|---|---|---|---|\n",
        );
        for step in &self.load.steps {
            let offered = if step.offered == 0 { "flat out".to_owned() } else { step.offered.to_string() };
            let _ = writeln!(
                out,
                "| {offered} | {:.0} | {} | {} | {:.2} | {:.1} MiB |",
                step.achieved,
                step.sent,
                step.dropped,
                step.cpu_s_per_million,
                step.rss_max_kib as f64 / 1024.0
            );
        }
        let v = self.volumes;
        let scan = v.scan_ms.map_or_else(
            || "not every volume was found by a scan".to_owned(),
            |(p50, p99, max)| format!("p50 {p50:.0} ms, p99 {p99:.0} ms, max {max:.0} ms"),
        );
        let _ = writeln!(
            out,
            "\nNew token volumes ({} in a burst, 20 a second, each in a mount namespace of its own, read at once): \
             {} first reads alerted by the kernel's match of the layout; from each mount to the scan's exact-file \
             watch (`watching token file`, default 2 s interval): {scan}.",
            v.volumes, v.first_reads_alerted
        );
        let _ = writeln!(
            out,
            "\nIdle agent RSS (standalone, before the steps): {:.1} MiB.",
            self.load.idle_rss_kib as f64 / 1024.0
        );
        let m = self.memory;
        let _ = writeln!(
            out,
            "\n| idle agent | RSS | peak RSS |\n|---|---|---|\n| standalone | {:.1} MiB | |\n| {} pods of its node \
             cached ({} listed by the agent, {} owner lookups) | {:.1} MiB | {:.1} MiB |\n\nMeasured in {:.0} s.",
            m.idle_standalone_kib as f64 / 1024.0,
            m.pods,
            m.pods_seen_by_agent,
            m.owner_lookups,
            m.idle_with_pods_kib as f64 / 1024.0,
            m.peak_with_pods_kib as f64 / 1024.0,
            m.took.as_secs_f64()
        );
        out
    }

    /// The busiest step without a drop whose load achieved what it offered
    /// (to 1%: the pacing falls a slice short at the end of a step): the
    /// agent's ceiling as far as the steps show it.
    fn busiest_drop_free_step(&self) -> Option<&RateStep> {
        self.load
            .steps
            .iter()
            .filter(|s| s.dropped == 0 && s.achieved >= 0.99 * f64::from(s.offered))
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }

    /// The rate of [`Self::busiest_drop_free_step`]: what it offered, or
    /// what the load achieved flat out.
    fn drop_free_rate(&self) -> f64 {
        self.busiest_drop_free_step().map_or(0.0, |s| if s.offered == 0 { s.achieved } else { f64::from(s.offered) })
    }

    /// The load targets, each met or not.
    fn load_targets(&self) -> Vec<(String, bool)> {
        let mut verdicts = Vec::new();
        for (rate, limit_ms) in [(100, 5.0), (10_000, 50.0)] {
            if let Some(l) = self.load.latency.iter().find(|l| l.rate == rate) {
                let complete = l.received as u64 >= l.sent;
                verdicts.push((
                    format!(
                        "alert latency at {rate}/s: p99 {:.2} ms, {} of {} alerts received (target: p99 under \
                         {limit_ms} ms, all received)",
                        l.p99_us / 1e3,
                        l.received,
                        l.sent
                    ),
                    l.p99_us / 1e3 < limit_ms && complete,
                ));
            }
        }
        let v = self.volumes;
        verdicts.push((
            format!(
                "new token volumes: {} of {} first reads, made the moment each volume was written, alerted \
                 (target: every one)",
                v.first_reads_alerted, v.volumes
            ),
            v.first_reads_alerted >= v.volumes as u64,
        ));
        let m = self.memory;
        verdicts.push((
            format!(
                "idle RSS with {} pods cached: {:.1} MiB (target: under 64 MiB)",
                m.pods,
                m.idle_with_pods_kib as f64 / 1024.0
            ),
            m.idle_with_pods_kib < 64 * 1024 && m.pods_seen_by_agent == m.pods,
        ));
        let rate = self.drop_free_rate();
        verdicts.push((
            format!(
                "highest matched-event rate without a drop, offered from {} processes: {rate:.0}/s (target: at \
                 least 200,000/s)",
                self.load.load_processes
            ),
            rate >= 200_000.0,
        ));
        // The agent's CPU at that rate (the busiest step it kept up with).
        if let Some(step) = self.busiest_drop_free_step() {
            verdicts.push((
                format!(
                    "agent CPU at {:.0} matched events/s, no drop: {:.2} s per million events (target: under 4)",
                    step.achieved, step.cpu_s_per_million
                ),
                step.cpu_s_per_million < 4.0,
            ));
        }
        verdicts
    }

    /// Per operation and configuration, what each program cost.
    pub fn profile_table(&self) -> String {
        let mut out = String::from(
            "| operation | configuration | program | runs/op | ns/run | ns/op |\n|---|---|---|---|---|---|\n",
        );
        for op in Op::ALL {
            for profile in self.profiles {
                let Some((_, costs)) = profile.ops.iter().find(|(o, _)| *o == op) else { continue };
                if costs.is_empty() {
                    let _ = writeln!(out, "| {} | {} | (none ran) | | | |", op.name(), profile.config.name());
                }
                for cost in costs {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {:.2} | {:.0} | {:.0} |",
                        op.name(),
                        profile.config.name(),
                        cost.name,
                        cost.runs_per_op,
                        cost.ns_per_run,
                        cost.runs_per_op * cost.ns_per_run
                    );
                }
            }
        }
        out
    }

    /// The per-operation table: median ns (min..max), added ns, ratio.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| operation | configuration | ns/op median (min..max) | added ns/op | ratio to baseline |\n|---|---|---|---|---|"
        );
        for op in Op::ALL {
            for config in Config::ALL {
                let (Some(cell), Some(base)) =
                    (verdicts::cell(self.cells, config, op), verdicts::cell(self.cells, Config::Baseline, op))
                else {
                    continue;
                };
                let (min, max) = cell.range();
                let added = cell.median() - base.median();
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} ({:.0}..{:.0}) | {:+.0} | {:.2} |",
                    op.name(),
                    config.name(),
                    cell.median(),
                    min,
                    max,
                    added,
                    cell.median() / base.median()
                );
            }
        }
        out
    }

    /// Every cell as JSON.
    pub fn json(&self) -> String {
        let rows: Vec<String> = self
            .cells
            .iter()
            .map(|c| {
                let (min, max) = c.range();
                format!(
                    "{{\"configuration\":\"{}\",\"operation\":\"{}\",\"median_ns\":{:.1},\"min_ns\":{:.1},\"max_ns\":{:.1},\"added_ns\":{:.1}}}",
                    c.config.name(),
                    c.op.name(),
                    c.median(),
                    min,
                    max,
                    verdicts::added(self.cells, c.config, c.op).unwrap_or(0.0)
                )
            })
            .collect();
        format!("[\n  {}\n]\n", rows.join(",\n  "))
    }

    /// BENCHMARKS.md.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "# Benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand). Every configuration is started \
             in turn within each repeat (A/B interleaved), and every figure is the median over the repeats, with \
             min and max. The machine is shared and noisy: compare configurations within this one run, not across \
             runs.\n\n## Cost per operation\n\n",
        );
        let _ = writeln!(out, "{} repeats.\n", self.repeats);
        out.push_str(&self.table());
        out.push_str("\n## Targets\n\n");
        for (what, met) in verdicts::unwatched(self.cells, self.profiles)
            .into_iter()
            .chain(verdicts::matched(self.profiles))
            .chain(self.load_targets())
        {
            let _ = writeln!(out, "- {} {what}", if met { "**met**:" } else { "**missed**:" });
        }
        out.push_str(
            "\n## Where the kernel time goes\n\nA separate pass with the kernel's BPF run-time statistics on \
             (`kernel.bpf_stats_enabled`, which adds a clock read to every run, so these ns are a little high): \
             every program of the configuration that ran at least once per 100 operations, its runs per \
             operation and ns per run. The dispatch into a hook (a tracepoint's record, a cgroup program's socket \
             lock and walk of the programs) is not part of a program's run time: the floor row of the table \
             above adds it, with the empty programs' own run.\n\n",
        );
        out.push_str(&self.profile_table());
        out.push_str(
            "\n## Under load\n\nAlert latency: from the open's kernel timestamp to a `tokenwatch alerts \
             --follow` subscriber printing the alert (repeats not merged, so every open is an alert). \
             Throughput: token-file opens at each offered rate for 3 s, from one process per CPU, with the agent as \
             shipped (repeats merged); delivered and dropped are the kernel's counters, CPU is the agent's \
             user+system time until it has worked the step off.\n\n",
        );
        out.push_str(&self.load_tables());
        out.push('\n');
        out.push_str(ANALYSIS);
        out
    }
}
