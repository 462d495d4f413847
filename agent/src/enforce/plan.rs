//! From the policy's block entries and the node's pods to what the kernel
//! must hold: one [`CgroupEnforcement`] per covered pod cgroup (entries
//! that select on the image: per container), the containers' first
//! processes, and the pod directories that need a connect fence. Pure, so
//! every decision is unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use tokenwatch_common::{
    CgroupEnforcement, EnforceSlot, EXEC_ANY, EXEC_NEVER, EXEC_ONLY, MODE_DRY_RUN, MODE_ENFORCE, MODE_NONE,
};
use tokenwatch_proto::v1::KubernetesContext;

use super::BlockNames;
use crate::detect::policy::BlockSpec;

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
}

impl Plan {
    /// Nothing to enforce anywhere.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.fences.is_empty()
    }
}

/// The plan for `blocks` (each with whether it refuses) over `targets`.
pub fn plan(blocks: &[(&BlockSpec, bool)], names: &BlockNames, targets: &[Target]) -> Plan {
    let numbered: Vec<(u32, &BlockSpec, bool)> =
        blocks.iter().map(|(block, enforce)| (names.number(&block.id), *block, *enforce)).collect();
    let mut plan = Plan::default();
    for target in targets {
        let pod_blocks = matching(&numbered, &target.kubernetes);
        let pod_entry = slots(&pod_blocks);
        let mut fence = has_connect(&pod_entry);
        let mut covered = !pod_blocks.is_empty();
        if covered {
            plan.entries.insert(target.cgroup, pod_entry);
        }
        for container in &target.containers {
            let blocks = matching(&numbered, &container.kubernetes);
            let entry = slots(&blocks);
            if entry != pod_entry {
                plan.entries.insert(container.cgroup, entry);
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

fn matching<'a>(
    blocks: &[(u32, &'a BlockSpec, bool)],
    kubernetes: &KubernetesContext,
) -> Vec<(u32, &'a BlockSpec, bool)> {
    blocks.iter().filter(|(_, block, _)| block.matcher.matches_pod(kubernetes)).copied().collect()
}

/// Slots in the order the kernel judges them: refusing entries first, then
/// dry-run ones, each in file order. A (mode, exec filter) pair already
/// taken adds nothing (the earlier entry decides), so 6 slots always do.
fn slots(blocks: &[(u32, &BlockSpec, bool)]) -> CgroupEnforcement {
    let mut out = CgroupEnforcement::default();
    for pass in [true, false] {
        for (number, block, _) in blocks.iter().filter(|(_, _, enforce)| *enforce == pass) {
            let exec = match block.matcher.exec {
                None => EXEC_ANY,
                Some(true) => EXEC_ONLY,
                Some(false) => EXEC_NEVER,
            };
            let mode = if pass { MODE_ENFORCE } else { MODE_DRY_RUN };
            let slot = EnforceSlot { block: *number, mode, exec, _pad: 0 };
            if block.actions.apiserver_connect {
                push(&mut out.connect, slot);
            }
            if block.actions.token_read {
                push(&mut out.token_read, slot);
            }
        }
    }
    out
}

fn push(slots: &mut [EnforceSlot], slot: EnforceSlot) {
    if slots.iter().any(|s| s.mode == slot.mode && s.exec == slot.exec) {
        return;
    }
    if let Some(free) = slots.iter_mut().find(|s| s.mode == MODE_NONE) {
        *free = slot;
    }
}

fn has_connect(entry: &CgroupEnforcement) -> bool {
    entry.connect.iter().any(|s| s.mode != MODE_NONE)
}

#[cfg(test)]
mod tests;
