//! The matrix's report, the same markdown on stderr and in
//! `target/vmtest/report.md`: each VM's outcome and wall time, each eBPF
//! program's verifier figures per kernel (marked when near the limits), the
//! cases × kernels table, and libtest's own account of each failed case.

use std::fmt::Write as _;
use std::time::Duration;

use super::console::{Console, Outcome};
use super::qemu::Ending;
use crate::util;

/// Processed instructions past which a program is marked: half the
/// verifier's 1M limit, so growth is seen before a kernel refuses it.
const INSNS_WARN: u64 = 500_000;
/// Stack depth past which a program is marked: up to 6.12 the whole call
/// chain must fit in 512 bytes (`kernel/stack_depth.rs` in the agent).
const STACK_WARN: u64 = 448;
/// Lines of a failed kernel check's other output the report shows.
const CHECK_TAIL: usize = 20;
/// Kernel trouble lines (soft lockups, BUG, WARNING) the report shows per
/// kernel; the call traces are in the log.
const TROUBLE_SHOWN: usize = 3;
/// The mark on figures past those.
const WARN: &str = "⚠";

/// One kernel's run.
pub struct Run {
    /// `5.10`, `6.1`, `6.12`.
    pub label: &'static str,
    /// The Debian package of its kernel.
    pub package: String,
    /// How the VM ended.
    pub ending: Ending,
    /// The VM's wall time.
    pub wall: Duration,
    /// What its console said.
    pub console: Console,
    /// Where the whole console log is.
    pub log: String,
}

impl Run {
    /// What went wrong in this run; empty when it passed.
    pub fn problems(&self) -> Vec<String> {
        let console = &self.console;
        let mut problems = Vec::new();
        let mut note = |problem: String| problems.push(format!("{}: {problem}", self.label));
        if self.ending == Ending::TimedOut {
            note(format!("the VM timed out after {}", util::human(self.wall)));
        }
        if console.release.is_none() {
            note("/init never ran (no VMTEST-KERNEL line): see the log".to_owned());
        }
        match console.check_rc {
            Some(0) => {}
            Some(_) if console.check_killed => {
                note("kernel-check was killed: past its time limit (half the VM's), or out of memory".to_owned())
            }
            Some(1) => note("kernel-check exited 1: a core hook did not load".to_owned()),
            Some(rc) => note(format!("kernel-check exited {rc}: see its output")),
            None => note("kernel-check did not finish".to_owned()),
        }
        if !console.tests_started {
            note("the kernel_matrix test executable did not run".to_owned());
        } else if console.tests_rc != Some(0) {
            let rc = console.tests_rc.map_or("did not finish".to_owned(), |rc| format!("exited {rc}"));
            note(format!("the test executable {rc}"));
        }
        for (name, outcome) in &console.cases {
            if matches!(outcome, Outcome::Failed | Outcome::Unfinished) {
                note(format!("{name} {}", outcome.word()));
            }
        }
        problems
    }
}

/// A table's header: `first`, then a column per kernel.
fn header(first: &str, runs: &[Run]) -> String {
    let labels: String = runs.iter().map(|run| format!(" {} |", run.label)).collect();
    format!("| {first} |{labels}\n|---|{}\n", "---|".repeat(runs.len()))
}

