//! Ring-buffer records to plain Rust values, with every length and enum
//! checked: a record the agent does not understand is an error, never a guess.

use std::{
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use tokenwatch_common::{
    CgroupNames, ConnectEvent, ConnectVia, EnforceAction, Enforcement, EventHeader, EventKind, OpenEvent, OpenSyscall,
    ResolvedPath, UnknownValue, AF_INET, AF_INET6,
};

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the struct its kind announces.
    #[error("{kind} record is {got} bytes, expected {want}")]
    Short {
        /// Which struct.
        kind: &'static str,
        /// Bytes received.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// Unknown event kind.
    #[error("unknown event kind {}", .0 .0)]
    Kind(UnknownValue),
    /// Unknown open syscall.
    #[error("unknown open syscall {}", .0 .0)]
    Syscall(UnknownValue),
    /// Unknown address family.
    #[error("unknown address family {0}")]
    Family(u16),
    /// Unknown connect hook.
    #[error("unknown connect hook {}", .0 .0)]
    Via(UnknownValue),
    /// Unknown enforcement action.
    #[error("unknown enforcement action {}", .0 .0)]
    Action(UnknownValue),
}

/// What the kernel did about an event because a block entry of the policy
/// covers it (issue 11); `EnforceAction::None` for every other event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforced {
    /// Refused, killed, or only reported (dry run).
    pub action: EnforceAction,
    /// The agent's number for the block entry (`detect::policy::BlockNames`).
    pub block: u32,
}

/// Who made the syscall, from the event header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `bpf_ktime_get_boot_ns()` at the syscall's return.
    pub boot_time_ns: u64,
    /// Process id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Unified-hierarchy cgroup id.
    pub cgroup_id: u64,
    /// The process's start time (boot clock, ns): with `pid` and `exec_id`
    /// it names one program run, the key of the process cache.
    pub process_start_ns: u64,
    /// The task's exec generation (`self_exec_id`).
    pub exec_id: u32,
    /// Kernel short name of the task.
    pub comm: String,
    /// Cgroup directory names: unified leaf, its parent, v1 leaf, its parent.
    pub cgroup_names: [String; 4],
    /// Pid inside the process's own pid namespace.
    pub ns_pid: u32,
    /// Depth of that pid namespace (0 = the host's).
    pub ns_level: u32,
    /// Parent first, as the kernel saw them at the event.
    pub ancestors: Vec<KernelAncestor>,
    /// The executable as the kernel saw it at the event.
    pub executable: KernelExecutable,
}

/// The file a process runs (`mm->exe_file`), read with the event: what
/// names a process that is gone before `/proc` can be read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelExecutable {
    /// Its device, in the kernel's encoding (`s_dev`); 0 when unknown.
    pub dev: u32,
    /// Its inode.
    pub ino: u64,
    /// Its file name (the last component of its path), cut to
    /// `EXE_NAME_LEN` bytes.
    pub name: String,
}

/// An ancestor as the kernel saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelAncestor {
    /// Host pid.
    pub pid: u32,
    /// Pid in its own pid namespace.
    pub ns_pid: u32,
    /// Depth of its pid namespace.
    pub ns_level: u32,
    /// Its short name.
    pub comm: String,
}

/// A watched token file was opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRecord {
    /// Who.
    pub identity: Identity,
    /// Which syscall.
    pub syscall: OpenSyscall,
    /// `dirfd` argument.
    pub dirfd: i32,
    /// Open flags.
    pub flags: u64,
    /// Returned fd.
    pub fd: i64,
    /// Kernel-encoded device.
    pub dev: u32,
    /// Inode.
    pub ino: u64,
    /// The string the process passed.
    pub requested_path: String,
    /// The file's path, rebuilt in the kernel (relative to the task's root).
    pub resolved_path: String,
    /// The rebuilt path stopped short of the root.
    pub resolved_path_truncated: bool,
    /// Whether the process was killed for it.
    pub enforced: Enforced,
}

/// A watched API-server endpoint was dialled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectRecord {
    /// Who.
    pub identity: Identity,
    /// Destination as dialled.
    pub destination: SocketAddr,
    /// Socket fd.
    pub fd: i32,
    /// `connect(2)` result: 0 or `-errno` (0 when `via` is the cgroup hook,
    /// which runs before there is a result).
    pub result: i64,
    /// Which hook saw it.
    pub via: ConnectVia,
    /// Whether the connect was refused for it.
    pub enforced: Enforced,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelEvent {
    /// Token file opened.
    Open(OpenRecord),
    /// API server dialled.
    Connect(ConnectRecord),
}

impl KernelEvent {
    /// Who did it.
    pub fn identity(&self) -> &Identity {
        match self {
            KernelEvent::Open(r) => &r.identity,
            KernelEvent::Connect(r) => &r.identity,
        }
    }

