//! What the agent keeps about one pod, converted from the API's `Pod`.
//!
//! The conversion is pure so it can be tested without an API server; the only
//! part that needs the API (resolving a ReplicaSet to its Deployment) lives in
//! `owners.rs` and overwrites [`PodInfo::workload`] afterwards.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Volume, VolumeMount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

/// Where kubelet mounts the default token volume; a Secret volume mounted here
/// is a legacy (pre-1.24 style) token even if its name does not say so.
pub const DEFAULT_TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// What the agent needs to know about one pod to name it in an alert and to
/// know which files in it are ServiceAccount tokens.
#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's UID, the key CRI labels (`io.kubernetes.pod.uid`) carry too.
    pub uid: String,
    /// The ServiceAccount whose token the pod gets; `default` when unset, as
    /// the admission plugin would have set it.
    pub service_account: String,
    /// The pod's labels, for policies that select on them.
    pub labels: BTreeMap<String, String>,
    /// The controller that owns the pod, resolved one step up where that is
    /// what a human means (ReplicaSet -> Deployment, Job -> CronJob); `None`
    /// for a bare pod.
    pub workload: Option<Workload>,
    /// The pod spec's `automountServiceAccountToken` (`None` = unset). A read
    /// of a token the spec says should not be there is worth noticing.
    pub automount_service_account_token: Option<bool>,
    /// Init, regular and ephemeral containers, each with its token mounts.
    pub containers: Vec<ContainerInfo>,
    /// When a deletion was seen; the pod stays resolvable for a grace period
    /// because its last processes may still be reported after it is gone.
    pub deleted_at: Option<Instant>,
}

/// The controller a pod belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Workload {
    /// `Deployment`, `DaemonSet`, `StatefulSet`, `Job`, `CronJob`, `ReplicaSet`, or any other owner kind.
    pub kind: String,
    /// The controller's name, in the pod's namespace.
    pub name: String,
}

/// Which list of the pod spec a container comes from; an ephemeral (debug)
/// container reading a token is a different story from the app doing so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    /// `spec.initContainers` (including restartable sidecars).
    Init,
    /// `spec.containers`.
    Regular,
    /// `spec.ephemeralContainers` (`kubectl debug`).
    Ephemeral,
}

/// One container of the pod.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerInfo {
    /// The container's name, unique within the pod.
    pub name: String,
    /// The image as written in the spec (empty if unset).
    pub image: String,
    /// Which list of the spec it comes from.
    pub kind: ContainerKind,
    /// The mounts through which this container sees a ServiceAccount token.
    pub token_mounts: Vec<TokenMount>,
    /// The runtime's id of the running (or last) instance, from the pod's
    /// status (`containerd://<id>` without the scheme): names the container
    /// of an event even when the runtime can no longer be asked.
    pub container_id: Option<String>,
}

/// A volume mount that puts a ServiceAccount token into a container.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenMount {
    /// Where the volume is mounted in the container.
    pub mount_path: String,
    /// The pod volume's name (`kube-api-access-xxxxx` for the default one).
    pub volume: String,
    /// The mount's `subPath`, if it mounts only part of the volume.
    pub sub_path: Option<String>,
    /// What kind of token the volume holds.
    pub source: TokenSource,
}

/// Where a token in a volume comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// A projected volume's `serviceAccountToken` source (bound, expiring token).
    Projected {
        /// The audience the token is minted for (`None` = the API server's).
        audience: Option<String>,
        /// Requested lifetime (`None` = the default, one hour).
        expiration_seconds: Option<i64>,
        /// The file's path inside the volume.
        path: String,
    },
    /// A Secret volume holding a legacy, non-expiring token. Recognised without
    /// reading the Secret (the agent may not): mounted at [`DEFAULT_TOKEN_DIR`]
    /// or named like the token controller named them (`<sa>-token-xxxxx`).
    LegacySecret {
        /// The Secret's name.
        secret_name: String,
        /// The token file's path inside the volume (`token` unless remapped by `items`).
        path: String,
    },
}

impl TokenMount {
    /// The token file's path as the container sees it, or `None` when a
    /// `subPath` mounts a part of the volume that does not contain it.
    pub fn token_path(&self) -> Option<String> {
        let file = match &self.source {
            TokenSource::Projected { path, .. } | TokenSource::LegacySecret { path, .. } => path.trim_matches('/'),
        };
        let base = self.mount_path.trim_end_matches('/');
        let rest = match self.sub_path.as_deref().map(|s| s.trim_matches('/')).filter(|s| !s.is_empty()) {
            None => file,
            Some(sub) if sub == file => return Some(self.mount_path.clone()),
            Some(sub) => file.strip_prefix(sub)?.strip_prefix('/')?,
        };
        Some(format!("{base}/{rest}"))
    }
}