/// The report as markdown.
pub fn markdown(runs: &[Run]) -> String {
    let mut out = String::from("# Kernel matrix\n\n");
    out.push_str("| kernel | release | package | ending | wall time | uptime at boot / check / tests (s) | kernel-check rc | tests rc |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    for run in runs {
        let console = &run.console;
        let uptime = |phase: &str| {
            console.uptimes.iter().find(|(p, _)| p == phase).map_or("—".to_owned(), |(_, seconds)| seconds.clone())
        };
        let ending = match (run.ending, console.done) {
            (Ending::TimedOut, _) => "TIMEOUT",
            (Ending::Exited, true) => "powered off",
            (Ending::Exited, false) => "ended early",
        };
        let rc = |rc: Option<i32>| rc.map_or("—".to_owned(), |rc| rc.to_string());
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ending} | {} | {} / {} / {} | {} | {} |",
            run.label,
            console.release.as_deref().unwrap_or("—"),
            run.package,
            util::human(run.wall),
            uptime("boot"),
            uptime("check"),
            uptime("tests"),
            rc(console.check_rc),
            rc(console.tests_rc),
        );
    }

    for run in runs.iter().filter(|run| !run.console.kernel_trouble.is_empty()) {
        let trouble = &run.console.kernel_trouble;
        let first: Vec<&str> = trouble.iter().take(TROUBLE_SHOWN).map(String::as_str).collect();
        let _ = writeln!(
            out,
            "\n{} kernel: {} line(s) of trouble on the console, the first:\n\n```\n{}\n```",
            run.label,
            trouble.len(),
            first.join("\n")
        );
    }

    out.push_str("\n## eBPF programs (kernel-check)\n\n");
    let _ = writeln!(
        out,
        "{WARN}: more than {INSNS_WARN} instructions processed, or a stack deeper than {STACK_WARN} bytes.\n"
    );
    out.push_str("Each cell: state, instructions the verifier processed / stack bytes (— where not known).\n\n");
    out.push_str(&header("program", runs));
    let mut programs: Vec<&str> = Vec::new();
    for run in runs {
        for program in &run.console.programs {
            if !programs.contains(&program.program.as_str()) {
                programs.push(&program.program);
            }
        }
    }
    for name in &programs {
        let _ = write!(out, "| {name} |");
        for run in runs {
            let cell = run.console.programs.iter().find(|program| program.program == *name).map_or_else(
                || "—".to_owned(),
                |program| {
                    let figure = |value: Option<u64>| value.map_or("—".to_owned(), |value| value.to_string());
                    let warn = program.verified_insns.is_some_and(|insns| insns > INSNS_WARN)
                        || program.stack_depth.is_some_and(|stack| stack > STACK_WARN);
                    let mark = if warn { format!(" {WARN}") } else { String::new() };
                    let figures = format!("{} / {}", figure(program.verified_insns), figure(program.stack_depth));
                    format!("{} {figures}{mark}", program.state)
                },
            );
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    if programs.is_empty() {
        out.push_str(&format!("| (no rows) |{}\n", " — |".repeat(runs.len())));
    }
    for run in runs.iter().filter(|run| run.console.check_rc != Some(0)) {
        let output = &run.console.check_output;
        if !output.is_empty() {
            let tail = &output[output.len().saturating_sub(CHECK_TAIL)..];
            let _ = writeln!(
                out,
                "\n### {}: kernel-check's other output (last lines)\n\n```\n{}\n```",
                run.label,
                tail.join("\n")
            );
        }
    }
    for run in runs {
        for program in run.console.programs.iter().filter(|program| program.error.is_some()) {
            let error = program.error.as_deref().unwrap_or_default();
            let _ = writeln!(
                out,
                "\n### {} {} ({})\n\n```\n{}\n```",
                run.label,
                program.program,
                program.state,
                error.trim_end()
            );
        }
    }

    out.push_str("\n## Test cases\n\n");
    out.push_str(&header("case", runs));
    let mut names: Vec<&str> = Vec::new();
    for run in runs {
        for (name, _) in &run.console.cases {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
    }
    for name in &names {
        let _ = write!(out, "| {name} |");
        for run in runs {
            let cell =
                run.console.cases.iter().find(|(case, _)| case == name).map_or("—", |(_, outcome)| outcome.word());
            let _ = write!(out, " {cell} |");
        }
        out.push('\n');
    }
    if names.is_empty() {
        out.push_str("| (no cases ran) |");
        out.push_str(&" — |".repeat(runs.len()));
        out.push('\n');
    }

    for run in runs {
        for (name, outcome) in &run.console.cases {
            if !matches!(outcome, Outcome::Failed | Outcome::Unfinished) {
                continue;
            }
            let _ = writeln!(out, "\n### {} on {}: {}\n", name, run.label, outcome.word());
            match run.console.failures.iter().find(|(failed, _)| failed == name) {
                Some((_, section)) => {
                    let _ = writeln!(out, "```\n{section}\n```");
                }
                None => {
                    let when = match (outcome, run.ending) {
                        (Outcome::Unfinished, Ending::TimedOut) => "it was running when the VM was killed; ",
                        (Outcome::Unfinished, Ending::Exited) => "it was running when the VM ended; ",
                        _ => "",
                    };
                    let log = &run.log;
                    let _ =
                        writeln!(out, "{when}libtest printed no failure section for it: the whole console is in {log}");
                }
            }
        }
    }

    let problems: Vec<String> = runs.iter().flat_map(Run::problems).collect();
    out.push_str("\n## Verdict\n\n");
    if problems.is_empty() {
        out.push_str("Every kernel loaded the core hooks and passed every case.\n");
    }
    for problem in &problems {
        let _ = writeln!(out, "- {problem}");
    }
    let logs: Vec<&str> = runs.iter().map(|run| run.log.as_str()).collect();
    let _ = writeln!(out, "\nConsole logs: {}", logs.join(", "));
    out
}
