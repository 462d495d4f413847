//! `tokenwatch kernel-check`: what this node's kernel makes of the agent's
//! eBPF programs, without running the agent. Every program is verified as
//! the agent would load it (the same offsets from this kernel's BTF, the
//! same globals), nothing is attached, and one line per program says
//! whether the verifier took it, with the figures that tell how close it
//! came to a limit: instructions the verifier processed (kernels 5.16+
//! report it) and the stack the program's call chain needs (from the
//! object; 512 bytes is the limit up to 6.12). `cargo xtask vmtest` runs it
//! in each kernel of the matrix; an operator runs it on a node before
//! rolling the DaemonSet out.

use std::io::Write;

use crate::kernel::{
    hook_status::{kernel_release, HookReport, HookState},
    loader::{program_stack_depths, Hooks},
    offsets::{resolve_running_kernel, OffsetsError},
    LoadError,
};

/// How the report is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One aligned line per program.
    #[default]
    Table,
    /// One JSON object per program and line.
    Json,
}

/// Flags of `tokenwatch kernel-check`.
#[derive(Debug, clap::Args)]
pub struct KernelCheckArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table")]
    pub output: Output,
}

/// Why the check could not say yes.
#[derive(Debug, thiserror::Error)]
pub enum KernelCheckError {
    /// This kernel's BTF lacks what the programs need.
    #[error(transparent)]
    Offsets(#[from] OffsetsError),
    /// The object or the kernel failed outside any one program.
    #[error(transparent)]
    Load(Box<LoadError>),
    /// A core program was refused: the agent would not start here.
    #[error("the agent cannot run on kernel {kernel}: {reason}")]
    Unsupported {
        /// The running kernel's release.
        kernel: String,
        /// The refusal.
        reason: Box<LoadError>,
    },
    /// The report could not be written.
    #[error("writing the report: {0}")]
    Write(#[from] std::io::Error),
}

/// Verifies every program, prints the report, and fails when a core program
/// was refused.
pub fn run(args: &KernelCheckArgs) -> Result<(), KernelCheckError> {
    let kernel = kernel_release();
    let offsets = resolve_running_kernel()?;
    // 64 KiB of ring buffer: the check sends no event.
    let loaded = Hooks::load(&offsets, 1 << 16, false, std::process::id());
    let refusal = match loaded {
        Ok(hooks) => {
            drop(hooks);
            None
        }
        Err(error @ LoadError::CoreRefused { .. }) => Some(Box::new(error)),
        Err(error) => return Err(KernelCheckError::Load(Box::new(error))),
    };
    let stacks = program_stack_depths();
    let reports = crate::kernel::hook_status::status().snapshot();
    let mut out = std::io::stdout().lock();
    for report in &reports {
        let stack = stacks.get(report.program).copied();
        match args.output {
            Output::Json => writeln!(out, "{}", json_line(&kernel, report, stack))?,
            Output::Table => writeln!(out, "{}", table_line(report, stack))?,
        }
    }
    out.flush()?;
    match refusal {
        Some(reason) => Err(KernelCheckError::Unsupported { kernel, reason }),
        None => Ok(()),
    }
}

/// One program as a JSON object.
fn json_line(kernel: &str, report: &HookReport, stack: Option<u32>) -> String {
    serde_json::json!({
        "kernel": kernel,
        "program": report.program,
        "state": report.state.name(),
        "verified_insns": report.verified_insns,
        "stack_depth": stack,
        "error": report.reason,
    })
    .to_string()
}

/// One program as an aligned line: state, instructions, stack, reason.
fn table_line(report: &HookReport, stack: Option<u32>) -> String {
    let insns = report.verified_insns.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let stack = stack.map_or_else(|| "-".to_owned(), |n| n.to_string());
    let reason = match report.state {
        HookState::Loaded | HookState::Attached => String::new(),
        _ => format!("  {}", report.reason.as_deref().unwrap_or_default()),
    };
    format!("{:<28} {:<14} insns={:<8} stack={:<5}{reason}", report.program, report.state.name(), insns, stack)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_program_names_its_reason_and_a_loaded_one_its_figures() {
        let loaded = HookReport {
            program: "sys_exit_openat",
            state: HookState::Loaded,
            verified_insns: Some(4_321),
            reason: None,
        };
        assert_eq!(
            table_line(&loaded, Some(224)),
            "sys_exit_openat              loaded         insns=4321     stack=224  "
        );
        let refused = HookReport {
            program: "io_uring_complete",
            state: HookState::Refused,
            verified_insns: None,
            reason: Some("Invalid argument (os error 22): unknown func".to_owned()),
        };
        let json: serde_json::Value =
            serde_json::from_str(&json_line("5.10.0-46-cloud-amd64", &refused, None)).expect("a JSON line");
        assert_eq!(json["state"], "refused");
        assert_eq!(json["verified_insns"], serde_json::Value::Null);
        assert_eq!(json["error"], "Invalid argument (os error 22): unknown func");
        assert_eq!(json["kernel"], "5.10.0-46-cloud-amd64");
    }
}
