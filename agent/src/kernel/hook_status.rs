//! What became of each eBPF program on this kernel. The DaemonSet meets
//! many kernels, and each verifier accepts a little more or less: a program
//! one kernel refuses costs the node that hook only, never the agent. Each
//! program's fate is logged once, exported as `tokenwatch_hooks{hook,state}`
//! and written into `/readyz`'s body, so an operator sees which detections a
//! node runs without reading its logs.

use std::sync::{LazyLock, Mutex, PoisonError};

use aya::programs::ProgramError;

/// How many of the verifier's last lines a refusal keeps: the reason is at
/// the end of its log, after the instruction trace.
const VERIFIER_TAIL_LINES: usize = 6;

/// One program's state on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookState {
    /// Verified and attached: the hook is live.
    Attached,
    /// Verified, not attached (yet, or by design: the fences attach per pod).
    Loaded,
    /// The kernel's verifier or loader refused it.
    Refused,
    /// Its tracepoint does not exist on this kernel, or a feature it needs
    /// is missing: nothing to load.
    Absent,
    /// Verified, but attaching failed.
    AttachFailed,
}

impl HookState {
    /// The label value in metrics and output.
    pub const fn name(self) -> &'static str {
        match self {
            HookState::Attached => "attached",
            HookState::Loaded => "loaded",
            HookState::Refused => "refused",
            HookState::Absent => "absent",
            HookState::AttachFailed => "attach_failed",
        }
    }

    /// Every state, for a complete metric family (a state with no program
    /// reads 0, so a dashboard can alert on `refused > 0`).
    pub const ALL: [HookState; 5] =
        [HookState::Attached, HookState::Loaded, HookState::Refused, HookState::Absent, HookState::AttachFailed];
}

/// One program's report.
#[derive(Clone, Debug)]
pub struct HookReport {
    /// The program's name in the object (`sys_exit_openat`, `connect4`...).
    pub program: &'static str,
    /// What became of it.
    pub state: HookState,
    /// Instructions the verifier processed, where the kernel says (5.16+).
    pub verified_insns: Option<u32>,
    /// Why it is not live: the verifier's last lines or the attach error.
    pub reason: Option<String>,
}

/// The process's hook status: one agent loads its programs once, and the
/// metrics, the probes and `kernel-check` read what became of them.
static STATUS: LazyLock<HookStatus> = LazyLock::new(HookStatus::default);

/// The process's hook status.
pub fn status() -> &'static HookStatus {
    &STATUS
}

/// The reports of every program, kept for metrics and probes.
#[derive(Default)]
pub struct HookStatus {
    reports: Mutex<Vec<HookReport>>,
}

impl HookStatus {
    /// Records (or replaces) `program`'s report.
    pub fn record(&self, report: HookReport) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        match reports.iter_mut().find(|r| r.program == report.program) {
            Some(existing) => *existing = report,
            None => reports.push(report),
        }
    }

    /// Moves `program` to `state`, keeping what else is known of it.
    pub fn set_state(&self, program: &'static str, state: HookState, reason: Option<String>) {
        let mut reports = self.reports.lock().unwrap_or_else(PoisonError::into_inner);
        match reports.iter_mut().find(|r| r.program == program) {
            Some(existing) => {
                existing.state = state;
                if reason.is_some() {
                    existing.reason = reason;
                }
            }
            None => reports.push(HookReport { program, state, verified_insns: None, reason }),
        }
    }

    /// A copy of every report, in load order.
    pub fn snapshot(&self) -> Vec<HookReport> {
        self.reports.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// One line per program that is not live, for `/readyz`'s body; empty
    /// when every program is attached or loaded.
    pub fn degraded_lines(&self) -> String {
        self.snapshot()
            .iter()
            .filter(|r| matches!(r.state, HookState::Refused | HookState::Absent | HookState::AttachFailed))
            .map(|r| {
                format!(
                    "hook {}: {}{}\n",
                    r.program,
                    r.state.name(),
                    r.reason.as_deref().map(|w| format!(" ({})", one_line(w))).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Each program's state for Prometheus: 1 for its state, 0 for the
    /// others, so `tokenwatch_hooks{state="refused"} == 1` finds every node
    /// running without a hook.
    pub fn expose(&self, out: &mut crate::metrics::Scrape<'_>) -> std::fmt::Result {
        let reports = self.snapshot();
        let samples = reports.iter().flat_map(|report| {
            HookState::ALL
                .into_iter()
                .map(|state| ([("hook", report.program), ("state", state.name())], u64::from(report.state == state)))
        });
        crate::metrics::family(
            out,
            "tokenwatch_hooks",
            crate::metrics::Kind::Gauge,
            "eBPF programs by state on this kernel: attached, loaded, refused, absent, attach_failed.",
            samples,
        )
    }
}

/// The last lines of a refused program's verifier log (or the error itself
/// when the kernel wrote no log), joined with ` | `.
pub fn refusal(error: &ProgramError) -> String {
    match error {
        ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(VERIFIER_TAIL_LINES)..].join(" | ");
            if tail.is_empty() {
                format!("{io_error} (the kernel gave no verifier log)")
            } else {
                format!("{io_error}: {tail}")
            }
        }
        other => other.to_string(),
    }
}

/// `text` on one line, for a probe's body.
fn one_line(text: &str) -> String {
    text.replace('\n', " | ")
}

/// The running kernel's release (`uname -r`), named in every refusal: a
/// verifier's verdict is a property of the kernel version.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_programs_that_are_not_live_reach_the_probe_body() {
        let status = HookStatus::default();
        status.record(HookReport {
            program: "sys_exit_openat",
            state: HookState::Attached,
            verified_insns: Some(900),
            reason: None,
        });
        status.record(HookReport {
            program: "io_uring_complete",
            state: HookState::Refused,
            verified_insns: None,
            reason: Some("Permission denied (os error 13): R1 invalid mem access\nprocessed 5 insns".to_owned()),
        });
        status.set_state("sched_switch_skipped", HookState::Absent, Some("raw tracepoint missing".to_owned()));
        let body = status.degraded_lines();
        assert_eq!(
            body,
            "hook io_uring_complete: refused (Permission denied (os error 13): R1 invalid mem access | processed 5 insns)\n\
             hook sched_switch_skipped: absent (raw tracepoint missing)\n"
        );
        status.set_state("io_uring_complete", HookState::Attached, None);
        assert_eq!(status.snapshot()[1].state, HookState::Attached);
        assert!(!status.degraded_lines().contains("io_uring_complete"));
    }
}
