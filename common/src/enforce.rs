//! Enforcement (issue 11): what the agent asks the kernel to refuse, per
//! cgroup, and what the kernel says it did about an event.
//!
//! The agent resolves the pod-level selectors of the policy's `blocks`
//! (namespace, ServiceAccount, labels, image) into one [`CgroupEnforcement`]
//! per pod or container cgroup (keyed by the cgroup v2 id). What only the
//! kernel can know at the syscall, whether the process was exec'd into its
//! container, is a per-slot filter the programs judge themselves; so is
//! which executable the process runs, against the file identities the agent
//! resolved inside the covered containers ([`BinaryKey`]).

use crate::UnknownValue;

/// Slots per action in a [`CgroupEnforcement`]: one per distinct
/// (mode, exec filter) pair is enough (2 x 3), and two spare.
pub const ENFORCE_SLOTS: usize = 8;

/// Name of the map of [`CgroupEnforcement`]s by cgroup v2 id.
pub const ENFORCED_CGROUPS_MAP: &str = "ENFORCED_CGROUPS";

/// Name of the map of pod-level [`CgroupEnforcement`]s by pod uid, as the
/// uid is spelt in the pod's cgroup name ([`POD_UID_LEN`] bytes, dashed for
/// kubelet's cgroupfs driver, with underscores for its systemd driver). It
/// covers a pod the API put on this node from its first instruction,
/// before the agent has seen its cgroup.
pub const ENFORCED_PODS_MAP: &str = "ENFORCED_PODS";

/// Name of the one-entry array whose value is 1 while any entry of
/// [`ENFORCED_CGROUPS_MAP`] or [`ENFORCED_PODS_MAP`] has a token-read slot
/// in force, 0 otherwise: a matched open skips the walk up its cgroups
/// (some thirty kernel reads) on the nodes, most of them, whose policy
/// blocks no read. The agent sets it before it writes such an entry and
/// clears it after it removed the last one, so no entry is ever skipped.
pub const READ_BLOCKS_MAP: &str = "READ_BLOCKS";

/// Length of a pod uid (a UUID in its 8-4-4-4-12 text form).
pub const POD_UID_LEN: usize = 36;
/// Name of the map of containers' first processes (host tgid) by their
/// cgroup v2 id, so the kernel tells exec'd processes apart the way the
/// agent does (`detect/origin.rs`), even in a pod sharing one pid namespace.
pub const CONTAINER_INITS_MAP: &str = "CONTAINER_INITS";

/// [`EnforceSlot::mode`]: the slot is unused.
pub const MODE_NONE: u32 = 0;
/// [`EnforceSlot::mode`]: refuse (connect: `EPERM`; token read: `SIGKILL`).
pub const MODE_ENFORCE: u32 = 1;
/// [`EnforceSlot::mode`]: only report what would have been refused.
pub const MODE_DRY_RUN: u32 = 2;

/// [`EnforceSlot::exec`]: every process.
pub const EXEC_ANY: u32 = 0;
/// [`EnforceSlot::exec`]: only processes exec'd into the container.
pub const EXEC_ONLY: u32 = 1;
/// [`EnforceSlot::exec`]: only processes known not to be exec'd.
pub const EXEC_NEVER: u32 = 2;

/// [`EnforceSlot::binaries`]: whatever the process runs.
pub const BINARIES_ANY: u32 = 0;
/// [`EnforceSlot::binaries`]: only processes whose executable is in
/// [`ENFORCED_BINARIES_MAP`] under this cgroup entry and slot.
pub const BINARIES_LISTED: u32 = 1;

/// Name of the map of the executables block entries name, by
/// [`BinaryKey`]; the value is the number of the entry that names it.
pub const ENFORCED_BINARIES_MAP: &str = "ENFORCED_BINARIES";

