//! Loading and attaching the eBPF programs. Dropping [`Hooks`] detaches them.

use std::path::Path;

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfError, EbpfLoader,
};
use aya_log::EbpfLogger;
use tokenwatch_common::{
    EndpointKey, KernelOffsets, AGENT_TGID_GLOBAL, CONTAINER_INITS_MAP, COUNTERS_MAP, ENFORCED_BINARIES_MAP,
    ENFORCED_CGROUPS_MAP, EVENTS_MAP, OFFSETS_GLOBAL, WATCHED_DEVS_MAP, WATCHED_ENDPOINTS_MAP, WATCHED_FILES_MAP,
};

use super::cgroup_hooks;
use super::counters::CounterMap;
use super::fence::{self, EnforceMaps, FenceLinks};
use super::watchlist::FileMaps;

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokenwatch-ebpf"));

/// Every tracepoint program (category, tracepoint, program, required), exits
/// first so no exit misses an entry made after it (only connect and
/// io_uring have entries: the opens are judged at their exit alone). `open` is missing on
/// architectures without `open(2)` (arm64); io_uring's on kernels built
/// without it: optional. `io_uring_complete` carries two programs, each
/// within the verifier's budget.
const TRACEPOINTS: &[(&str, &str, &str, bool)] = &[
    ("syscalls", "sys_exit_openat", "sys_exit_openat", true),
    ("syscalls", "sys_exit_openat2", "sys_exit_openat2", true),
    ("syscalls", "sys_exit_open", "sys_exit_open", false),
    ("syscalls", "sys_exit_connect", "sys_exit_connect", true),
    ("io_uring", "io_uring_complete", "io_uring_complete", false),
    ("io_uring", "io_uring_complete", "io_uring_complete_skipped", false),
    ("syscalls", "sys_exit_io_uring_enter", "sys_exit_io_uring_enter", false),
    ("syscalls", "sys_exit_open_by_handle_at", "sys_exit_open_by_handle_at", false),
    ("syscalls", "sys_exit_pidfd_getfd", "sys_exit_pidfd_getfd", false),
    ("syscalls", "sys_enter_connect", "sys_enter_connect", true),
    ("io_uring", "io_uring_submit_req", "io_uring_submit_req", false),
];

/// Raw tracepoints (tracepoint, program): no trace record is formatted, so
/// they suit events as frequent as `sched_switch`, where the program reads
/// one array slot and returns unless a completion-less io_uring open
/// happened in the last 2 s (`ebpf/src/uring_skip.rs`). Optional.
const RAW_TRACEPOINTS: &[(&str, &str)] = &[("sched_switch", "sched_switch_skipped")];

