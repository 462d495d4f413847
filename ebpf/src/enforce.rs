//! Enforcement (issue 11): refusing what the operator's `blocks` forbid,
//! with the hooks this kernel loads (no BPF LSM).
//!
//! * `fence_connect4`/`fence_connect6`: cgroup socket-address programs the
//!   agent attaches (as `bpf_link`s) to the cgroup of each pod a block entry
//!   covers. A connect to a watched API-server endpoint from a process the
//!   entry covers returns 0: the kernel fails the connect with `EPERM`.
//! * [`token_opened`]: called by the open exits after a watched token file
//!   matched; sends `SIGKILL` to a covered process. The signal is pending
//!   when the syscall returns, so the process dies before it runs another
//!   instruction: it never reads a byte.
//!
//! What is covered comes from [`ENFORCED_CGROUPS`], keyed by cgroup v2 id:
//! the agent writes the pod's cgroup (and, for entries that select on the
//! image, each container's); the programs look up every ancestor of the
//! current cgroup and the deepest entry wins. A slot that lists binaries
//! covers only processes whose executable (`task->mm->exe_file`'s inode)
//! the agent put in [`ENFORCED_BINARIES`] for that entry and slot. The open
//! exits also look up [`ENFORCED_PODS`] by the pod uid in each ancestor's
//! name, so a pod the API put on the node is covered before the agent has
//! found its cgroup. Nothing is pinned: when the agent exits, maps and
//! links go with it and nothing stays blocked.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_send_signal},
    },
    macros::{cgroup_sock_addr, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::SockAddrContext,
};
use tokenwatch_common::{
    BinaryKey, CgroupEnforcement, EndpointKey, EnforceAction, EnforceSlot, Enforcement, BINARIES_ANY, BINARIES_LISTED,
    ENFORCE_SLOTS, EXEC_ANY, EXEC_NEVER, EXEC_ONLY, MODE_DRY_RUN, MODE_ENFORCE, MODE_NONE, POD_UID_LEN,
};

use crate::{
    identity::{self, pid_in_namespace},
    kernel::{read_ptr, read_str, read_u32},
    maps::{is_agent, kernel_offset, WATCHED_ENDPOINTS},
    sock_endpoint::{endpoint4, endpoint6},
};

/// What a block entry covers, by cgroup v2 id; written by the agent.
#[map(name = "ENFORCED_CGROUPS")]
pub static ENFORCED_CGROUPS: HashMap<u64, CgroupEnforcement> = HashMap::with_max_entries(8192, 0);

/// What a block entry covers at pod level, by the pod uid as the pod's
/// cgroup name spells it; written by the agent for every pod the API put
/// on this node, so a pod is covered from its first instruction, before
/// the agent has found its cgroup (which [`ENFORCED_CGROUPS`] needs).
#[map(name = "ENFORCED_PODS")]
pub static ENFORCED_PODS: HashMap<[u8; POD_UID_LEN], CgroupEnforcement> = HashMap::with_max_entries(4096, 0);

/// 1 while some entry above has a token-read slot in force (see
/// `tokenwatch_common::READ_BLOCKS_MAP`); written by the agent.
#[map(name = "READ_BLOCKS")]
pub static READ_BLOCKS: Array<u32> = Array::with_max_entries(1, 0);

/// The executables slots with `BINARIES_LISTED` cover, resolved by the agent
/// in each covered container; the value is the number of the entry naming it.
#[map(name = "ENFORCED_BINARIES")]
pub static ENFORCED_BINARIES: HashMap<BinaryKey, u32> = HashMap::with_max_entries(16384, 0);

/// Host tgid of each covered container's first process, by the container's
/// cgroup v2 id: the same init the agent's origin judgement uses.
#[map(name = "CONTAINER_INITS")]
pub static CONTAINER_INITS: HashMap<u64, u32> = HashMap::with_max_entries(8192, 0);

/// What a fence program did to a thread's connect, until the hook that
/// reports the connect picks it up. LRU: a mark nobody reads must not pile up.
#[map(name = "ENFORCE_MARKS")]
pub static ENFORCE_MARKS: LruHashMap<u32, Mark> = LruHashMap::with_max_entries(4096, 0);

