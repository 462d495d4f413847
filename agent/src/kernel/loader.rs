//! Loading and attaching the eBPF programs. Dropping [`Hooks`] detaches them.

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
    Ebpf, EbpfLoader,
};
use aya_log::EbpfLogger;
use tokenwatch_common::{
    EndpointKey, KernelOffsets, AGENT_TGID_GLOBAL, CONTAINER_INITS_MAP, COUNTERS_MAP, DISK_WATCHES_MAP,
    ENFORCED_BINARIES_MAP, ENFORCED_CGROUPS_MAP, ENFORCED_PODS_MAP, EVENTS_MAP, OFFSETS_GLOBAL, READ_BLOCKS_MAP,
    TOKEN_NAMES_MAP, WATCHED_DEVS_MAP, WATCHED_ENDPOINTS_MAP, WATCHED_FILES_MAP,
};

use super::cgroup_hooks;
use super::counters::CounterMap;
use super::fence::{self, EnforceMaps, FenceLinks};
use super::hook_status::{self, HookReport, HookState, HookStatus};
use super::load_error::LoadError;
use super::tracepoints::{self, Spec, TRACEFS, TRACEPOINTS};
use super::watchlist::FileMaps;

/// The stack depth of every program of the embedded object, by name (see
/// `stack_depth`); empty if the object cannot be read, which loading it
/// would have said first.
pub fn program_stack_depths() -> std::collections::HashMap<String, u32> {
    super::stack_depth::program_stack_depths(EBPF_OBJECT).unwrap_or_else(|error| {
        tracing::warn!(%error, "stack depths unknown");
        std::collections::HashMap::new()
    })
}

/// The eBPF object built by `build.rs`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tokenwatch-ebpf"));

/// Raw tracepoints (tracepoint, program): no trace record is formatted, so
/// they suit events as frequent as `sched_switch`, where the program reads
/// one array slot and returns unless a completion-less io_uring open
/// happened in the last 2 s (`ebpf/src/uring_skip.rs`). Optional.
const RAW_TRACEPOINTS: &[(&str, &str)] = &[("sched_switch", "sched_switch_skipped")];

