//! The verdicts on the cost per operation: what tokenwatch adds to an
//! operation it does not watch, against the floor, bpftrace and auditd,
//! and its programs' run time on an operation it does watch.

use super::{configs::Config, ops::Op, Cell, Profile};

/// The cell of one configuration and operation.
pub fn cell(cells: &[Cell], config: Config, op: Op) -> Option<&Cell> {
    cells.iter().find(|c| c.config == config && c.op == op)
}

/// Added ns per operation over the baseline (medians).
pub fn added(cells: &[Cell], config: Config, op: Op) -> Option<f64> {
    Some(cell(cells, config, op)?.median() - cell(cells, Config::Baseline, op)?.median())
}

/// A configuration's programs' run time per operation (the statistics
/// pass: every program that ran), if the pass measured it.
fn program_ns(profiles: &[Profile], config: Config, op: Op) -> Option<f64> {
    let profile = profiles.iter().find(|p| p.config == config)?;
    let (_, costs) = profile.ops.iter().find(|(o, _)| *o == op)?;
    Some(costs.iter().map(|c| c.runs_per_op * c.ns_per_run).sum())
}

/// Whether two configurations' repeats of `op` overlap (min..max): a gap
/// between their medians is then not told apart from noise.
fn spreads_overlap(cells: &[Cell], a: Config, b: Config, op: Op) -> bool {
    let (Some(a), Some(b)) = (cell(cells, a, op), cell(cells, b, op)) else { return false };
    let ((a_min, a_max), (b_min, b_max)) = (a.range(), b.range());
    a_min <= b_max && b_min <= a_max
}

/// The targets on operations tokenwatch does not watch, each met or not.
/// The timed figures of an operation this short sit within the machine's
/// noise (repeats of one configuration differ by more than the gap
/// judged), so the floor target is also judged by the statistics pass,
/// which is not: on the same hooks the dispatch costs the same, so what
/// tokenwatch adds beyond the floor is its programs' run time beyond the
/// empty programs'. Met only when both say so.
pub fn unwatched(cells: &[Cell], profiles: &[Profile]) -> Vec<(String, bool)> {
    let mut verdicts = Vec::new();
    // A TCP connect's figures are noise at this scale (`Op::ConnectUdp`
    // says why); the UDP one passes the same hooks.
    for op in [Op::OpenPlain, Op::ConnectUdp] {
        let (Some(ours), Some(floor), Some(bpftrace), Some(auditd)) = (
            added(cells, Config::Tokenwatch, op),
            added(cells, Config::Floor, op),
            added(cells, Config::Bpftrace, op),
            added(cells, Config::Auditd, op),
        ) else {
            continue;
        };
        // Added costs can come out at or below zero when the operation
        // dwarfs them (a loopback connect): judge against at least 1 ns.
        let floor_judged = floor.max(1.0);
        let beyond_floor = program_ns(profiles, Config::Tokenwatch, op).zip(program_ns(profiles, Config::Floor, op));
        let (programs, programs_met) = match beyond_floor {
            Some((ours, empty)) => (
                format!(
                    "; by program run time tokenwatch adds {:.0} ns more than the floor, {:.0}% of what the floor \
                     adds",
                    ours - empty,
                    (ours - empty) / floor_judged * 100.0
                ),
                ours - empty <= 0.25 * floor_judged,
            ),
            None => (String::new(), true),
        };
        verdicts.push((
            format!(
                "{}: tokenwatch adds {ours:.0} ns, the floor {floor:.0} ns{programs} (target: at most 1.25 times the \
                 floor, timed and by program run time)",
                op.name()
            ),
            ours <= 1.25 * floor_judged && programs_met,
        ));
        let overlap: Vec<&str> = [Config::Bpftrace, Config::Auditd]
            .into_iter()
            .filter(|other| spreads_overlap(cells, Config::Tokenwatch, *other, op))
            .map(Config::name)
            .collect();
        let noise = if overlap.is_empty() {
            String::new()
        } else {
            format!("; the repeats' spread overlaps {}'s", overlap.join(" and "))
        };
        verdicts.push((
            format!(
                "{}: tokenwatch adds {ours:.0} ns, bpftrace {bpftrace:.0} ns, auditd {auditd:.0} ns{noise} (target: \
                 below both)",
                op.name()
            ),
            ours < bpftrace.max(1.0) && ours < auditd.max(1.0),
        ));
    }
    verdicts
}