/// Where the kernel's trace events are listed, mounted or not.
const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

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
    /// A required tracepoint does not exist on this kernel.
    #[error("tracepoint {0} does not exist on this kernel")]
    MissingTracepoint(&'static str),
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

/// The loaded programs and the maps the agent drives them through.
pub struct Hooks {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
}

/// Maps handed to the tasks that own them.
pub struct HookMaps {
    /// Matched events.
    pub events: RingBuf<MapData>,
    /// Watched devices and token files.
    pub files: FileMaps,
    /// Watched API-server endpoints.
    pub endpoints: BpfHashMap<MapData, EndpointKey, u32>,
    /// The programs' per-hook, per-CPU counters.
    pub counters: CounterMap,
    /// The programs' own log records; `None` when the object has no log map.
    pub logger: Option<EbpfLogger<&'static dyn log::Log>>,
    /// What the policy's blocks refuse, per cgroup.
    pub enforcement: EnforceMaps,
}

impl Hooks {
    /// Loads the object with the resolved offsets, the agent's tgid (as the host sees it), the
    /// ring buffer size and the programs' log level (`debug_logs`: emit
    /// aya-log debug records at all). Nothing is attached yet: fill the watch
    /// maps first.
    pub fn load(
        offsets: &KernelOffsets,
        ring_buffer_bytes: u32,
        debug_logs: bool,
        agent_tgid: u32,
    ) -> Result<Self, LoadError> {
        let tgid = agent_tgid;
        // aya-log levels: 0 disables every record, 4 is Debug. The verifier
        // removes disabled log calls, so they cost nothing when off.
        let log_level: u8 = if debug_logs { aya_log::Level::Debug as u8 } else { 0 };
        let ebpf = EbpfLoader::new()
            .override_global(OFFSETS_GLOBAL, offsets, true)
            .override_global(AGENT_TGID_GLOBAL, &tgid, true)
            .override_global(aya_log::LEVEL, &log_level, false)
            .map_max_entries(EVENTS_MAP, ring_buffer_bytes)
            .load(EBPF_OBJECT)?;
        let mut hooks = Hooks { ebpf, attached: Vec::new() };
        // Programs are verified and loaded now, while every map fd they refer
        // to is open; the maps can then be handed to tasks that own them.
        for &(_, _, name, _) in TRACEPOINTS {
            hooks.program(name)?.load().map_err(|source| LoadError::Program { name, source })?;
        }
        cgroup_hooks::load(&mut hooks.ebpf)?;
        fence::load(&mut hooks.ebpf)?;
        for &(_, name) in RAW_TRACEPOINTS {
            raw_program(&mut hooks.ebpf, name)?.load().map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(hooks)
    }

    fn program(&mut self, name: &'static str) -> Result<&mut TracePoint, LoadError> {
        self.ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram(name))?
            .try_into()
            .map_err(|source| LoadError::Program { name, source })
    }

    /// Takes the maps the agent's tasks own. Call once, before `attach`.
    pub fn take_maps(&mut self) -> Result<HookMaps, LoadError> {
        let logger = EbpfLogger::init(&mut self.ebpf).ok();
        Ok(HookMaps {
            events: take(&mut self.ebpf, EVENTS_MAP)?,
            files: FileMaps {
                devs: take(&mut self.ebpf, WATCHED_DEVS_MAP)?,
                files: take(&mut self.ebpf, WATCHED_FILES_MAP)?,
            },
            endpoints: take(&mut self.ebpf, WATCHED_ENDPOINTS_MAP)?,
            counters: CounterMap::new(take(&mut self.ebpf, COUNTERS_MAP)?),
            logger,
            enforcement: EnforceMaps {
                cgroups: take(&mut self.ebpf, ENFORCED_CGROUPS_MAP)?,
                inits: take(&mut self.ebpf, CONTAINER_INITS_MAP)?,
                binaries: take(&mut self.ebpf, ENFORCED_BINARIES_MAP)?,
            },
        })
    }

    /// Attaches the enforcement fences to the cgroup directory `dir` (a
    /// pod's); they stay until the returned links are dropped.
    pub fn attach_fence(&mut self, dir: &std::fs::File) -> Result<FenceLinks, LoadError> {
        fence::attach(&mut self.ebpf, dir)
    }

    /// Attaches every loaded program; returns the tracepoints attached.
    pub fn attach(&mut self) -> Result<&[&'static str], LoadError> {
        ensure_tracefs()?;
        for &(category, tracepoint, name, required) in TRACEPOINTS {
            if !tracepoint_exists(category, tracepoint) {
                if required {
                    return Err(LoadError::MissingTracepoint(name));
                }
                tracing::info!(tracepoint = name, "tracepoint absent on this kernel; skipped");
                continue;
            }
            self.program(name)?.attach(category, tracepoint).map_err(|source| LoadError::Program { name, source })?;
            self.attached.push(name);
        }
        for &(tracepoint, name) in RAW_TRACEPOINTS {
            match raw_program(&mut self.ebpf, name)?.attach(tracepoint) {
                Ok(_) => self.attached.push(name),
                Err(error) => tracing::warn!(program = name, %error, "raw tracepoint not attached"),
            }
        }
        self.attached.extend(cgroup_hooks::attach(&mut self.ebpf)?);
        Ok(&self.attached)
    }
}

fn raw_program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut RawTracePoint, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::MissingMap(name))?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

fn tracepoint_exists(category: &str, name: &str) -> bool {
    [TRACEFS, DEBUGFS_TRACING].iter().any(|root| Path::new(root).join("events").join(category).join(name).exists())
}

/// Tracepoints are attached by id, read from tracefs; mount it if no one has.
fn ensure_tracefs() -> Result<(), LoadError> {
    if [TRACEFS, DEBUGFS_TRACING].iter().any(|root| Path::new(root).join("events").exists()) {
        return Ok(());
    }
    nix::mount::mount(Some("tracefs"), TRACEFS, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(LoadError::Tracefs)?;
    tracing::info!(path = TRACEFS, "mounted tracefs (tracepoints are attached through it)");
    Ok(())
}
