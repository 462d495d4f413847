//! The enforce stage (issue 11): keeps the kernel's enforcement maps and
//! the pods' connect fences equal to what the policy's `blocks` ask, for
//! the pods on the node now.
//!
//! Every [`RECONCILE_INTERVAL`], and at once when the policy changes
//! (SIGHUP) or the API puts a pod on the node, it walks the unified cgroup hierarchy for pod and container
//! cgroups ([`cgroups`]), names them as an alert would (the pod store, the
//! runtime over CRI: `detect::context::kubernetes`), resolves which block
//! entries cover them ([`plan`]), finds the executables that entries with
//! `binaries` name inside those containers ([`binaries`]) and applies the
//! difference: map entries written or removed, fences attached to or
//! dropped from pod directories.
//! A pod the API knows is covered by its uid ([`plan::pod_entries`]; the
//! kernel reads the uid in the name of the reader's cgroup), so a token
//! read is refused from the pod's first instruction; its connect fence and
//! entries that select on the image or list binaries wait for its cgroup,
//! within that interval plus one walk, as does a policy change's effect on
//! running pods. With no block entry and nothing applied, a round costs nothing.
//!
//! Fail-safe: nothing is pinned. When the agent exits (even `SIGKILL`ed),
//! the kernel frees the maps and the fences' links with its file
//! descriptors, so nothing stays refused that the policy no longer asks.

pub mod binaries;
pub mod cgroups;
pub mod plan;

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use tokenwatch_common::POD_UID_LEN;
use tokenwatch_proto::v1::KubernetesContext;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::plan::{ContainerTarget, Plan, Target};
use crate::{
    detect::{context, policy::Policy},
    kernel::{
        fence::{EnforceMaps, FenceLinks},
        Hooks,
    },
    metadata::{
        cgroup::CgroupIdentity,
        cri::CriCache,
        kube::{next_change, PodStore},
    },
};

/// How often the pods are looked at again without a policy change.
pub const RECONCILE_INTERVAL: Duration = Duration::from_millis(250);

/// The agent's numbers for block entries, by which the kernel names the
/// entry that decided. Numbers are never reused in a run, so an event
/// decided under an older policy still names its own entry.
#[derive(Clone, Debug, Default)]
pub struct BlockNames {
    ids: Arc<RwLock<Vec<String>>>,
}

impl BlockNames {
    /// The number of entry `id` (from 1), given one on first sight.
    pub fn number(&self, id: &str) -> u32 {
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        let at = ids.iter().position(|known| known == id).unwrap_or_else(|| {
            ids.push(id.to_owned());
            ids.len() - 1
        });
        u32::try_from(at + 1).unwrap_or(u32::MAX)
    }

    /// The id of entry `number`.
    pub fn id(&self, number: u32) -> Option<String> {
        let ids = self.ids.read().unwrap_or_else(PoisonError::into_inner);
        ids.get(usize::try_from(number).ok()?.checked_sub(1)?).cloned()
    }
}

/// Keeps the kernel in step with the policy's blocks.
pub struct Enforcer {
    hooks: Arc<Mutex<Hooks>>,
    maps: EnforceMaps,
    root: Option<PathBuf>,
    pods: Option<PodStore>,
    cri: CriCache,
    names: BlockNames,
    applied: Plan,
    fences: HashMap<PathBuf, FenceLinks>,
    /// Pod directories a fence could not be attached to, warned about once.
    refused: HashSet<PathBuf>,
    /// Whether the lack of a cgroup2 hierarchy was reported.
    warned: bool,
    /// Finds `binaries` in containers; shared with the blocking pool.
    resolver: Arc<Mutex<binaries::Resolver>>,
    /// Whether the last round found the binaries map full (logged once).
    binaries_refused: bool,
}

impl Enforcer {
    /// An enforcer attaching fences through `hooks`, writing `maps`, finding
    /// pods below the unified cgroup `root`, naming them from `pods` and
    /// `cri`, numbering entries in `names`.
    pub fn new(
        hooks: Arc<Mutex<Hooks>>,
        maps: EnforceMaps,
        root: Option<PathBuf>,
        pods: Option<PodStore>,
        cri: CriCache,
        names: BlockNames,
    ) -> Self {
        Enforcer {
            hooks,
            maps,
            root,
            pods,
            cri,
            names,
            applied: Plan::default(),
            fences: HashMap::new(),
            refused: HashSet::new(),
            warned: false,
            resolver: Arc::new(Mutex::new(binaries::Resolver::new(PathBuf::from("/proc")))),
            binaries_refused: false,
        }
    }

