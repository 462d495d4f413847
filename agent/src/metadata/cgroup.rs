//! Container and pod identity from cgroup names, for every shape real nodes
//! use:
//!
//! | driver | pod directory | container directory |
//! |---|---|---|
//! | cgroupfs | `/kubepods/<qos>/pod<uid>` (`/kubepods/pod<uid>` for Guaranteed) | `<id>` |
//! | systemd | `kubepods-<qos>-pod<uid_with_underscores>.slice` | `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` |
//!
//! The kernel sends the leaf directory and its parent (on the unified
//! hierarchy and on a v1 controller's), which is all these shapes need: it
//! is read at the syscall, so a process that exits at once is still placed.

/// Which runtime named the container's cgroup, when the name says so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// `cri-containerd-<id>.scope`.
    Containerd,
    /// `crio-<id>.scope`.
    CriO,
    /// `docker-<id>.scope`.
    Docker,
}

impl Runtime {
    /// Lower-case name for alerts.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri-o",
            Runtime::Docker => "docker",
        }
    }
}

/// What the cgroup names say about a process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// The 64-hex-digit container id.
    pub container_id: Option<String>,
    /// The pod uid, with dashes.
    pub pod_uid: Option<String>,
    /// The runtime, when the systemd scope name tells.
    pub runtime: Option<Runtime>,
}

/// Prefixes of systemd scope units that wrap a container id.
const SCOPES: &[(&str, Runtime)] =
    &[("cri-containerd-", Runtime::Containerd), ("crio-", Runtime::CriO), ("docker-", Runtime::Docker)];

/// The container id (and runtime, if named) that a cgroup leaf carries.
pub fn container_of(leaf: &str) -> Option<(&str, Option<Runtime>)> {
    let (id, runtime) = match leaf.strip_suffix(".scope") {
        Some(unit) => SCOPES.iter().find_map(|(prefix, rt)| unit.strip_prefix(prefix).map(|id| (id, Some(*rt))))?,
        None => (leaf, None),
    };
    is_container_id(id).then_some((id, runtime))
}

/// The container id a cgroup leaf name carries, if any.
pub fn container_id(leaf: &str) -> Option<&str> {
    container_of(leaf).map(|(id, _)| id)
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The pod uid a pod-level cgroup directory name carries, dashed.
pub fn pod_uid(dir: &str) -> Option<String> {
    let raw = match dir.strip_suffix(".slice") {
        // kubepods-besteffort-pod<uid>.slice, kubepods-pod<uid>.slice
        Some(slice) => slice.rsplit_once("-pod").map(|(_, uid)| uid)?.replace('_', "-"),
        None => dir.strip_prefix("pod")?.to_owned(),
    };
    is_uid(&raw).then_some(raw)
}

/// Whether `uid` is a pod uid as Kubernetes writes it (8-4-4-4-12 hex).
pub fn is_uid(uid: &str) -> bool {
    let groups: Vec<&str> = uid.split('-').collect();
    groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Identity from leaf/parent pairs (unified first); the first pair naming a
/// container wins.
pub fn identify<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> CgroupIdentity {
    pairs
        .into_iter()
        .find_map(|(leaf, parent)| {
            let (id, runtime) = container_of(leaf)?;
            Some(CgroupIdentity { container_id: Some(id.to_owned()), pod_uid: pod_uid(parent), runtime })
        })
        .unwrap_or_default()
}

/// Identity from a full cgroup path such as a line of `/proc/<pid>/cgroup`.
pub fn identify_path(path: &str) -> CgroupIdentity {
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let leaf = parts.next().unwrap_or_default();
    let parent = parts.next().unwrap_or_default();
    identify([(leaf, parent)])
}

/// The pod uid anywhere in a full cgroup path: a container's processes
/// may sit in a cgroup of their own below the container's (systemd in a
/// container: `.../cri-containerd-<id>.scope/init.scope`).
pub fn pod_uid_in_path(path: &str) -> Option<String> {
    path.split('/').rev().find_map(pod_uid)
}

/// The first container id among cgroup names (unified leaf first).
pub fn container_id_of<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    names.into_iter().find_map(container_id)
}

#[cfg(test)]
mod tests;
