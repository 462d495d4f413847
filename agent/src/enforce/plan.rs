//! From the policy's block entries and the node's pods to what the kernel
//! must hold: one [`CgroupEnforcement`] per covered pod cgroup (entries
//! that select on the image: per container), the containers' first
//! processes, the pod directories that need a connect fence, and which
//! executables to look up in which containers for entries that list
//! `binaries` ([`BinaryScope`]; `binaries.rs` resolves them). Pure, so
//! every decision is unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use tokenwatch_common::{
    BinaryKey, CgroupEnforcement, EnforceSlot, BINARIES_ANY, BINARIES_LISTED, ENFORCE_SLOTS, EXEC_ANY, EXEC_NEVER,
    EXEC_ONLY, MODE_DRY_RUN, MODE_ENFORCE, MODE_NONE,
};
use tokenwatch_proto::v1::KubernetesContext;

use super::BlockNames;
use crate::detect::policy::{BlockSpec, Glob};

/// A pod on the node as the enforcer sees it.
#[derive(Clone, Debug, Default)]
pub struct Target {
    /// The pod cgroup's v2 id.
    pub cgroup: u64,
    /// The pod cgroup's directory.
    pub dir: PathBuf,
    /// Pod-level identity (no container, no image).
    pub kubernetes: KubernetesContext,
    /// Its containers.
    pub containers: Vec<ContainerTarget>,
}

/// A container of a [`Target`].
#[derive(Clone, Debug, Default)]
pub struct ContainerTarget {
    /// The container cgroup's v2 id.
    pub cgroup: u64,
    /// Its identity as an alert would give it (image included).
    pub kubernetes: KubernetesContext,
    /// Host pid of its first process, when the runtime said.
    pub init_pid: Option<u32>,
    /// Host pid of a process whose root is the container's file system
    /// (the init, else any process in its cgroup): where `binaries` are
    /// resolved.
    pub root_pid: Option<u32>,
}

/// The executables one entry lists, to be found for one slot of one
/// cgroup's [`CgroupEnforcement`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinaryScope {
    /// The cgroup entry holding the slot.
    pub cgroup: u64,
    /// The slot, as [`BinaryKey::slot`] numbers it.
    pub slot: u32,
    /// The entry's number, reported when the kernel acts.
    pub block: u32,
    /// Its `binaries`.
    pub globs: Vec<Glob>,
    /// Processes (one per container) whose roots the paths resolve in.
    pub roots: Vec<u32>,
}

impl BinaryScope {
    /// The kernel key of the file `(dev, ino)` for this scope.
    pub fn key(&self, (dev, ino): (u32, u64)) -> BinaryKey {
        BinaryKey { cgroup: self.cgroup, slot: self.slot, dev, ino }
    }
}

/// What the kernel must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// By cgroup v2 id.
    pub entries: BTreeMap<u64, CgroupEnforcement>,
    /// Covered containers' first processes, by cgroup v2 id.
    pub inits: BTreeMap<u64, u32>,
    /// Pod directories whose connects a block entry covers.
    pub fences: BTreeSet<PathBuf>,
    /// (namespace/pod, block id) pairs, for logs.
    pub covered: BTreeSet<(String, String)>,
    /// What to resolve for slots that list binaries, in judging order.
    pub scopes: Vec<BinaryScope>,
    /// What the scopes resolved to (filled by the enforcer, not [`plan`]):
    /// the value is the entry's number.
    pub binaries: BTreeMap<BinaryKey, u32>,
    /// Pod-level entries by pod uid, for every pod the API put on the node
    /// ([`pod_entries`]): the kernel applies them by the uid in a cgroup's
    /// name, so they hold before the pod's cgroup is found.
    pub pods: BTreeMap<String, CgroupEnforcement>,
}

impl Plan {
    /// Nothing to enforce anywhere.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.fences.is_empty() && self.pods.is_empty()
    }

    /// Whether some entry refuses (or, dry-run, reports) token reads: only
    /// then does a matched open walk its cgroups for one.
    pub fn blocks_reads(&self) -> bool {
        self.entries
            .values()
            .chain(self.pods.values())
            .any(|entry| entry.token_read.iter().any(|slot| slot.mode == MODE_ENFORCE || slot.mode == MODE_DRY_RUN))
    }
}

/// The plan for `blocks` (each with whether it refuses) over `targets`.
pub fn plan(blocks: &[(&BlockSpec, bool)], names: &BlockNames, targets: &[Target]) -> Plan {
    let numbered: Vec<(u32, &BlockSpec, bool)> =
        blocks.iter().map(|(block, enforce)| (names.number(&block.id), *block, *enforce)).collect();
    let mut plan = Plan::default();
    for target in targets {
        let pod_blocks = matching(&numbered, &target.kubernetes);
        let (pod_entry, pod_listed) = slots(&pod_blocks);
        let mut fence = has_connect(&pod_entry);
        let mut covered = !pod_blocks.is_empty();
        if covered {
            plan.entries.insert(target.cgroup, pod_entry);
            let roots = target.containers.iter().filter_map(|c| c.root_pid).collect::<Vec<_>>();
            plan.scopes.extend(scopes(target.cgroup, &pod_listed, &roots));
        }
        for container in &target.containers {
            let blocks = matching(&numbered, &container.kubernetes);
            let (entry, listed) = slots(&blocks);
            // The same slots may list other files (an image entry's
            // binaries sharing the pod entry's slot): the container then
            // needs its own entry and keys as well.
            if entry != pod_entry || listed != pod_listed {
                plan.entries.insert(container.cgroup, entry);
                plan.scopes.extend(scopes(
                    container.cgroup,
                    &listed,
                    &container.root_pid.into_iter().collect::<Vec<_>>(),
                ));
            }
            fence |= has_connect(&entry);
            covered |= !blocks.is_empty();
            for (_, block, _) in blocks.iter().chain(&pod_blocks) {
                let pod = format!("{}/{}", target.kubernetes.namespace, target.kubernetes.pod);
                plan.covered.insert((pod, block.id.clone()));
            }
        }
        if covered {
            for container in &target.containers {
                if let Some(pid) = container.init_pid {
                    plan.inits.insert(container.cgroup, pid);
                }
            }
        }
        if fence {
            plan.fences.insert(target.dir.clone());
        }
    }
    plan
}