/// A fence's decision about one connect; kernel-only.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Mark {
    /// What was done, by which entry.
    pub enforcement: Enforcement,
    /// Destination port, host order, to match the report to the connect.
    pub port: u16,
    /// Explicit padding.
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_ns()` of the decision.
    pub at_ns: u64,
}

/// A cgroup program's "let it go on".
const ALLOW: i32 = 1;
/// A cgroup program's "refuse": the connect fails with `EPERM`.
const DENY: i32 = 0;
/// Cgroup levels searched below the root (kubepods, QoS, pod, container
/// and a few more for systemd slices and nested runtimes).
const MAX_LEVELS: i32 = 12;
/// How old a mark may be and still describe the connect being reported.
const MARK_MAX_AGE_NS: u64 = 1_000_000_000;
/// `SIGKILL`.
const SIGKILL: u32 = 9;
/// `O_ACCMODE` and `O_WRONLY`: a write-only open reads nothing.
const O_ACCMODE: u64 = 3;
const O_WRONLY: u64 = 1;

#[cgroup_sock_addr(connect4)]
pub fn fence_connect4(ctx: SockAddrContext) -> i32 {
    let (_, _, key) = endpoint4(&ctx);
    fence(key)
}

#[cgroup_sock_addr(connect6)]
pub fn fence_connect6(ctx: SockAddrContext) -> i32 {
    let (_, _, key) = endpoint6(&ctx);
    fence(key)
}

/// Refuses (or, dry-run, marks) a covered connect to a watched endpoint.
#[inline(always)]
fn fence(key: EndpointKey) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_agent((pid_tgid >> 32) as u32) {
        return ALLOW;
    }
    // SAFETY: value not used beyond presence.
    if unsafe { WATCHED_ENDPOINTS.get(key) }.is_none() {
        return ALLOW;
    }
    let Some((cgroup, rules)) = covering() else { return ALLOW };
    // SAFETY: current task pointer, read only via probes.
    let task = unsafe { bpf_get_current_task() };
    let Some(slot) = decide(&rules.connect, task, (cgroup, BinaryKey::CONNECT_SLOTS)) else { return ALLOW };
    let enforce = slot.mode == MODE_ENFORCE;
    let action = if enforce { EnforceAction::Blocked } else { EnforceAction::WouldBlock };
    let mark = Mark {
        enforcement: Enforcement { action: action as u32, block: slot.block },
        port: key.port,
        _pad: [0; 6],
        // SAFETY: no preconditions.
        at_ns: unsafe { bpf_ktime_get_ns() },
    };
    let _ = ENFORCE_MARKS.insert(pid_tgid as u32, mark, 0);
    if enforce {
        DENY
    } else {
        ALLOW
    }
}

/// What a fence did to the current thread's connect to `port`, taken so a
/// later connect does not inherit it. Called by the hooks that report.
#[inline(always)]
pub fn take_mark(port: u16) -> Enforcement {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out before removal.
    let Some(mark) = (unsafe { ENFORCE_MARKS.get(tid) }).copied() else { return Enforcement::default() };
    let _ = ENFORCE_MARKS.remove(tid);
    // SAFETY: no preconditions.
    let age = unsafe { bpf_ktime_get_ns() }.wrapping_sub(mark.at_ns);
    if mark.port == port && age < MARK_MAX_AGE_NS {
        mark.enforcement
    } else {
        Enforcement::default()
    }
}

/// Called after an open matched a watched token file: kills a process a
/// block entry forbids to read it (dry-run: only says so). `flags` are the
/// open's; a write-only open is not a read and is left alone. Not inlined,
/// and reading the few offsets it needs in place (not the callers' copy of
/// [`tokenwatch_common::KernelOffsets`]): the open exits' frames are close to the 512-byte
/// stack limit.
#[inline(never)]
pub fn token_opened(flags: u64, task: u64) -> Enforcement {
    if flags & O_ACCMODE == O_WRONLY {
        return Enforcement::default();
    }
    // No read is blocked anywhere on the node: no walk. An array lookup
    // the verifier inlines; a failed one (never, index 0) walks.
    if READ_BLOCKS.get(0).copied().unwrap_or(1) == 0 {
        return Enforcement::default();
    }
    let Some((cgroup, rules)) = covering_task(task) else { return Enforcement::default() };
    let Some(slot) = decide(&rules.token_read, task, (cgroup, BinaryKey::TOKEN_READ_SLOTS)) else {
        return Enforcement::default();
    };
    if slot.mode == MODE_ENFORCE {
        // SAFETY: signals the current process; the kernel refuses kernel
        // threads and exiting tasks itself.
        let sent = unsafe { bpf_send_signal(SIGKILL) };
        let action = if sent == 0 { EnforceAction::Killed } else { EnforceAction::KillFailed };
        return Enforcement { action: action as u32, block: slot.block };
    }
    Enforcement { action: EnforceAction::WouldKill as u32, block: slot.block }
}

/// The deepest entry of [`ENFORCED_CGROUPS`] among the current cgroup and
/// its ancestors, with its cgroup id, by the kernel's own helper: what the
/// cgroup connect programs (the fences) use.
#[inline(always)]
fn covering() -> Option<(u64, &'static CgroupEnforcement)> {
    let mut found = None;
    for level in 1..=MAX_LEVELS {
        // SAFETY: no preconditions; 0 past the current cgroup's level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        // SAFETY: the map value lives as long as the entry; read at once.
        if let Some(entry) = unsafe { ENFORCED_CGROUPS.get(id) } {
            found = Some((id, entry));
        }
    }
    found
}

/// As [`covering`], for the tracepoint programs: 5.10 does not give them
/// `bpf_get_current_ancestor_cgroup_id`, so walk up the task's unified
/// cgroup by its kernfs nodes, whose ids are the cgroup ids (5.5+). Leaf
/// first, so the first entry found is the deepest. A level the agent has
/// not written yet may still be a covered pod's, by the uid in its name
/// ([`pod_by_name`]): a new pod's first read is refused too.
#[inline(always)]
fn covering_task(task: u64) -> Option<(u64, &'static CgroupEnforcement)> {
    let css_set = read_ptr(task, kernel_offset!(task_cgroups)).ok()?;
    let cgroup = read_ptr(css_set, kernel_offset!(css_set_dfl_cgrp)).ok()?;
    let mut kn = read_ptr(cgroup, kernel_offset!(cgroup_kn)).ok()?;
    for _ in 0..=MAX_LEVELS {
        let id = read_ptr(kn, kernel_offset!(kernfs_node_id)).ok()?;
        // SAFETY: the map value lives as long as the entry; read at once.
        if let Some(entry) = unsafe { ENFORCED_CGROUPS.get(id) } {
            return Some((id, entry));
        }
        if let Some(entry) = pod_by_name(kn) {
            return Some((id, entry));
        }
        kn = read_ptr(kn, kernel_offset!(kernfs_node_parent)).ok()?;
    }
    None
}

/// The [`ENFORCED_PODS`] entry of the pod whose cgroup kernfs node `kn`
/// is, by the uid in its name as kubelet names it: `pod<uid>` (cgroupfs
/// driver), `kubepods-pod<uid>.slice`, `kubepods-burstable-pod<uid>.slice`
/// or `kubepods-besteffort-pod<uid>.slice` (systemd driver).
/// Its name's head and the uid are read into [`NAME_SCRATCH`], not the
/// stack: the open exits' call chains are near the 512-byte limit.
#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "the key is looked up where it lies, in the scratch map; by value it would be copied to the stack"
)]
fn pod_by_name(kn: u64) -> Option<&'static CgroupEnforcement> {
    let name = read_ptr(kn, kernel_offset!(kernfs_node_name)).ok()?;
    let scratch = NAME_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot, used by one program at a time (tracepoint
    // programs do not nest on a CPU); every byte used is written here.
    let scratch = unsafe { &mut *scratch };
    let head = &mut scratch.head;
    read_str(name, head);
    let at: u64 = if head.starts_with(b"pod") {
        3
    } else if !head.starts_with(b"kubepods-") {
        return None;
    } else if head[9..].starts_with(b"pod") {
        12
    } else if head[9..].starts_with(b"burstable-pod") {
        22
    } else if head[9..].starts_with(b"besteffort-pod") {
        23
    } else {
        return None;
    };
    // SAFETY: kernel memory read through the checked helper; past a short
    // name it reads bytes no uid matches.
    unsafe { bpf_probe_read_kernel_buf((name + at) as *const u8, &mut scratch.uid) }.ok()?;
    // SAFETY: the map value lives as long as the entry; read at once.
    unsafe { ENFORCED_PODS.get(&scratch.uid) }
}

/// A cgroup name's head and the pod uid in it, per CPU ([`pod_by_name`]).
#[map(name = "NAME_SCRATCH")]
static NAME_SCRATCH: PerCpuArray<NameScratch> = PerCpuArray::with_max_entries(1, 0);

/// [`NAME_SCRATCH`]'s slot; kernel-only.
#[repr(C)]
pub struct NameScratch {
    /// The first bytes of the name, NUL-terminated.
    head: [u8; 24],
    /// The uid, as the name spells it.
    uid: [u8; POD_UID_LEN],
    /// Explicit padding.
    _pad: [u8; 4],
}

/// The first slot of `slots` whose exec and binaries filters cover the
/// current process; for a slot that lists binaries, with the number of the
/// entry that lists the executable. `(cgroup, base)`: the entry's cgroup
/// and where its action's slots start in [`BinaryKey::slot`].
#[inline(always)]
fn decide(slots: &[EnforceSlot; ENFORCE_SLOTS], task: u64, (cgroup, base): (u64, u32)) -> Option<EnforceSlot> {
    let needs_origin = slots.iter().any(|s| s.mode != MODE_NONE && s.exec != EXEC_ANY);
    let origin = if needs_origin { origin(task) } else { Origin::Unknown };
    // The executable, read only if a slot lists binaries (once, before the
    // loop: a value cached inside it is not something the verifier follows).
    let lists = slots.iter().any(|s| s.mode != MODE_NONE && s.binaries == BINARIES_LISTED);
    let (dev, ino) = if lists { executable(task) } else { (0, 0) };
    for (index, slot) in slots.iter().enumerate() {
        if slot.mode != MODE_ENFORCE && slot.mode != MODE_DRY_RUN {
            continue;
        }
        let covered = match slot.exec {
            EXEC_ANY => true,
            EXEC_ONLY => origin == Origin::Exec,
            EXEC_NEVER => origin == Origin::NotExec,
            _ => false,
        };
        if !covered {
            continue;
        }
        match slot.binaries {
            BINARIES_ANY => return Some(*slot),
            BINARIES_LISTED if ino != 0 => {
                let key = BinaryKey { cgroup, slot: base + index as u32, dev, ino };
                // SAFETY: the value is copied at once.
                if let Some(block) = unsafe { ENFORCED_BINARIES.get(key) }.copied() {
                    return Some(EnforceSlot { block, ..*slot });
                }
            }
            _ => {}
        }
    }
    None
}

/// `(s_dev, i_ino)` of the file the process runs (`task->mm->exe_file`),
/// or `(0, 0)` for a task without one (a kernel thread, an exiting task).
#[inline(always)]
fn executable(task: u64) -> (u32, u64) {
    identity::file_key(identity::exe_file(task))
}

/// Whether the process was put into its container from outside.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The chain ended before either answer: neither filter matches.
    Unknown,
    /// `kubectl exec`, `crictl exec`, `nsenter`.
    Exec,
    /// The container's entrypoint or its descendants, or a host process.
    NotExec,
}

/// The agent's `detect/origin.rs`, on the live task: walking up, reaching
/// the container's init (from [`CONTAINER_INITS`], else pid 1 of the
/// process's own pid namespace) means not exec'd; reaching a parent in a
/// shallower pid namespace first means exec'd.
#[inline(always)]
fn origin(task: u64) -> Origin {
    let (ns_pid, level) = pid_in_namespace(task);
    if level == 0 {
        return Origin::NotExec;
    }
    // SAFETY: no preconditions; the value is copied at once.
    let init = unsafe { CONTAINER_INITS.get(bpf_get_current_cgroup_id()) }.copied().unwrap_or(0);
    let is_init = |tgid: u32, ns_pid: u32, ns_level: u32| {
        if init != 0 {
            tgid == init
        } else {
            ns_pid == 1 && ns_level == level
        }
    };
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_init(tgid, ns_pid, level) {
        return Origin::NotExec;
    }
    let mut current = task;
    for _ in 0..tokenwatch_common::MAX_ANCESTORS {
        let parent = read_ptr(current, kernel_offset!(task_real_parent)).unwrap_or(0);
        if parent == 0 || parent == current {
            break;
        }
        let (parent_ns_pid, parent_level) = pid_in_namespace(parent);
        let parent_tgid = read_u32(parent, kernel_offset!(task_tgid)).unwrap_or(0);
        if is_init(parent_tgid, parent_ns_pid, parent_level) {
            return Origin::NotExec;
        }
        if parent_level < level {
            return Origin::Exec;
        }
        if parent_tgid <= 1 {
            break;
        }
        current = parent;
    }
    Origin::Unknown
}