    /// What the kernel did about it.
    pub fn enforced(&self) -> Enforced {
        match self {
            KernelEvent::Open(r) => r.enforced,
            KernelEvent::Connect(r) => r.enforced,
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent, DecodeError> {
    let kind_bytes: [u8; 4] = bytes.get(..4).and_then(|b| b.try_into().ok()).ok_or(DecodeError::Short {
        kind: "event",
        got: bytes.len(),
        want: size_of::<EventHeader>(),
    })?;
    match EventKind::try_from(u32::from_ne_bytes(kind_bytes)).map_err(DecodeError::Kind)? {
        EventKind::Open => view(bytes, "open", decode_open)?.map(KernelEvent::Open),
        EventKind::Connect => view(bytes, "connect", decode_connect)?.map(KernelEvent::Connect),
    }
}

/// Lends `decode` the plain-old-data struct at the start of the record,
/// after checking its length: in place when the record is aligned for it
/// (ring-buffer records are 8-byte aligned), else from a copy. An open
/// event is several KiB, and copying it was a tenth of the agent's CPU
/// under a flood (perf, `cargo xtask bench`).
fn view<T: aya::Pod, R>(bytes: &[u8], kind: &'static str, decode: impl FnOnce(&T) -> R) -> Result<R, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short { kind, got: bytes.len(), want: size_of::<T>() });
    }
    let at = bytes.as_ptr().cast::<T>();
    if at.is_aligned() {
        // SAFETY: length and alignment checked; T is Pod (integers and
        // arrays only, every bit pattern valid); borrowed from `bytes` for
        // the call only.
        Ok(decode(unsafe { &*at }))
    } else {
        // SAFETY: length checked; T is Pod; read_unaligned makes no
        // alignment assumption.
        Ok(decode(&unsafe { at.read_unaligned() }))
    }
}

fn decode_open(event: &OpenEvent) -> Result<OpenRecord, DecodeError> {
    Ok(OpenRecord {
        identity: identity(&event.header),
        syscall: OpenSyscall::try_from(event.syscall).map_err(DecodeError::Syscall)?,
        dirfd: event.dirfd,
        flags: event.flags,
        fd: event.result,
        dev: event.dev,
        ino: event.ino,
        requested_path: c_string(&event.requested_path),
        resolved_path: join_path(&event.path),
        resolved_path_truncated: event.path.truncated != 0,
        enforced: enforced(&event.enforcement)?,
    })
}

fn decode_connect(event: &ConnectEvent) -> Result<ConnectRecord, DecodeError> {
    let ip = match event.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(event.addr[0], event.addr[1], event.addr[2], event.addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(event.addr)),
        other => return Err(DecodeError::Family(other)),
    };
    Ok(ConnectRecord {
        identity: identity(&event.header),
        destination: SocketAddr::new(ip, event.port),
        fd: event.fd,
        result: event.result,
        via: ConnectVia::try_from(event.via).map_err(DecodeError::Via)?,
        enforced: enforced(&event.enforcement)?,
    })
}

fn enforced(raw: &Enforcement) -> Result<Enforced, DecodeError> {
    Ok(Enforced { action: EnforceAction::try_from(raw.action).map_err(DecodeError::Action)?, block: raw.block })
}

fn identity(header: &EventHeader) -> Identity {
    let CgroupNames { v2_leaf, v2_parent, v1_leaf, v1_parent } = &header.cgroups;
    let count = usize::try_from(header.ancestor_count).unwrap_or(usize::MAX).min(header.ancestors.len());
    Identity {
        boot_time_ns: header.boot_time_ns,
        pid: header.tgid,
        tid: header.tid,
        uid: header.uid,
        gid: header.gid,
        cgroup_id: header.cgroup_id,
        process_start_ns: header.process_start_ns,
        exec_id: header.exec_id,
        comm: c_string(&header.comm),
        cgroup_names: [c_string(v2_leaf), c_string(v2_parent), c_string(v1_leaf), c_string(v1_parent)],
        ns_pid: header.ns_pid,
        ns_level: header.ns_level,
        ancestors: header.ancestors[..count]
            .iter()
            .map(|a| KernelAncestor { pid: a.tgid, ns_pid: a.ns_pid, ns_level: a.ns_level, comm: c_string(&a.comm) })
            .collect(),
        executable: KernelExecutable { dev: header.exe_dev, ino: header.exe_ino, name: c_string(&header.exe_name) },
    }
}

/// Joins the leaf-first components into an absolute path, skipping the
/// empty slots that mark mount crossings.
fn join_path(path: &ResolvedPath) -> String {
    let depth = usize::try_from(path.depth).unwrap_or(usize::MAX).min(path.components.len());
    let mut out = String::new();
    for component in path.components[..depth].iter().rev().filter(|c| c[0] != 0) {
        out.push('/');
        out.push_str(&c_string(component));
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// The bytes up to the first NUL, lossily as UTF-8.
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests;