/// The pod-level entries of `pods` (as the API describes them, no
/// container yet) that `blocks` cover, by uid. Entries that select on the
/// image or list binaries need the container: they take hold with the
/// pod's cgroup entry, one reconcile after the cgroup appears.
pub fn pod_entries(
    blocks: &[(&BlockSpec, bool)],
    names: &BlockNames,
    pods: &[KubernetesContext],
) -> BTreeMap<String, CgroupEnforcement> {
    let numbered: Vec<(u32, &BlockSpec, bool)> = blocks
        .iter()
        .filter(|(block, _)| block.matcher.images.is_none() && block.matcher.binaries.is_none())
        .map(|(block, enforce)| (names.number(&block.id), *block, *enforce))
        .collect();
    pods.iter()
        .filter(|pod| !pod.pod_uid.is_empty())
        .filter_map(|pod| {
            let blocks = matching(&numbered, pod);
            (!blocks.is_empty()).then(|| (pod.pod_uid.clone(), slots(&blocks).0))
        })
        .collect()
}

fn matching<'a>(
    blocks: &[(u32, &'a BlockSpec, bool)],
    kubernetes: &KubernetesContext,
) -> Vec<(u32, &'a BlockSpec, bool)> {
    blocks.iter().filter(|(_, block, _)| block.matcher.matches_pod(kubernetes)).copied().collect()
}

/// One entry's `binaries` feeding one slot: (slot as [`BinaryKey::slot`]
/// numbers it, entry number, globs).
type Listed<'a> = Vec<(u32, u32, &'a [Glob])>;

/// Slots in the order the kernel judges them: refusing entries first, then
/// dry-run ones, each in file order. There is one slot per (mode, exec
/// filter) pair, so 6 always do: an entry without `binaries` takes the
/// pair's slot for every executable (and the entries listing binaries
/// there add nothing: it covers them already); entries with `binaries`
/// share the pair's slot, each adding its executables (the [`Listed`]).
fn slots<'a>(blocks: &[(u32, &'a BlockSpec, bool)]) -> (CgroupEnforcement, Listed<'a>) {
    let mut out = CgroupEnforcement::default();
    let mut listed = Vec::new();
    for pass in [true, false] {
        for (number, block, _) in blocks.iter().filter(|(_, _, enforce)| *enforce == pass) {
            let exec = match block.matcher.exec {
                None => EXEC_ANY,
                Some(true) => EXEC_ONLY,
                Some(false) => EXEC_NEVER,
            };
            let mode = if pass { MODE_ENFORCE } else { MODE_DRY_RUN };
            let globs = block.matcher.binaries.as_deref();
            let binaries = if globs.is_some() { BINARIES_LISTED } else { BINARIES_ANY };
            let slot = EnforceSlot { block: *number, mode, exec, binaries };
            for (wanted, slots, base) in [
                (block.actions.token_read, &mut out.token_read, BinaryKey::TOKEN_READ_SLOTS),
                (block.actions.apiserver_connect, &mut out.connect, BinaryKey::CONNECT_SLOTS),
            ] {
                if !wanted {
                    continue;
                }
                let Some(index) = push(slots, slot) else { continue };
                let at = base + index;
                if slots[index as usize].binaries == BINARIES_ANY {
                    listed.retain(|(slot, _, _)| *slot != at);
                } else if let Some(globs) = globs {
                    listed.push((at, *number, globs));
                }
            }
        }
    }
    (out, listed)
}

/// Puts `slot` in the slot of its (mode, exec) pair, or a free one; returns
/// the index when the slot now covers what `slot` asks (an existing slot
/// for every executable already covers a listing entry: `None`).
fn push(slots: &mut [EnforceSlot; ENFORCE_SLOTS], slot: EnforceSlot) -> Option<u32> {
    let index = match slots.iter().position(|s| s.mode == slot.mode && s.exec == slot.exec) {
        Some(taken) if slots[taken].binaries == BINARIES_ANY => return None,
        Some(taken) => {
            if slot.binaries == BINARIES_ANY {
                slots[taken] = slot;
            }
            taken
        }
        None => {
            let free = slots.iter().position(|s| s.mode == MODE_NONE)?;
            slots[free] = slot;
            free
        }
    };
    u32::try_from(index).ok()
}

/// The scopes of one cgroup entry's listing slots.
fn scopes(cgroup: u64, listed: &Listed<'_>, roots: &[u32]) -> Vec<BinaryScope> {
    listed
        .iter()
        .map(|&(slot, block, globs)| BinaryScope { cgroup, slot, block, globs: globs.to_vec(), roots: roots.to_vec() })
        .collect()
}

fn has_connect(entry: &CgroupEnforcement) -> bool {
    entry.connect.iter().any(|s| s.mode != MODE_NONE)
}

#[cfg(test)]
mod tests;
