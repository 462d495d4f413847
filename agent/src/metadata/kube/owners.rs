//! Resolving a pod's direct controller to the workload a human would name:
//! ReplicaSet -> Deployment and Job -> CronJob, through the owner's own
//! `ownerReferences` (one GET per owner, cached).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Api, Client};
use tracing::{debug, warn};

use super::pod::{deployment_from_replicaset_name, direct_owner, PodInfo, Workload};

/// How many resolved owners are remembered before the cache starts over; a
/// node sees few distinct ReplicaSets and Jobs, so this only bounds churn.
const CACHE_LIMIT: usize = 4096;

/// After a failed GET the fallback answer is remembered this long, so a
/// missing RBAC rule costs one request per owner per period, not per event.
const RETRY_FAILED_AFTER: Duration = Duration::from_secs(300);

/// Resolves and caches pod owners for the watcher.
pub(crate) struct OwnerResolver {
    client: Client,
    timeout: Duration,
    cache: HashMap<(String, String, String), Cached>,
}

struct Cached {
    workload: Workload,
    /// `None` for an answer from the API (owners never change); a time for a fallback.
    expires: Option<Instant>,
}

impl OwnerResolver {
    /// A resolver whose GETs give up after `timeout` (the watcher waits for them).
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        OwnerResolver { client, timeout, cache: HashMap::new() }
    }

    /// The workload of `pod`, whose `workload` holds its direct owner.
    ///
    /// A ReplicaSet resolves to its controller (normally a Deployment) or to
    /// itself if it has none; if the GET fails, the Deployment's name is taken
    /// from the ReplicaSet's name minus the pod's `pod-template-hash` (see
    /// [`deployment_from_replicaset_name`]). A Job resolves to its CronJob, or
    /// stays a Job if the GET fails. Other kinds are returned as they are.
    pub(crate) async fn resolve(&mut self, pod: &PodInfo) -> Option<Workload> {
        let direct = pod.workload.clone()?;
        if direct.kind != "ReplicaSet" && direct.kind != "Job" {
            return Some(direct);
        }
        let key = (pod.namespace.clone(), direct.kind.clone(), direct.name.clone());
        if let Some(cached) = self.cache.get(&key) {
            if cached.expires.is_none_or(|at| Instant::now() < at) {
                return Some(cached.workload.clone());
            }
        }
        let fetched = self.fetch_owner(&pod.namespace, &direct).await;
        let (workload, expires) = match fetched {
            Ok(owner) => (owner.unwrap_or_else(|| direct.clone()), None),
            Err(reason) => {
                warn!(
                    namespace = %pod.namespace, kind = %direct.kind, name = %direct.name, %reason,
                    "cannot read the pod's owner; naming the workload from the pod alone"
                );
                let fallback = match direct.kind.as_str() {
                    "ReplicaSet" => deployment_from_replicaset_name(&direct.name, &pod.labels),
                    _ => direct.clone(),
                };
                (fallback, Some(Instant::now() + RETRY_FAILED_AFTER))
            }
        };
        if self.cache.len() >= CACHE_LIMIT {
            self.cache.clear();
        }
        self.cache.insert(key, Cached { workload: workload.clone(), expires });
        Some(workload)
    }

    /// The controller of the owner object (`Ok(None)` if it has none).
    async fn fetch_owner(&self, namespace: &str, owner: &Workload) -> Result<Option<Workload>, String> {
        let client = self.client.clone();
        let meta = async {
            match owner.kind.as_str() {
                "ReplicaSet" => {
                    Api::<ReplicaSet>::namespaced(client, namespace).get(&owner.name).await.map(|o| o.metadata)
                }
                _ => Api::<Job>::namespaced(client, namespace).get(&owner.name).await.map(|o| o.metadata),
            }
        };
        let meta: ObjectMeta = match tokio::time::timeout(self.timeout, meta).await {
            Ok(Ok(meta)) => meta,
            Ok(Err(err)) => return Err(err.to_string()),
            Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
        };
        let resolved = direct_owner(meta.owner_references.as_deref().unwrap_or_default());
        debug!(namespace, kind = %owner.kind, name = %owner.name, ?resolved, "resolved pod owner");
        Ok(resolved)
    }
}
