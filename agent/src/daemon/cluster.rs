//! What the agent learns from the Kubernetes API, when it runs in a
//! cluster: this node's pods, and the API server's own addresses (its
//! Service's ClusterIPs and EndpointSlices), kept live in the kernel map.

use std::{collections::BTreeSet, net::SocketAddr};

use aya::maps::{HashMap as BpfHashMap, MapData};
use tokenwatch_common::EndpointKey;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{tasks::Tasks, DaemonError};
use crate::{
    config::{Config, Endpoint},
    kernel::watchlist,
    metadata::{
        enrich::PodSource,
        kube::{self, PodStore},
    },
};

/// How long a deleted pod stays resolvable, for events that arrive late.
const DELETED_POD_GRACE: std::time::Duration = std::time::Duration::from_secs(300);

/// Starts the cluster watches unless standalone, and keeps the endpoint map
/// equal to the configured endpoints plus the cluster's. No configuration
/// found means standalone; an explicit `--kubeconfig` that fails is an error.
/// Returns the pods' source and, in a cluster, the API client.
pub async fn start(
    config: &Config,
    endpoints: BpfHashMap<MapData, EndpointKey, u32>,
    tasks: &mut Tasks,
) -> Result<(PodSource, Option<::kube::Client>), DaemonError> {
    let client = if config.standalone {
        tracing::info!("standalone: the Kubernetes API is not watched");
        None
    } else {
        match kube::client(config.kubeconfig.as_deref()).await {
            Ok(client) => Some(client),
            Err(error) if config.kubeconfig.is_none() => {
                tracing::info!(%error, "no cluster found: running standalone");
                None
            }
            Err(error) => return Err(error.into()),
        }
    };
    let (learnt_tx, learnt_rx) = watch::channel(BTreeSet::new());
    let mut sync = EndpointSync { map: endpoints, configured: config.api_servers.clone(), current: BTreeSet::new() };
    sync.apply(&BTreeSet::new())?;
    tasks.spawn("endpoint-sync", |token| sync.run(learnt_rx, token));
    let Some(client) = client else {
        drop(learnt_tx);
        return Ok((PodSource::Standalone, None));
    };
    let store = PodStore::new(DELETED_POD_GRACE);
    let (node, watched) = (config.node_name.clone(), store.clone());
    tracing::info!(node = %node, "watching this node's pods and the API server's endpoints on the Kubernetes API");
    let pods_client = client.clone();
    tasks.spawn("pod-watch", |token| kube::watch_pods(pods_client, node, watched, token));
    let endpoints_client = client.clone();
    tasks.spawn("endpoint-watch", |token| kube::watch_api_server_endpoints(endpoints_client, learnt_tx, token));
    Ok((PodSource::Api(store), Some(client)))
}

/// Owns the kernel's endpoint map.
struct EndpointSync {
    map: BpfHashMap<MapData, EndpointKey, u32>,
    configured: Vec<Endpoint>,
    current: BTreeSet<SocketAddr>,
}

impl EndpointSync {
    /// Applies each new set the cluster publishes until cancelled. Without a
    /// publisher (standalone) it only holds the map until then.
    async fn run(
        mut self,
        mut learnt: watch::Receiver<BTreeSet<SocketAddr>>,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                changed = learnt.changed() => {
                    if changed.is_err() {
                        cancel.cancelled().await;
                        return Ok(());
                    }
                    let set = learnt.borrow_and_update().clone();
                    self.apply(&set)?;
                }
            }
        }
    }

    /// Makes the map hold the configured endpoints and `learnt`.
    fn apply(&mut self, learnt: &BTreeSet<SocketAddr>) -> Result<(), DaemonError> {
        let wanted: BTreeSet<SocketAddr> = self.configured.iter().map(|e| e.0).chain(learnt.iter().copied()).collect();
        for added in wanted.difference(&self.current) {
            tracing::info!(endpoint = %added, "watching API-server endpoint");
        }
        for removed in self.current.difference(&wanted) {
            tracing::info!(endpoint = %removed, "no longer an API-server endpoint");
        }
        let endpoints: Vec<Endpoint> = wanted.iter().copied().map(Endpoint).collect();
        watchlist::sync_endpoints(&mut self.map, &endpoints)?;
        self.current = wanted;
        Ok(())
    }
}