/// tokenwatch's programs' run time per matched operation (every program
/// that ran, from the statistics pass), against its target.
pub fn matched(profiles: &[Profile]) -> Vec<(String, bool)> {
    let mut verdicts = Vec::new();
    for (op, limit_ns) in [(Op::OpenToken, 2_000.0), (Op::ConnectApi, 3_000.0)] {
        let Some(ns) = program_ns(profiles, Config::Tokenwatch, op) else { continue };
        verdicts.push((
            format!(
                "{}: tokenwatch's programs run {ns:.0} ns per operation (target: under {limit_ns:.0} ns)",
                op.name()
            ),
            ns < limit_ns,
        ));
    }
    verdicts
}

#[cfg(test)]
mod tests {
    use super::{super::profile::ProgramCost, *};

    fn cells(op: Op, rows: &[(Config, [f64; 3])]) -> Vec<Cell> {
        rows.iter().map(|(config, ns)| Cell { config: *config, op, ns: ns.to_vec() }).collect()
    }

    fn profile(config: Config, op: Op, ns_per_run: f64) -> Profile {
        Profile { config, ops: vec![(op, vec![ProgramCost { name: "p".into(), runs_per_op: 1.0, ns_per_run }])] }
    }

    /// Timed: tokenwatch +110, the floor +100 (1.1 times), bpftrace +150,
    /// auditd +200, each repeat within 20 ns of its median.
    fn timed() -> Vec<Cell> {
        cells(
            Op::OpenPlain,
            &[
                (Config::Baseline, [600.0, 590.0, 610.0]),
                (Config::Floor, [700.0, 690.0, 710.0]),
                (Config::Tokenwatch, [710.0, 700.0, 720.0]),
                (Config::Bpftrace, [750.0, 740.0, 760.0]),
                (Config::Auditd, [800.0, 780.0, 820.0]),
            ],
        )
    }

    #[test]
    fn the_floor_target_needs_the_program_run_time_to_agree() {
        let near = [profile(Config::Tokenwatch, Op::OpenPlain, 50.0), profile(Config::Floor, Op::OpenPlain, 30.0)];
        let verdicts = unwatched(&timed(), &near);
        assert!(verdicts[0].1, "20 ns beyond the floor's programs is within a quarter of its 100: {verdicts:?}");
        assert!(verdicts[0].0.contains("20 ns more than the floor, 20%"), "{}", verdicts[0].0);

        let far = [profile(Config::Tokenwatch, Op::OpenPlain, 80.0), profile(Config::Floor, Op::OpenPlain, 30.0)];
        let verdicts = unwatched(&timed(), &far);
        assert!(!verdicts[0].1, "timed within 1.25 times, but 50 ns beyond the floor's programs is not: {verdicts:?}");
    }

    #[test]
    fn a_gap_within_the_spread_is_said_to_be() {
        let verdicts = unwatched(&timed(), &[]);
        assert!(verdicts[1].1, "below bpftrace and auditd: {verdicts:?}");
        assert!(!verdicts[1].0.contains("overlaps"), "their spreads do not meet: {}", verdicts[1].0);
        let mut close = timed();
        close[3].ns = vec![715.0, 705.0, 760.0];
        let verdicts = unwatched(&close, &[]);
        assert!(verdicts[1].0.contains("overlaps bpftrace's"), "{}", verdicts[1].0);
    }

    #[test]
    fn matched_operations_are_judged_by_every_program_that_ran() {
        let profiles = [Profile {
            config: Config::Tokenwatch,
            ops: vec![(
                Op::ConnectApi,
                vec![
                    ProgramCost { name: "a".into(), runs_per_op: 1.0, ns_per_run: 2_000.0 },
                    ProgramCost { name: "b".into(), runs_per_op: 0.5, ns_per_run: 2_400.0 },
                ],
            )],
        }];
        let verdicts = matched(&profiles);
        assert_eq!(verdicts.len(), 1);
        assert!(!verdicts[0].1, "2,000 + 1,200 ns is over 3,000: {verdicts:?}");
    }
}