/// The loaded programs and the maps the agent drives them through.
pub struct Hooks {
    ebpf: Ebpf,
    attached: Vec<&'static str>,
    /// The tracepoint each loaded tracepoint program attaches to here, as
    /// probing found it at load: (spec, tracepoint name).
    found: Vec<(&'static tracepoints::Spec, &'static str)>,
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
        let mut hooks = Hooks { ebpf, attached: Vec::new(), found: Vec::new() };
        // Programs are verified and loaded now, while every map fd they refer
        // to is open; the maps can then be handed to tasks that own them.
        // Tracepoints are attached by id, read from tracefs: it must be there
        // to tell a tracepoint this kernel lacks from one it refused.
        ensure_tracefs()?;
        let kernel = hook_status::kernel_release();
        let mut core_refusal = None;
        for spec in TRACEPOINTS {
            let (name, core) = (spec.program, spec.core);
            let tracepoint = match tracepoints::find(spec).map(|tracepoint| (tracepoint, tracepoints::orphaned(name))) {
                Ok((tracepoint, None)) => tracepoint,
                Err(why) | Ok((_, Some(why))) => {
                    if core {
                        return Err(LoadError::MissingTracepoint(name, kernel));
                    }
                    skip(name, &why, &kernel);
                    continue;
                }
            };
            hooks.found.push((spec, tracepoint));
            let loaded = hooks.program(name)?.load();
            hooks.settle(name, core, loaded, &kernel, &mut core_refusal);
        }
        for &(_, name) in RAW_TRACEPOINTS {
            if let Some(why) = tracepoints::orphaned(name) {
                skip(name, &why, &kernel);
                continue;
            }
            let loaded = raw_program(&mut hooks.ebpf, name)?.load();
            hooks.settle(name, false, loaded, &kernel, &mut core_refusal);
        }
        for name in cgroup_hooks::PROGRAMS.into_iter().chain(fence::FENCES) {
            let loaded = cgroup_hooks::program(&mut hooks.ebpf, name)?.load();
            hooks.settle(name, false, loaded, &kernel, &mut core_refusal);
        }
        // Every program was tried first, so the reports (and `tokenwatch
        // kernel-check`) tell the whole story of this kernel.
        match core_refusal {
            Some(error) => Err(error),
            None => Ok(hooks),
        }
    }

    /// Records what loading `name` gave. A refused core program is fatal
    /// (kept in `core_refusal`, with the verifier's words and the kernel's
    /// release); any other refusal is logged once and costs that hook only.
    fn settle(
        &mut self,
        name: &'static str,
        core: bool,
        loaded: Result<(), ProgramError>,
        kernel: &str,
        core_refusal: &mut Option<LoadError>,
    ) {
        match loaded {
            Ok(()) => {
                let verified_insns = self
                    .ebpf
                    .program(name)
                    .and_then(|p| p.info().ok())
                    .and_then(|info| info.verified_instruction_count());
                status().record(HookReport { program: name, state: HookState::Loaded, verified_insns, reason: None });
            }
            Err(error) => {
                let reason = hook_status::refusal(&error);
                status().record(HookReport {
                    program: name,
                    state: HookState::Refused,
                    verified_insns: None,
                    reason: Some(reason.clone()),
                });
                if core {
                    core_refusal.get_or_insert(LoadError::CoreRefused { name, kernel: kernel.to_owned(), reason });
                    return;
                }
                tracing::warn!(
                    program = name,
                    kernel,
                    reason = %reason,
                    "kernel refused this program: the agent runs without this hook ({})",
                    consequence(name)
                );
            }
        }
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
                disk_switch: take(&mut self.ebpf, DISK_WATCHES_MAP)?,
                files: take(&mut self.ebpf, WATCHED_FILES_MAP)?,
                names: take(&mut self.ebpf, TOKEN_NAMES_MAP)?,
            },
            endpoints: take(&mut self.ebpf, WATCHED_ENDPOINTS_MAP)?,
            counters: CounterMap::new(take(&mut self.ebpf, COUNTERS_MAP)?),
            logger,
            enforcement: EnforceMaps {
                cgroups: take(&mut self.ebpf, ENFORCED_CGROUPS_MAP)?,
                inits: take(&mut self.ebpf, CONTAINER_INITS_MAP)?,
                binaries: take(&mut self.ebpf, ENFORCED_BINARIES_MAP)?,
                pods: take(&mut self.ebpf, ENFORCED_PODS_MAP)?,
                read_blocks: take(&mut self.ebpf, READ_BLOCKS_MAP)?,
            },
        })
    }

    /// Attaches the enforcement fences to the cgroup directory `dir` (a
    /// pod's); they stay until the returned links are dropped.
    pub fn attach_fence(&mut self, dir: &std::fs::File) -> Result<FenceLinks, LoadError> {
        fence::attach(&mut self.ebpf, dir)
    }

    /// Attaches every loaded program; returns the programs attached. A
    /// program that did not load, or does not attach, is skipped with its
    /// state recorded: only the core is required.
    pub fn attach(&mut self) -> Result<&[&'static str], LoadError> {
        let (fallback, found): (Vec<_>, Vec<_>) =
            self.found.clone().into_iter().partition(|(spec, _)| spec.program == tracepoints::CONNECT_FALLBACK);
        for (spec, tracepoint) in found {
            self.attach_tracepoint(spec, tracepoint)?;
        }
        for &(tracepoint, name) in RAW_TRACEPOINTS {
            if !self.is_loaded(name) {
                continue;
            }
            match raw_program(&mut self.ebpf, name)?.attach(tracepoint) {
                Ok(_) => self.live(name),
                Err(error) => self.attach_failed(name, &error),
            }
        }
        let cgroup = cgroup_hooks::attach(&mut self.ebpf)?;
        for name in &cgroup {
            self.live(name);
        }
        // The cgroup hooks match every connect, connect(2)'s too, and leave
        // connect(2)'s to its exit; the entry tracepoint, which reads each
        // connect's address from the process's memory, is only for a node
        // where they do not cover both families.
        for (spec, tracepoint) in fallback {
            if cgroup_hooks::PROGRAMS.iter().all(|program| cgroup.contains(program)) {
                status().set_state(
                    spec.program,
                    HookState::Loaded,
                    Some("not attached: the cgroup connect hooks match every connect".to_owned()),
                );
            } else {
                self.attach_tracepoint(spec, tracepoint)?;
            }
        }
        Ok(&self.attached)
    }

    /// Attaches one loaded tracepoint program; a core one that does not
    /// attach is fatal.
    fn attach_tracepoint(&mut self, spec: &'static Spec, tracepoint: &'static str) -> Result<(), LoadError> {
        let (name, core) = (spec.program, spec.core);
        if !self.is_loaded(name) {
            return Ok(());
        }
        match self.program(name)?.attach(spec.category, tracepoint) {
            Ok(_) => self.live(name),
            Err(source) if core => return Err(LoadError::Program { name, source }),
            Err(error) => self.attach_failed(name, &error),
        }
        Ok(())
    }

    /// Whether `name` passed the verifier.
    fn is_loaded(&self, name: &str) -> bool {
        self.ebpf.program(name).is_some_and(|p| p.fd().is_ok())
    }

    /// Records `name` as attached.
    fn live(&mut self, name: &'static str) {
        self.attached.push(name);
        status().set_state(name, HookState::Attached, None);
    }

    /// Records and logs a program that loaded but did not attach.
    fn attach_failed(&mut self, name: &'static str, error: &ProgramError) {
        tracing::warn!(program = name, %error, "program not attached: the agent runs without this hook ({})", consequence(name));
        status().set_state(name, HookState::AttachFailed, Some(error.to_string()));
    }
}