impl PodInfo {
    /// Converts an API `Pod`. `workload` is the pod's direct controller here
    /// (see [`direct_owner`]); the watcher resolves it further with the API.
    pub fn from_pod(pod: &Pod) -> PodInfo {
        let meta = &pod.metadata;
        let spec = pod.spec.as_ref();
        let volumes: HashMap<&str, &Volume> =
            spec.and_then(|s| s.volumes.as_ref()).into_iter().flatten().map(|v| (v.name.as_str(), v)).collect();
        let mut containers = Vec::new();
        if let Some(spec) = spec {
            let init = spec.init_containers.iter().flatten().map(|c| (ContainerKind::Init, c));
            let regular = spec.containers.iter().map(|c| (ContainerKind::Regular, c));
            for (kind, c) in init.chain(regular) {
                containers.push(container(&c.name, c.image.as_deref(), kind, c.volume_mounts.as_deref(), &volumes));
            }
            for c in spec.ephemeral_containers.iter().flatten() {
                let mounts = c.volume_mounts.as_deref();
                containers.push(container(&c.name, c.image.as_deref(), ContainerKind::Ephemeral, mounts, &volumes));
            }
        }
        let statuses = pod.status.as_ref().into_iter().flat_map(|status| {
            let lists =
                [&status.init_container_statuses, &status.container_statuses, &status.ephemeral_container_statuses];
            lists.into_iter().flat_map(|list| list.iter().flatten())
        });
        for status in statuses {
            let id = status.container_id.as_deref().map(|id| id.split_once("://").map_or(id, |(_, id)| id));
            if let Some(container) = containers.iter_mut().find(|c| c.name == status.name) {
                container.container_id = id.filter(|id| !id.is_empty()).map(str::to_owned);
            }
        }
        PodInfo {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            service_account: spec
                .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            labels: meta.labels.clone().unwrap_or_default(),
            workload: direct_owner(meta.owner_references.as_deref().unwrap_or_default()),
            automount_service_account_token: spec.and_then(|s| s.automount_service_account_token),
            containers,
            deleted_at: None,
        }
    }
}

/// The owner marked `controller: true`, else the first owner: the object that
/// created the pod, before any resolution through the API.
pub fn direct_owner(owners: &[OwnerReference]) -> Option<Workload> {
    owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())
        .map(|o| Workload { kind: o.kind.clone(), name: o.name.clone() })
}

/// The Deployment a ReplicaSet belongs to, guessed without the API: the
/// Deployment controller names a ReplicaSet `<deployment>-<pod-template-hash>`
/// and labels its pods `pod-template-hash=<hash>`. Only when the pod carries
/// that label and the name ends with it is the answer "Deployment"; otherwise
/// the ReplicaSet itself (a bare ReplicaSet has no such label).
pub fn deployment_from_replicaset_name(replicaset: &str, labels: &BTreeMap<String, String>) -> Workload {
    let deployment = labels
        .get("pod-template-hash")
        .filter(|hash| !hash.is_empty())
        .and_then(|hash| replicaset.strip_suffix(hash.as_str()))
        .and_then(|rest| rest.strip_suffix('-'))
        .filter(|name| !name.is_empty());
    match deployment {
        Some(name) => Workload { kind: "Deployment".to_string(), name: name.to_string() },
        None => Workload { kind: "ReplicaSet".to_string(), name: replicaset.to_string() },
    }
}

fn container(
    name: &str,
    image: Option<&str>,
    kind: ContainerKind,
    mounts: Option<&[VolumeMount]>,
    volumes: &HashMap<&str, &Volume>,
) -> ContainerInfo {
    let mut token_mounts = Vec::new();
    for mount in mounts.unwrap_or_default() {
        let Some(volume) = volumes.get(mount.name.as_str()) else { continue };
        for source in token_sources(volume, &mount.mount_path) {
            token_mounts.push(TokenMount {
                mount_path: mount.mount_path.clone(),
                volume: mount.name.clone(),
                sub_path: mount.sub_path.clone().filter(|s| !s.is_empty()),
                source,
            });
        }
    }
    ContainerInfo {
        name: name.to_string(),
        image: image.unwrap_or_default().to_string(),
        kind,
        token_mounts,
        container_id: None,
    }
}

/// The tokens a volume holds: one per projected `serviceAccountToken` source,
/// or one for a Secret volume that looks like a legacy token.
fn token_sources(volume: &Volume, mount_path: &str) -> Vec<TokenSource> {
    if let Some(projected) = &volume.projected {
        return projected
            .sources
            .iter()
            .flatten()
            .filter_map(|s| s.service_account_token.as_ref())
            .map(|t| TokenSource::Projected {
                audience: t.audience.clone().filter(|a| !a.is_empty()),
                expiration_seconds: t.expiration_seconds,
                path: t.path.clone(),
            })
            .collect();
    }
    let Some(secret) = &volume.secret else { return Vec::new() };
    let secret_name = secret.secret_name.clone().unwrap_or_default();
    let at_default_dir =
        [DEFAULT_TOKEN_DIR, "/run/secrets/kubernetes.io/serviceaccount"].contains(&mount_path.trim_end_matches('/'));
    if !at_default_dir && !looks_like_legacy_token_secret(&secret_name) {
        return Vec::new();
    }
    let path = match &secret.items {
        None => Some("token".to_string()),
        Some(items) => items.iter().find(|i| i.key == "token").map(|i| i.path.clone()),
    };
    path.map(|path| vec![TokenSource::LegacySecret { secret_name, path }]).unwrap_or_default()
}

/// `<serviceaccount>-token-<5 characters>`, as the legacy token controller named its Secrets.
fn looks_like_legacy_token_secret(name: &str) -> bool {
    name.rsplit_once("-token-").is_some_and(|(sa, suffix)| {
        !sa.is_empty() && suffix.len() == 5 && suffix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    })
}