    /// Reconciles until cancelled; then removes everything it applied.
    /// Besides the ticks, a new or changed pod in the store reconciles at
    /// once: a pod the API put on the node is covered by its uid before
    /// kubelet can start it.
    pub async fn run(mut self, mut policy: watch::Receiver<Arc<Policy>>, cancel: CancellationToken) {
        let mut ticker = tokio::time::interval(RECONCILE_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pods = self.pods.as_ref().map(PodStore::changes);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = policy.changed() => if changed.is_err() { break },
                _ = ticker.tick() => {}
                () = next_change(&mut pods) => {}
            }
            let current = Arc::clone(&policy.borrow_and_update());
            self.reconcile(&current).await;
        }
        self.apply(Plan::default());
    }

    async fn reconcile(&mut self, policy: &Policy) {
        let blocks = policy.blocks();
        if blocks.is_empty() && self.applied.is_empty() {
            return;
        }
        if !blocks.is_empty() && self.root.is_none() && self.applied.covered.is_empty() && !self.warned {
            tracing::error!("no cgroup2 hierarchy: block entries cannot be enforced on this node");
            self.warned = true;
        }
        // The runtime is asked only for what the pod store cannot say: the
        // image, the init pid (for `exec`), or everything when standalone.
        let ask_runtime = self.pods.is_none()
            || blocks.iter().any(|(block, _)| block.matcher.images.is_some() || block.matcher.exec.is_some());
        // Containers' roots only for entries that list binaries.
        let need_roots = blocks.iter().any(|(block, _)| block.matcher.binaries.is_some());
        let targets = if blocks.is_empty() { Vec::new() } else { self.targets(ask_runtime, need_roots).await };
        let mut plan = plan::plan(&blocks, &self.names, &targets);
        plan.pods = plan::pod_entries(&blocks, &self.names, &self.scheduled());
        if !plan.scopes.is_empty() {
            let resolver = Arc::clone(&self.resolver);
            let scopes = plan.scopes.clone();
            let resolve = move || resolver.lock().unwrap_or_else(PoisonError::into_inner).resolve(&scopes);
            plan.binaries = match tokio::task::spawn_blocking(resolve).await {
                Ok(binaries) => binaries,
                Err(error) => {
                    // Keep what the kernel holds rather than drop every key.
                    tracing::error!(%error, "resolving block entries' binaries failed; keeping the last round's");
                    self.applied.binaries.clone()
                }
            };
        }
        self.apply(plan);
    }

    /// The node's pods, named as an alert names them (`ask_runtime`: with
    /// the runtime's answers, cached by the CRI cache; `need_roots`: with a
    /// process of each container, whose root `binaries` resolve in).
    async fn targets(&self, ask_runtime: bool, need_roots: bool) -> Vec<Target> {
        let Some(root) = self.root.clone() else { return Vec::new() };
        let found = tokio::task::spawn_blocking(move || cgroups::scan(&root)).await.unwrap_or_default();
        let mut targets = Vec::with_capacity(found.len());
        for pod in found {
            let info = self.pods.as_ref().and_then(|store| store.get(&pod.uid));
            let mut containers = Vec::with_capacity(pod.containers.len());
            for container in pod.containers {
                let meta = if ask_runtime { self.cri.lookup(&container.id).await.ok() } else { None };
                let identity =
                    CgroupIdentity { container_id: Some(container.id), pod_uid: Some(pod.uid.clone()), runtime: None };
                let init_pid = meta.as_ref().and_then(|m| m.init_pid);
                containers.push(ContainerTarget {
                    cgroup: container.cgroup,
                    kubernetes: context::kubernetes(&identity, meta.as_ref(), info.as_ref()),
                    init_pid,
                    root_pid: if need_roots { init_pid.or_else(|| cgroups::any_process(&container.dir)) } else { None },
                });
            }
            let identity = CgroupIdentity { container_id: None, pod_uid: Some(pod.uid.clone()), runtime: None };
            let mut kubernetes = context::kubernetes(&identity, None, info.as_ref());
            if info.is_none() {
                // Standalone: the runtime's labels name the namespace.
                let named = containers.iter().map(|c| &c.kubernetes).find(|k| !k.namespace.is_empty());
                kubernetes = named.map(pod_level).unwrap_or(kubernetes);
            }
            targets.push(Target { cgroup: pod.cgroup, dir: pod.dir, kubernetes, containers });
        }
        targets
    }

    /// The pods the API put on this node, named at pod level: with the
    /// kernel's match by uid they are covered from their first instruction.
    fn scheduled(&self) -> Vec<KubernetesContext> {
        let Some(store) = &self.pods else { return Vec::new() };
        store
            .snapshot()
            .iter()
            .map(|info| {
                let identity = CgroupIdentity { container_id: None, pod_uid: Some(info.uid.clone()), runtime: None };
                context::kubernetes(&identity, None, Some(info))
            })
            .collect()
    }

    /// Makes the kernel hold `plan`, changing only what differs.
    fn apply(&mut self, mut plan: Plan) {
        // New executables before the cgroup entries that list them, stale
        // ones after, so a slot being renumbered never finds its files gone.
        let mut refused = 0usize;
        plan.binaries.retain(|key, block| {
            if self.applied.binaries.get(key) == Some(block) {
                return true;
            }
            // A key the map refused (full) is left out of what is applied,
            // so the next round tries it again.
            let inserted = self.maps.binaries.insert(key, *block, 0).is_ok();
            refused += usize::from(!inserted);
            inserted
        });
        if refused > 0 && !self.binaries_refused {
            tracing::error!(
                refused,
                held = plan.binaries.len(),
                "the enforcement binaries map is full: some listed executables are not covered"
            );
        }
        self.binaries_refused = refused > 0;
        for (cgroup, entry) in &plan.entries {
            if self.applied.entries.get(cgroup) != Some(entry) {
                if let Err(error) = self.maps.cgroups.insert(cgroup, entry, 0) {
                    tracing::error!(cgroup, %error, "enforcement map update refused");
                }
            }
        }
        for cgroup in self.applied.entries.keys().filter(|c| !plan.entries.contains_key(c)) {
            let _ = self.maps.cgroups.remove(cgroup);
        }
        for (uid, entry) in &plan.pods {
            if self.applied.pods.get(uid) != Some(entry) {
                for spelling in uid_spellings(uid) {
                    if let Err(error) = self.maps.pods.insert(spelling, entry, 0) {
                        tracing::error!(%uid, %error, "enforcement map update refused");
                    }
                }
            }
        }
        for uid in self.applied.pods.keys().filter(|u| !plan.pods.contains_key(*u)) {
            for spelling in uid_spellings(uid) {
                let _ = self.maps.pods.remove(&spelling);
            }
        }
        for (cgroup, pid) in &plan.inits {
            if self.applied.inits.get(cgroup) != Some(pid) {
                let _ = self.maps.inits.insert(cgroup, pid, 0);
            }
        }
        for cgroup in self.applied.inits.keys().filter(|c| !plan.inits.contains_key(c)) {
            let _ = self.maps.inits.remove(cgroup);
        }
        for key in self.applied.binaries.keys().filter(|k| !plan.binaries.contains_key(k)) {
            let _ = self.maps.binaries.remove(key);
        }
        self.fences.retain(|dir, _| plan.fences.contains(dir));
        self.refused.retain(|dir| plan.fences.contains(dir));
        let new: Vec<PathBuf> = plan
            .fences
            .iter()
            .filter(|d| !self.fences.contains_key(*d) && !self.refused.contains(*d))
            .cloned()
            .collect();
        for dir in new {
            let attached = std::fs::File::open(&dir).map_err(|e| e.to_string()).and_then(|file| {
                self.hooks.lock().unwrap_or_else(PoisonError::into_inner).attach_fence(&file).map_err(|e| e.to_string())
            });
            match attached {
                Ok(links) => {
                    tracing::debug!(cgroup = %dir.display(), "connect fence attached");
                    self.fences.insert(dir, links);
                }
                Err(error) => {
                    tracing::error!(cgroup = %dir.display(), %error, "connect fence not attached: connects from this pod are not refused");
                    self.refused.insert(dir);
                }
            }
        }
        for (pod, block) in plan.covered.difference(&self.applied.covered) {
            tracing::info!(%pod, %block, "block entry covers pod");
        }
        for (pod, block) in self.applied.covered.difference(&plan.covered) {
            tracing::info!(%pod, %block, "block entry no longer covers pod");
        }
        let metrics = crate::metrics::global();
        metrics.enforced_cgroups.store(plan.entries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        metrics.enforcement_fences.store(self.fences.len() as u64, std::sync::atomic::Ordering::Relaxed);
        metrics.enforcement_binaries.store(plan.binaries.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.applied = plan;
    }
}

/// A pod uid as its cgroup's name spells it: dashed (kubelet's cgroupfs
/// driver) and with underscores (its systemd driver). None for a uid of
/// another length, which no cgroup name carries.
fn uid_spellings(uid: &str) -> Vec<[u8; POD_UID_LEN]> {
    let Ok(dashed) = <[u8; POD_UID_LEN]>::try_from(uid.as_bytes()) else { return Vec::new() };
    let underscored = dashed.map(|byte| if byte == b'-' { b'_' } else { byte });
    vec![dashed, underscored]
}

/// A container's identity without the container.
fn pod_level(container: &KubernetesContext) -> KubernetesContext {
    KubernetesContext { container: String::new(), image: String::new(), ..container.clone() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_spelt_as_both_kubelet_cgroup_drivers_spell_it() {
        let spellings = uid_spellings("3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b");
        assert_eq!(spellings[0], *b"3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b");
        assert_eq!(spellings[1], *b"3f0e1c2a_9b7d_4e61_8a2f_0c5d6e7f8a9b");
        assert!(uid_spellings("not-a-uid").is_empty());
    }
}