/// Records `name` as absent on this kernel, and says so once.
fn skip(name: &'static str, why: &str, kernel: &str) {
    let reason = format!("{why} (kernel {kernel})");
    tracing::info!(program = name, "{reason}; hook skipped: {}", consequence(name));
    status().record(HookReport { program: name, state: HookState::Absent, verified_insns: None, reason: Some(reason) });
}

/// The process's hook reports (kept by the metrics, read by `/readyz`).
fn status() -> &'static HookStatus {
    hook_status::status()
}

/// What the node goes without when `program` is not live: said in the one
/// log line a refusal gets.
pub fn consequence(program: &str) -> &'static str {
    match program {
        "sys_exit_openat2" => "token reads through openat2(2) go unseen",
        "sys_exit_open" => "token reads through open(2) go unseen",
        "io_uring_submit_req" | "io_uring_complete" => "token reads through io_uring go unseen",
        "io_uring_complete_skipped" | "sys_exit_io_uring_enter" | "sched_switch_skipped" => {
            "io_uring opens that post no completion (IOSQE_CQE_SKIP_SUCCESS) go unseen"
        }
        "sys_exit_open_by_handle_at" => "token reads through open_by_handle_at(2) go unseen",
        "sys_exit_pidfd_getfd" => "token fds copied with pidfd_getfd(2) go unseen",
        "connect4" | "connect6" => {
            "connects made without connect(2) (io_uring, TCP Fast Open) go unseen; cgroup programs need CAP_NET_ADMIN"
        }
        "fence_connect4" | "fence_connect6" => {
            "block entries cannot refuse API-server connects; cgroup programs need CAP_NET_ADMIN"
        }
        _ => "a detection path is missing",
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

/// Tracepoints are attached by id, read from tracefs; mount it if no one has.
fn ensure_tracefs() -> Result<(), LoadError> {
    if tracepoints::tracefs_mounted() {
        return Ok(());
    }
    nix::mount::mount(Some("tracefs"), TRACEFS, Some("tracefs"), nix::mount::MsFlags::empty(), None::<&str>)
        .map_err(LoadError::Tracefs)?;
    tracing::info!(path = TRACEFS, "mounted tracefs (tracepoints are attached through it)");
    Ok(())
}
