//! Container metadata by id, cached. A miss asks the runtime once, bounded
//! by a timeout, and a failure is remembered briefly so a burst of events
//! from one unknown container costs one call. The reader of the ring buffer
//! never waits on this: only the alert pipeline does.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_cri::v1::{runtime_service_client::RuntimeServiceClient, ContainerStatusRequest};
use tonic::transport::Channel;

use super::{
    connect::{connect, detect_socket, CriError, DEFAULT_SOCKETS},
    container::ContainerMeta,
};

/// How long one CRI call may take before the alert goes out without it.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a failed lookup is remembered.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; the oldest half is dropped beyond it.
const MAX_ENTRIES: usize = 8192;

/// Cached CRI lookups; cheap to clone.
#[derive(Clone)]
pub struct CriCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Result<(PathBuf, RuntimeServiceClient<Channel>), String>,
    entries: Mutex<HashMap<String, Entry>>,
}

enum Entry {
    Known(Arc<ContainerMeta>, Instant),
    Failed(String, Instant),
}

impl CriCache {
    /// A cache over the runtime at `socket`, or at the first default socket
    /// that exists. Without one, every lookup says why.
    pub fn new(socket: Option<PathBuf>) -> Self {
        let client = socket
            .map_or_else(|| detect_socket(DEFAULT_SOCKETS), Ok)
            .and_then(|path| connect(&path).map(|client| (path, client)))
            .map_err(|error| error.to_string());
        CriCache { inner: Arc::new(Inner { client, entries: Mutex::new(HashMap::new()) }) }
    }

    /// The socket in use, or why there is none.
    pub fn socket(&self) -> Result<&PathBuf, &str> {
        self.inner.client.as_ref().map(|(path, _)| path).map_err(String::as_str)
    }

    /// How many pod sandboxes the runtime runs now (ready ones), or why it
    /// cannot say: with none listed by the API for this node, a sign the
    /// node name is wrong.
    pub async fn ready_pod_sandboxes(&self) -> Result<usize, String> {
        use k8s_cri::v1::{ListPodSandboxRequest, PodSandboxFilter, PodSandboxState, PodSandboxStateValue};
        let (_, client) = self.inner.client.as_ref().map_err(|reason| format!("cri: {reason}"))?;
        let ready = PodSandboxStateValue { state: PodSandboxState::SandboxReady.into() };
        let request = ListPodSandboxRequest {
            filter: Some(PodSandboxFilter { state: Some(ready), ..PodSandboxFilter::default() }),
        };
        match tokio::time::timeout(CALL_TIMEOUT, client.clone().list_pod_sandbox(request)).await {
            Err(_) => Err(format!("cri: ListPodSandbox timed out after {CALL_TIMEOUT:?}")),
            Ok(Err(status)) => {
                Err(format!("cri: {}", CriError::Call { call: "ListPodSandbox", status: Box::new(status) }))
            }
            Ok(Ok(response)) => Ok(response.get_ref().items.len()),
        }
    }

    /// Metadata of `container_id`, or why it could not be had.
    pub async fn lookup(&self, container_id: &str) -> Result<Arc<ContainerMeta>, String> {
        let metrics = crate::metrics::global();
        if let Some(found) = self.cached(container_id) {
            metrics.cache_lookup(crate::metrics::Cache::Cri, true);
            return found;
        }
        metrics.cache_lookup(crate::metrics::Cache::Cri, false);
        let (_, client) = self.inner.client.as_ref().map_err(|reason| format!("cri: {reason}"))?;
        let request = ContainerStatusRequest { container_id: container_id.to_owned(), verbose: true };
        let result = match tokio::time::timeout(CALL_TIMEOUT, client.clone().container_status(request)).await {
            Err(_) => Err(format!("cri: ContainerStatus timed out after {CALL_TIMEOUT:?}")),
            Ok(Err(status)) => {
                Err(format!("cri: {}", CriError::Call { call: "ContainerStatus", status: Box::new(status) }))
            }
            Ok(Ok(response)) => {
                ContainerMeta::from_status(response.get_ref()).map(Arc::new).map_err(|error| format!("cri: {error}"))
            }
        };
        self.remember(container_id, &result);
        result
    }

    fn cached(&self, id: &str) -> Option<Result<Arc<ContainerMeta>, String>> {
        let entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match entries.get(id)? {
            Entry::Known(meta, _) => Some(Ok(Arc::clone(meta))),
            Entry::Failed(reason, at) if at.elapsed() < NEGATIVE_TTL => Some(Err(reason.clone())),
            Entry::Failed(..) => None,
        }
    }

    fn remember(&self, id: &str, result: &Result<Arc<ContainerMeta>, String>) {
        let mut entries = self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_ENTRIES {
            let mut ages: Vec<(Instant, String)> = entries
                .iter()
                .map(|(k, e)| {
                    (
                        match e {
                            Entry::Known(_, at) | Entry::Failed(_, at) => *at,
                        },
                        k.clone(),
                    )
                })
                .collect();
            ages.sort_unstable();
            for (_, key) in ages.into_iter().take(MAX_ENTRIES / 2) {
                entries.remove(&key);
            }
        }
        let now = Instant::now();
        let entry = match result {
            Ok(meta) => Entry::Known(Arc::clone(meta), now),
            Err(reason) => Entry::Failed(reason.clone(), now),
        };
        entries.insert(id.to_owned(), entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_runtime_every_lookup_says_why() {
        let cache = CriCache::new(Some(PathBuf::from("/nonexistent/cri.sock")));
        let error = cache.lookup("abc").await.expect_err("no runtime there");
        assert!(error.starts_with("cri: "), "{error}");
        let cache = CriCache {
            inner: Arc::new(Inner { client: Err("no CRI socket found".into()), entries: Mutex::default() }),
        };
        assert_eq!(cache.lookup("abc").await.expect_err("disabled"), "cri: no CRI socket found");
        assert_eq!(cache.socket(), Err("no CRI socket found"));
    }

    #[tokio::test]
    async fn a_failure_is_remembered_briefly() {
        let cache = CriCache::new(Some(PathBuf::from("/nonexistent/cri.sock")));
        let first = cache.lookup("abc").await.expect_err("fails");
        assert!(matches!(cache.cached("abc"), Some(Err(ref e)) if *e == first));
    }
}
