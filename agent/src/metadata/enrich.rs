//! Everything the node knows about one event, gathered for the detect
//! stage: the process (/proc), the container (cgroup names, CRI), the pod
//! (Kubernetes API) and the watched file. Degrades, never stops: what cannot
//! be learnt is named in `missing`, and the alert goes out with the rest.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
};

use tokenwatch_common::FileKey;
use tokio::sync::{watch, Notify};

use super::{
    cgroup::{self, CgroupIdentity},
    cri::{ContainerMeta, CriCache},
    kube::{PodInfo, PodStore},
    new_volume,
    process::{self, ProcessInfo},
    process_cache::{ProcessCache, ProcessKey, DEFAULT_CAPACITY},
    token_files::{self, TokenFiles, WatchedFile},
};
use crate::kernel::{Identity, KernelEvent, OpenRecord};

/// What the metadata stage learnt about an event.
#[derive(Clone, Debug, Default)]
pub struct Enrichment {
    /// The process, from /proc (or the cache of an earlier event of the
    /// same program run).
    pub process: Arc<ProcessInfo>,
    /// The watched file an open matched, when known.
    pub watched: Option<WatchedFile>,
    /// Container id, pod uid and runtime from the kernel's cgroup names.
    pub cgroup: CgroupIdentity,
    /// The container as the runtime describes it.
    pub container: Option<Arc<ContainerMeta>>,
    /// The pod as the Kubernetes API describes it.
    pub pod: Option<Arc<PodInfo>>,
    /// For a token read: the pod the token belongs to, when known.
    pub owner: Option<Arc<PodInfo>>,
    /// For a token read: the containers the token file is mounted in, by
    /// name (by id when the runtime cannot name one).
    pub owner_containers: Vec<String>,
    /// What could not be learnt, and why.
    pub missing: Vec<String>,
}

/// Where pod metadata comes from, if anywhere.
#[derive(Clone)]
pub enum PodSource {
    /// The agent runs without the Kubernetes API.
    Standalone,
    /// Pods of this node, watched from the API.
    Api(PodStore),
}

impl PodSource {
    /// The pod store, in a cluster.
    pub fn store(&self) -> Option<PodStore> {
        match self {
            PodSource::Api(store) => Some(store.clone()),
            PodSource::Standalone => None,
        }
    }
}

/// Gathers an [`Enrichment`] per event.
pub struct Enricher {
    proc: PathBuf,
    cri: CriCache,
    pods: PodSource,
    token_files: watch::Receiver<Arc<TokenFiles>>,
    rescan: Arc<Notify>,
    processes: Mutex<ProcessCache>,
}

impl Enricher {
    /// An enricher reading the node's processes under `proc` (the host's
    /// /proc), the runtime through `cri`, pods from `pods`, and the
    /// scanner's latest token files; `rescan` wakes the scanner.
    pub fn new(
        cri: CriCache,
        pods: PodSource,
        token_files: watch::Receiver<Arc<TokenFiles>>,
        rescan: Arc<Notify>,
        proc: PathBuf,
    ) -> Self {
        let processes = Mutex::new(ProcessCache::new(DEFAULT_CAPACITY));
        Enricher { proc, cri, pods, token_files, rescan, processes }
    }

    /// The watched file `open` matched: the last scan's, or, for a token
    /// the kernel matched on a volume no scan has found yet (a container's
    /// first read), what the node tells at once; the scanner is asked to
    /// look again now.
    fn watched(&self, open: &OpenRecord, reader: &CgroupIdentity) -> WatchedFile {
        let key = FileKey { dev: open.dev, _pad: 0, ino: open.ino };
        if let Some(known) = token_files::find(&self.token_files.borrow(), &key) {
            return known;
        }
        self.rescan.notify_one();
        new_volume::watched_on_new_volume(&self.proc, open.identity.pid, open.dev, &open.resolved_path, reader)
    }

    /// Everything known about `event`.
    pub async fn enrich(&self, event: &KernelEvent) -> Enrichment {
        let identity = event.identity();
        let cgroup = identify(identity);
        let watched = match event {
            KernelEvent::Open(open) => Some(self.watched(open, &cgroup)),
            KernelEvent::Connect(_) => None,
        };
        let process = self.process(identity).await;
        let owner = match (&self.pods, watched.as_ref().and_then(|w| w.pod_uid.as_deref())) {
            (PodSource::Api(store), Some(uid)) => store.get(uid),
            _ => None,
        };
        let mut enrichment = Enrichment { process, watched, owner, cgroup, ..Enrichment::default() };

        let owner_ids = enrichment.watched.as_ref().map(|w| w.container_ids.clone()).unwrap_or_default();
        for id in owner_ids {
            let name = self.cri.lookup(&id).await.ok().map(|meta| meta.name.clone()).filter(|n| !n.is_empty());
            enrichment.owner_containers.push(name.unwrap_or(id));
        }
        if let Some(id) = enrichment.cgroup.container_id.clone() {
            match self.cri.lookup(&id).await {
                Ok(meta) => enrichment.container = Some(meta),
                Err(reason) => enrichment.missing.push(reason),
            }
        }
        let pod_uid = enrichment
            .container
            .as_ref()
            .map(|c| c.pod_uid.clone())
            .filter(|uid| !uid.is_empty())
            .or_else(|| enrichment.cgroup.pod_uid.clone());
        if let Some(uid) = pod_uid {
            match &self.pods {
                PodSource::Standalone => {
                    enrichment.missing.push("kubernetes: standalone mode, the API is not watched".to_owned());
                }
                PodSource::Api(store) => match store.get(&uid) {
                    Some(pod) => enrichment.pod = Some(pod),
                    None => enrichment.missing.push(format!("kubernetes: pod {uid} is not known (yet)")),
                },
            }
        }
        enrichment
    }
}

impl Enricher {
    /// What /proc says about the event's process: from the cache when an
    /// earlier event of the same program run looked, else read now.
    async fn process(&self, identity: &Identity) -> Arc<ProcessInfo> {
        let key = ProcessKey { pid: identity.pid, start_ns: identity.process_start_ns, exec_id: identity.exec_id };
        // A zero start time means the kernel could not read it: no key.
        let cacheable = identity.process_start_ns != 0;
        if cacheable {
            if let Some(info) = self.processes.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
                return info;
            }
        }
        let (proc, pid) = (self.proc.clone(), identity.pid);
        let info =
            Arc::new(tokio::task::spawn_blocking(move || process::inspect(&proc, pid)).await.unwrap_or_default());
        if cacheable {
            self.processes.lock().unwrap_or_else(PoisonError::into_inner).insert(key, Arc::clone(&info));
        }
        info
    }
}

/// The container and pod the kernel's cgroup names point to.
fn identify(identity: &Identity) -> CgroupIdentity {
    let [v2_leaf, v2_parent, v1_leaf, v1_parent] = &identity.cgroup_names;
    cgroup::identify([(v2_leaf.as_str(), v2_parent.as_str()), (v1_leaf.as_str(), v1_parent.as_str())])
}

#[cfg(test)]
mod tests;
