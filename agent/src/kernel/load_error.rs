//! Why the eBPF programs could not be loaded or attached: one error for the
//! loader, the connect hooks and the fences, which all load from the same
//! object.

use aya::{maps::MapError, programs::ProgramError, EbpfError};

use super::tracepoints::TRACEFS;

/// Why the programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// tracefs is not mounted and mounting it failed.
    #[error("tracefs is not mounted and mounting it at {TRACEFS} failed: {0}")]
    Tracefs(nix::Error),
    /// The kernel refused the object (maps, BTF, globals).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// A program is missing from the object.
    #[error("the eBPF object has no program `{0}`")]
    MissingProgram(&'static str),
    /// A program failed to load or attach.
    #[error("program {name}: {source}")]
    Program {
        /// The tracepoint.
        name: &'static str,
        /// Why.
        source: ProgramError,
    },
    /// A core tracepoint does not exist on this kernel.
    #[error(
        "tracepoint {0} does not exist on kernel {1}: the agent cannot watch token reads or API-server connects here"
    )]
    MissingTracepoint(&'static str, String),
    /// The kernel refused a core program: the agent would see nothing.
    #[error(
        "kernel {kernel} refused the core program {name}, without which the agent cannot watch token reads or \
         API-server connects; this kernel is not supported (README, \"Supported kernels\"): {reason}"
    )]
    CoreRefused {
        /// The program.
        name: &'static str,
        /// The running kernel's release.
        kernel: String,
        /// The verifier's last lines.
        reason: String,
    },
    /// A map is missing or of the wrong type.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        source: MapError,
    },
    /// The cgroup2 root could not be opened to attach the connect hooks.
    #[error("opening the cgroup2 root {path}: {source}")]
    CgroupRoot {
        /// The mount point.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A map is missing from the object.
    #[error("the eBPF object has no map `{0}`")]
    MissingMap(&'static str),
}

impl LoadError {
    /// What to do about it, when the cause is the agent's privileges rather
    /// than the kernel: a verifier's refusal must not send people looking at
    /// capabilities.
    pub fn hint(&self) -> &'static str {
        let text = self.to_string();
        if text.contains("os error 1)") || text.contains("Operation not permitted") {
            " (the agent needs CAP_BPF, CAP_PERFMON and, for the cgroup hooks, CAP_NET_ADMIN; see deploy/README.md)"
        } else {
            ""
        }
    }
}
