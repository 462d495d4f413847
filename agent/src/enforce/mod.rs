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

mod apply;
pub mod binaries;
pub mod cgroups;
pub mod plan;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

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

pub use crate::detect::policy::BlockNames;

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
    /// Pod directories a fence could not be attached to, tried again later.
    fence_retries: apply::FenceRetries,
    /// Whether the last round had map entries the kernel refused (logged
    /// once an episode).
    entries_refused: bool,
    /// Whether the lack of a cgroup2 hierarchy was reported.
    warned: bool,
    /// Finds `binaries` in containers; shared with the blocking pool.
    resolver: Arc<Mutex<binaries::Resolver>>,
    /// Whether the last round found the binaries map full (logged once).
    binaries_refused: bool,
    /// What the kernel's read-block switch holds (0 at load).
    read_blocks: bool,
}

impl Enforcer {
    /// An enforcer attaching fences through `hooks`, writing `maps`, finding
    /// pods below the unified cgroup `root`, naming them from `pods` and
    /// `cri`, numbering entries in `names`, and finding the containers'
    /// `binaries` through `host_proc`: the node's `/proc` (the DaemonSet's
    /// `/host/proc`), since the agent's own pid namespace holds none of
    /// the containers' processes.
    pub fn new(
        hooks: Arc<Mutex<Hooks>>,
        maps: EnforceMaps,
        root: Option<PathBuf>,
        pods: Option<PodStore>,
        cri: CriCache,
        names: BlockNames,
        host_proc: PathBuf,
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
            fence_retries: apply::FenceRetries::default(),
            entries_refused: false,
            warned: false,
            resolver: Arc::new(Mutex::new(binaries::Resolver::new(host_proc))),
            binaries_refused: false,
            read_blocks: false,
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
        // Containers' roots only for entries that list binaries.
        let need_roots = blocks.iter().any(|(block, _)| block.matcher.binaries.is_some());
        // The runtime is asked only for what the pod store cannot say: the
        // image, the init pid (for `exec`, and the root `binaries` resolve
        // in: the agent's own pid namespace reads every pid in a pod's
        // `cgroup.procs` as 0), or everything when standalone.
        let ask_runtime = self.pods.is_none()
            || need_roots
            || blocks.iter().any(|(block, _)| block.matcher.images.is_some() || block.matcher.exec.is_some());
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
}

/// A container's identity without the container.
fn pod_level(container: &KubernetesContext) -> KubernetesContext {
    KubernetesContext { container: String::new(), image: String::new(), ..container.clone() }
}