/// One executable a slot with [`BINARIES_LISTED`] covers, as the kernel
/// knows the file: the device of its superblock and its inode number (on
/// overlayfs, the overlay's own, which `stat` does not always report: the
/// agent reads the device from the mount). Scoped to the cgroup entry and
/// the slot, so a file two pods share (a hostPath) is covered only where
/// an entry lists it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BinaryKey {
    /// The cgroup v2 id of the [`CgroupEnforcement`] that holds the slot.
    pub cgroup: u64,
    /// The slot: its index in `token_read`, or `ENFORCE_SLOTS` plus its
    /// index in `connect` (see [`BinaryKey::CONNECT_SLOTS`]).
    pub slot: u32,
    /// `super_block.s_dev` of the file (kernel encoding).
    pub dev: u32,
    /// `inode.i_ino`.
    pub ino: u64,
}

/// One block entry as it applies to one cgroup and one action.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnforceSlot {
    /// The agent's number for the policy's block entry (named in the alert).
    pub block: u32,
    /// `MODE_*`.
    pub mode: u32,
    /// `EXEC_*`: which processes the entry covers.
    pub exec: u32,
    /// `BINARIES_*`: whether only listed executables are covered.
    pub binaries: u32,
}

/// What to refuse in one cgroup and its descendants. Slots are judged in
/// order, the first whose exec and binaries filters match decides: the
/// agent puts the enforcing entries first, so a process is refused if any
/// entry refuses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CgroupEnforcement {
    /// Connects to a watched API-server endpoint.
    pub connect: [EnforceSlot; ENFORCE_SLOTS],
    /// Opens of a watched token file.
    pub token_read: [EnforceSlot; ENFORCE_SLOTS],
}

impl BinaryKey {
    /// Where [`CgroupEnforcement::token_read`]'s slots start in
    /// [`BinaryKey::slot`].
    pub const TOKEN_READ_SLOTS: u32 = 0;
    /// Where [`CgroupEnforcement::connect`]'s slots start in
    /// [`BinaryKey::slot`], so the two actions' slots never share a key.
    pub const CONNECT_SLOTS: u32 = ENFORCE_SLOTS as u32;
}

/// What the kernel did about the event, carried by every event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EnforceAction {
    /// Nothing: no block entry covers it.
    #[default]
    None = 0,
    /// The connect was refused with `EPERM`.
    Blocked = 1,
    /// A dry-run entry covers the connect: it went on.
    WouldBlock = 2,
    /// The process got `SIGKILL` at the open's return, before it could
    /// read a byte.
    Killed = 3,
    /// A dry-run entry covers the read: the process lives.
    WouldKill = 4,
    /// An enforcing entry covers the read, and the kernel refused the
    /// `SIGKILL` (the opener is exiting, or is the node's init): the
    /// process lives and may read.
    KillFailed = 5,
}

impl TryFrom<u32> for EnforceAction {
    type Error = UnknownValue;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            0 => Ok(EnforceAction::None),
            1 => Ok(EnforceAction::Blocked),
            2 => Ok(EnforceAction::WouldBlock),
            3 => Ok(EnforceAction::Killed),
            4 => Ok(EnforceAction::WouldKill),
            5 => Ok(EnforceAction::KillFailed),
            other => Err(UnknownValue(other)),
        }
    }
}

/// The enforcement part of an event: which action, by which block entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enforcement {
    /// An [`EnforceAction`] discriminant.
    pub action: u32,
    /// [`EnforceSlot::block`] of the entry that decided (0 with no action).
    pub block: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY for all: repr(C), integers and arrays only, padding explicit.
    unsafe impl aya::Pod for super::CgroupEnforcement {}
    unsafe impl aya::Pod for super::EnforceSlot {}
    unsafe impl aya::Pod for super::BinaryKey {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<EnforceSlot>(), 16);
        assert_eq!(size_of::<CgroupEnforcement>(), 2 * ENFORCE_SLOTS * 16);
        assert_eq!(size_of::<Enforcement>(), 8);
        assert_eq!(size_of::<BinaryKey>(), 24);
    }

    #[test]
    fn actions_decode_checked() {
        assert_eq!(EnforceAction::try_from(1), Ok(EnforceAction::Blocked));
        assert_eq!(EnforceAction::try_from(3), Ok(EnforceAction::Killed));
        assert_eq!(EnforceAction::try_from(5), Ok(EnforceAction::KillFailed));
        assert_eq!(EnforceAction::try_from(6), Err(UnknownValue(6)));
    }
}
