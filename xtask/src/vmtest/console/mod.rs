//! Reading a VM's serial console log: the kernel release, the rows of
//! `tokenwatch kernel-check` (one JSON object per program), and libtest's
//! report of the kernel test cases, each between the markers /init prints
//! (init.sh). Lines end in `\r\n` on a serial console; output of programs the
//! tests start may land between `test <name> ... ` and its result.

use std::collections::BTreeSet;

use serde_json::Value;

/// One eBPF program as the kernel check reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The program's name (`sys_exit_openat`).
    pub program: String,
    /// `loaded`, `refused` or `absent`.
    pub state: String,
    /// Instructions the verifier processed, when it said.
    pub verified_insns: Option<u64>,
    /// The program's stack depth, when known.
    pub stack_depth: Option<u64>,
    /// The verifier's last lines for a refused program.
    pub error: Option<String>,
}

/// What became of one test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `ok`.
    Ok,
    /// `FAILED`.
    Failed,
    /// `ignored` (even with --include-ignored, e.g. a filtered bench).
    Ignored,
    /// Started, with no result before the console ended (a hang, a panic).
    Unfinished,
}

impl Outcome {
    /// The word in the report's table.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "FAILED",
            Outcome::Ignored => "ignored",
            Outcome::Unfinished => "unfinished",
        }
    }
}

/// Everything read from one console log.
#[derive(Debug, Default, Clone)]
pub struct Console {
    /// `uname -r` in the VM: /init got as far as its first line.
    pub release: Option<String>,
    /// The kernel check's rows.
    pub programs: Vec<Program>,
    /// The kernel check's exit code, if it finished.
    pub check_rc: Option<i32>,
    /// Whether the kernel check was killed (SIGKILL: past its time limit,
    /// or out of memory).
    pub check_killed: bool,
    /// The kernel check's other lines (its log, a usage error), to show when
    /// it fails.
    pub check_output: Vec<String>,
    /// Whether the test executable was started.
    pub tests_started: bool,
    /// The test executable's exit code, if it finished.
    pub tests_rc: Option<i32>,
    /// Each case's outcome, in the order they ran.
    pub cases: Vec<(String, Outcome)>,
    /// libtest's `---- <name> stdout ----` sections, by name.
    pub failures: Vec<(String, String)>,
    /// Seconds since boot at each phase's end (`boot`, `check`, `tests`).
    pub uptimes: Vec<(String, String)>,
    /// Whether /init got to its end.
    pub done: bool,
    /// Kernel lines that say something went wrong in it (soft lockups,
    /// BUG, WARNING, Oops, OOM), as the console showed them live.
    pub kernel_trouble: Vec<String>,
}

/// What a kernel line says when something went wrong in the kernel.
const TROUBLE: [&str; 7] =
    ["BUG: ", "WARNING: ", "Oops", "Kernel panic", "blocked for more than", "Out of memory", "general protection"];

/// Which part of the console a line is in.
#[derive(PartialEq, Eq)]
enum Part {
    /// Boot, or between sections.
    Outside,
    /// Between `VMTEST-CHECK-BEGIN` and `-END`.
    Check,
    /// Between `VMTEST-TESTS-BEGIN` and `-END`.
    Tests,
    /// The dmesg printed at the end.
    Dmesg,
}

