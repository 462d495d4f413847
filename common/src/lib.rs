//! The plain-old-data types that tokenwatch's eBPF programs and its userspace
//! agent exchange through maps, globals and the ring buffer.
//!
//! Every type here is `#[repr(C)]`, holds only integers and arrays, and spells
//! out its padding, so the kernel side (built for `bpfel-unknown-none`) and the
//! user side agree on every byte without a shared compiler. Enumerations travel
//! as integers and are decoded with `TryFrom`, never transmuted.
#![no_std]

pub mod counters;
pub mod enforce;
pub mod event;
pub mod keys;
pub mod offsets;

pub use counters::{counter_slot, Counter, Hook, COUNTER_SLOTS};
pub use enforce::{
    BinaryKey, CgroupEnforcement, EnforceAction, EnforceSlot, Enforcement, BINARIES_ANY, BINARIES_LISTED,
    CONTAINER_INITS_MAP, ENFORCED_BINARIES_MAP, ENFORCED_CGROUPS_MAP, ENFORCED_PODS_MAP, ENFORCE_SLOTS, EXEC_ANY,
    EXEC_NEVER, EXEC_ONLY, MODE_DRY_RUN, MODE_ENFORCE, MODE_NONE, POD_UID_LEN, READ_BLOCKS_MAP,
};
pub use event::{
    CgroupNames, ConnectEvent, ConnectVia, EventHeader, EventKind, OpenEvent, OpenSyscall, ResolvedPath, TaskRef,
    UnknownValue,
};
pub use keys::{DevWatch, EndpointKey, FileKey, DEV_EXACT_FILES, DEV_TOKEN_VOLUME, TMPFS_MAGIC, TOKEN_NAME_LEN};
pub use offsets::KernelOffsets;

/// Length of a task's `comm`, as the kernel defines `TASK_COMM_LEN`.
pub const COMM_LEN: usize = 16;
/// Bytes kept of the path string a process passed to `open*`.
pub const REQUESTED_PATH_LEN: usize = 256;
/// Bytes kept of one path component (a dentry name) of the opened file.
pub const PATH_COMPONENT_LEN: usize = 64;
/// Bytes of the executable's file name kept in every event, its NUL
/// included (31 of the name at most; a longer name is cut).
pub const EXE_NAME_LEN: usize = 32;
/// Steps of the in-kernel path walk for an opened file: one per component and
/// one per mount crossed; deeper paths are marked truncated. A token path is
/// six components and a few mounts deep.
pub const MAX_PATH_COMPONENTS: usize = 20;
/// Ancestors (parent, grandparent, ...) recorded in the kernel with each
/// event, so the chain survives processes that exit at once.
pub const MAX_ANCESTORS: usize = 8;
/// Bytes kept of a cgroup directory name, NUL included. The systemd cgroup
/// driver (kubeadm's default) names a container's cgroup
/// `cri-containerd-<64 hex>.scope` (85 bytes), `crio-<id>.scope` or
/// `docker-<id>.scope`: all must fit whole, or no container id is found.
pub const CGROUP_NAME_LEN: usize = 128;

// The longest container cgroup name a runtime makes, with its NUL.
const _: () = assert!("cri-containerd-".len() + 64 + ".scope".len() < CGROUP_NAME_LEN);

/// `AF_INET`, as every Linux ABI defines it.
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as every Linux ABI defines it.
pub const AF_INET6: u16 = 10;

/// Name of the ring buffer map the programs send matched events through.
pub const EVENTS_MAP: &str = "EVENTS";

/// A record submitted within this long of the last record that could wake
/// the agent does not wake it (`BPF_RB_NO_WAKEUP`): a wakeup is an
/// interrupt and a scheduler call inside the program's run (most of a
/// matched connect's cost when the agent has caught up), and a burst needs
/// one. The agent drains again on its own instead ([`RING_REDRAIN_NS`]).
pub const RING_QUIET_NS: u64 = 500_000;
/// After a drain that found records, the agent drains again this long
/// later, and so on until a drain finds none. Twice [`RING_QUIET_NS`]: a
/// quiet record comes within that of a record that could wake the agent,
/// so the agent is still draining when it lands, with half a millisecond
/// to spare for the record's commit (a commit later than that, on a vCPU
/// the hypervisor stalled, waits for the agent's idle poll, 100 ms).
pub const RING_REDRAIN_NS: u64 = 2 * RING_QUIET_NS;
/// Name of the map of watched token files, keyed by [`FileKey`].
pub const WATCHED_FILES_MAP: &str = "WATCHED_FILES";
/// Name of the map of watched devices, keyed by kernel-encoded device.
pub const WATCHED_DEVS_MAP: &str = "WATCHED_DEVS";
/// Name of the one-entry array whose value is 1 while some device in
/// [`WATCHED_DEVS_MAP`] has a major number (a disk), 0 otherwise. Token
/// volumes are tmpfs, whose devices have none, so on most nodes an open of
/// a file on a disk is "not watched" without a hash lookup. The agent sets
/// it before it adds such a device and clears it after it removed the
/// last one, so no watched file is ever skipped.
pub const DISK_WATCHES_MAP: &str = "DISK_WATCHES";
/// Bits of the minor number in the kernel's device encoding (`s_dev`):
/// a device with nothing above them has no major number.
pub const MINOR_BITS: u32 = 20;

/// Whether a kernel-encoded device has a major number: a disk, not a tmpfs
/// (whose files the kernel checks by their volume's layout too). The one
/// test both sides of [`DISK_WATCHES_MAP`] make: the agent to set the
/// switch, the open exit to skip the lookup while it is off.
#[inline(always)]
pub const fn is_disk(dev: u32) -> bool {
    dev >> MINOR_BITS != 0
}
/// Name of the set of token file names ([`TOKEN_NAME_LEN`] bytes,
/// NUL-padded) a file on a token volume not yet watched is matched by.
pub const TOKEN_NAMES_MAP: &str = "TOKEN_NAMES";
/// Name of the map of watched API-server endpoints, keyed by [`EndpointKey`].
pub const WATCHED_ENDPOINTS_MAP: &str = "WATCHED_ENDPOINTS";
/// Name of the per-CPU array of [`Counter`]s.
pub const COUNTERS_MAP: &str = "COUNTERS";
/// Name of the global holding the [`KernelOffsets`] resolved from BTF.
pub const OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";
/// Name of the global holding the agent's own tgid, whose opens are not events
/// (it opens token files `O_PATH` to learn their inodes).
pub const AGENT_TGID_GLOBAL: &str = "AGENT_TGID";
