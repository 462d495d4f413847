//! Pod metadata from the Kubernetes API, for the pods of the node the agent
//! runs on.
//!
//! [`watch_pods`] lists and watches `pods` with the field selector
//! `spec.nodeName=<node>` (kube-rs's watcher: list, watch from the list's
//! resourceVersion, bookmarks, relist on 410 Gone) and keeps a [`PodStore`]
//! that the event pipeline reads by pod UID (the UID CRI labels carry). Each
//! pod becomes a [`PodInfo`]: names, ServiceAccount, labels, workload, and the
//! mounts through which each container sees a token.
//!
//! RBAC the agent needs: `list`, `watch` on `pods`; `get` on
//! `replicasets.apps` and `jobs.batch` (without them workloads are named from
//! the pod alone, see [`deployment_from_replicaset_name`]).
//!
//! The tests run against an in-test API server (`agent/tests/support/fake_apiserver/`)
//! because no kube-apiserver can be installed on the build machines.

pub mod endpoints;
mod owners;
mod pod;
mod store;
#[cfg(test)]
mod tests;
mod watch;

use std::path::{Path, PathBuf};

use kube::config::{InClusterError, KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

pub use endpoints::{api_server_addresses, watch_api_server_endpoints, watch_api_server_endpoints_with};
pub use pod::{
    deployment_from_replicaset_name, direct_owner, ContainerInfo, ContainerKind, PodInfo, TokenMount, TokenSource,
    Workload, DEFAULT_TOKEN_DIR,
};
pub use store::{next_change, PodStore};
pub use watch::{watch_pods, watch_pods_with, WatchOptions};

/// What can go wrong talking to the Kubernetes API that is not transient: a
/// configuration that can never work.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig given explicitly could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The path that was given.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: KubeconfigError,
    },
    /// Neither the in-cluster configuration nor a kubeconfig file was usable.
    #[error(
        "no Kubernetes API configuration found: in-cluster (KUBERNETES_SERVICE_HOST/PORT and \
         {DEFAULT_TOKEN_DIR}): {in_cluster}; kubeconfig ($KUBECONFIG or ~/.kube/config): {kubeconfig}; \
         run in a pod or give a kubeconfig path"
    )]
    NoConfig {
        /// Why the in-cluster configuration failed.
        in_cluster: Box<InClusterError>,
        /// Why the default kubeconfig failed.
        #[source]
        kubeconfig: KubeconfigError,
    },
    /// The configuration was found but a client could not be built from it
    /// (bad TLS material, for instance).
    #[error("cannot build a Kubernetes client: {0}")]
    Client(#[source] kube::Error),
    /// The node name is empty, so the watch would select every pod of the cluster.
    #[error("no node name to select pods by (set the node name, e.g. from the downward API's spec.nodeName)")]
    NoNodeName,
}

/// Builds an API client: from `kubeconfig` if given; else the in-cluster
/// configuration (the DaemonSet case: service environment variables and the
/// mounted ServiceAccount token); else `$KUBECONFIG` or `~/.kube/config` (a
/// developer's machine). In-cluster comes first, unlike `kube::Config::infer`,
/// so a stray kubeconfig in the agent's image cannot redirect it.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let config = match kubeconfig {
        Some(path) => {
            let explicit = |source| KubeError::Kubeconfig { path: path.to_path_buf(), source };
            let file = Kubeconfig::read_from(path).map_err(explicit)?;
            Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(explicit)?
        }
        None => match Config::incluster() {
            Ok(config) => config,
            Err(in_cluster) => Config::from_kubeconfig(&KubeConfigOptions::default())
                .await
                .map_err(|kubeconfig| KubeError::NoConfig { in_cluster: Box::new(in_cluster), kubeconfig })?,
        },
    };
    Client::try_from(config).map_err(KubeError::Client)
}