/// Read a console log.
pub fn parse(log: &str) -> Console {
    let mut console = Console::default();
    let mut part = Part::Outside;
    let mut pending: Option<String> = None;
    let mut section: Option<(String, Vec<&str>)> = None;
    let mut failure_list = false;
    let mut failed = BTreeSet::new();
    let log = strip_ansi(log);
    for line in log.lines().map(|line| line.trim_end_matches('\r')) {
        let message = kernel_message(line).filter(|_| part != Part::Dmesg);
        if let Some(message) = message.filter(|message| TROUBLE.iter().any(|word| message.contains(word))) {
            console.kernel_trouble.push(message.to_owned());
        }
        if let Some(rest) = marker(line, "VMTEST-KERNEL ") {
            console.release = Some(rest.trim().to_owned());
        } else if marker(line, "VMTEST-CHECK-BEGIN").is_some() {
            part = Part::Check;
        } else if let Some(rest) = marker(line, "VMTEST-CHECK-END rc=") {
            console.check_rc = rest.trim().parse().ok();
            part = Part::Outside;
        } else if marker(line, "VMTEST-CHECK-KILLED").is_some() {
            console.check_killed = true;
        } else if marker(line, "VMTEST-TESTS-BEGIN").is_some() {
            console.tests_started = true;
            part = Part::Tests;
        } else if let Some(rest) = marker(line, "VMTEST-TESTS-END rc=") {
            console.tests_rc = rest.trim().parse().ok();
            part = Part::Outside;
        } else if let Some(rest) = marker(line, "VMTEST-UPTIME ") {
            if let Some((phase, seconds)) = rest.trim().split_once(' ') {
                console.uptimes.push((phase.to_owned(), seconds.to_owned()));
            }
        } else if marker(line, "VMTEST-DMESG-BEGIN").is_some() {
            part = Part::Dmesg; // the same lines again, and the boot's
        } else if marker(line, "VMTEST-DMESG-END").is_some() {
            part = Part::Outside;
        } else if marker(line, "VMTEST-DONE").is_some() {
            console.done = true;
        } else if part == Part::Check {
            match program(line) {
                Some(row) => console.programs.push(row),
                None => console.check_output.push(line.to_owned()),
            }
        } else if part == Part::Tests {
            if let Some(name) = line.strip_prefix("---- ").and_then(|rest| rest.strip_suffix(" stdout ----")) {
                console.failures.extend(section.take().map(close));
                section = Some((name.to_owned(), Vec::new()));
                continue;
            }
            if line == "failures:" {
                console.failures.extend(section.take().map(close));
                failure_list = true;
                continue;
            }
            if let Some((_, lines)) = section.as_mut() {
                lines.push(line);
                continue;
            }
            if failure_list {
                match line.strip_prefix("    ") {
                    Some(name) => _ = failed.insert(name.trim().to_owned()),
                    None => failure_list = false,
                }
                continue;
            }
            if let Some((name, result)) = line.strip_prefix("test ").and_then(|rest| rest.split_once(" ... ")) {
                finish(&mut console, &mut pending, None);
                match outcome(result) {
                    Some(outcome) => console.cases.push((name.to_owned(), outcome)),
                    None => pending = Some(name.to_owned()),
                }
            } else if pending.is_some() {
                if let Some(outcome) = outcome(line) {
                    finish(&mut console, &mut pending, Some(outcome));
                }
            }
        }
    }
    console.failures.extend(section.take().map(close));
    finish(&mut console, &mut pending, None);
    for (name, outcome) in &mut console.cases {
        if failed.contains(name.as_str()) {
            *outcome = Outcome::Failed;
        } else if *outcome == Outcome::Unfinished && console.tests_rc == Some(0) {
            *outcome = Outcome::Ok; // its result was lost among other output
        }
    }
    console
}

/// `text` without ANSI escape sequences (colours, cursor moves): CSI
/// sequences up to their final byte, and lone two-byte escapes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if ('\u{40}'..='\u{7e}').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

/// The text of a kernel message on the console (after its `[ 148.888323] `
/// timestamp, which may follow other output on the same line).
fn kernel_message(line: &str) -> Option<&str> {
    let open = line.find('[')?;
    let (stamp, text) = line[open + 1..].split_once("] ")?;
    let (seconds, micros) = stamp.trim_start().split_once('.')?;
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    (digits(seconds) && digits(micros)).then_some(text)
}

/// The rest of `line` after `marker`, wherever on the line it starts (a
/// kernel message may have been printed on the same line before it).
fn marker<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    line.find(marker).map(|at| &line[at + marker.len()..])
}

/// A finished failure section: its name and text, trailing blank lines cut.
fn close((name, lines): (String, Vec<&str>)) -> (String, String) {
    (name, lines.join("\n").trim_end().to_owned())
}

/// Record the pending case with `outcome` (unfinished if none).
fn finish(console: &mut Console, pending: &mut Option<String>, outcome: Option<Outcome>) {
    if let Some(name) = pending.take() {
        console.cases.push((name, outcome.unwrap_or(Outcome::Unfinished)));
    }
}

/// libtest's result word (`ignored, <reason>` included).
fn outcome(text: &str) -> Option<Outcome> {
    match text.trim() {
        "ok" => Some(Outcome::Ok),
        "FAILED" => Some(Outcome::Failed),
        text if text == "ignored" || text.starts_with("ignored, ") => Some(Outcome::Ignored),
        _ => None,
    }
}

/// One kernel-check row, if `line` is one.
fn program(line: &str) -> Option<Program> {
    let value: Value = serde_json::from_str(line.trim()).ok()?;
    let text = |key: &str| value[key].as_str().map(str::to_owned);
    Some(Program {
        program: text("program")?,
        state: text("state").unwrap_or_else(|| "?".to_owned()),
        verified_insns: value["verified_insns"].as_u64(),
        stack_depth: value["stack_depth"].as_u64(),
        error: text("error"),
    })
}

#[cfg(test)]
mod tests;
