//! What the inventory learns from a pod: which workload and ServiceAccount
//! it belongs to, how its token is mounted, and the labels that may select
//! its workload's pods.

use std::collections::{BTreeMap, HashMap};

use tokenwatch_proto::v1::{TokenMount, TokenMountKind, Workload};

use crate::metadata::kube::{PodInfo, TokenSource, DEFAULT_TOKEN_DIR};

/// The kind given to a pod that no controller owns.
pub const BARE_POD_KIND: &str = "Pod";

/// Labels set per pod or per revision by controllers: a selector with them
/// would match one pod or one revision, never the workload.
const PER_POD_LABELS: &[&str] = &[
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "batch.kubernetes.io/job-completion-index",
];

/// The inventory's key: namespace, owner kind, owner name, ServiceAccount.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// The namespace.
    pub namespace: String,
    /// The owner's kind (`Pod` for a bare pod).
    pub kind: String,
    /// The owner's name.
    pub name: String,
    /// The ServiceAccount.
    pub service_account: String,
}

impl Key {
    /// The key of a pod: its resolved workload, or the pod itself.
    pub fn of_pod(pod: &PodInfo) -> Key {
        Key::new(
            &pod.namespace,
            pod.workload.as_ref().map(|w| (w.kind.as_str(), w.name.as_str())),
            &pod.name,
            &pod.service_account,
        )
    }

    /// A key from an alert's or a pod's fields; `owner` empty or absent
    /// means the pod stands for itself.
    pub fn new(namespace: &str, owner: Option<(&str, &str)>, pod: &str, service_account: &str) -> Key {
        let (kind, name) = match owner.filter(|(kind, name)| !kind.is_empty() && !name.is_empty()) {
            Some((kind, name)) => (kind.to_owned(), name.to_owned()),
            None => (BARE_POD_KIND.to_owned(), pod.to_owned()),
        };
        let service_account = if service_account.is_empty() { "default" } else { service_account };
        Key { namespace: namespace.to_owned(), kind, name, service_account: service_account.to_owned() }
    }

    /// The key's workload message.
    pub fn workload(&self) -> Workload {
        Workload { kind: self.kind.clone(), name: self.name.clone() }
    }
}

/// The labels of a pod that could select its workload's pods.
pub fn selector_labels(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    labels
        .iter()
        .filter(|(key, _)| !PER_POD_LABELS.contains(&key.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Keeps only the labels both sides carry with the same value.
pub fn intersect_labels(into: &mut HashMap<String, String>, other: &HashMap<String, String>) {
    into.retain(|key, value| other.get(key) == Some(value));
}

/// How each container of the pod gets a token, one entry per distinct mount
/// (the containers that share it listed together).
pub fn token_mounts(pod: &PodInfo) -> Vec<TokenMount> {
    let mut mounts: Vec<TokenMount> = Vec::new();
    for container in &pod.containers {
        for mount in &container.token_mounts {
            let at_default_dir = [DEFAULT_TOKEN_DIR, "/run/secrets/kubernetes.io/serviceaccount"]
                .contains(&mount.mount_path.trim_end_matches('/'));
            let mut found = match &mount.source {
                TokenSource::Projected { audience, expiration_seconds, .. } => {
                    let automount =
                        at_default_dir && audience.is_none() && mount.volume.starts_with("kube-api-access-");
                    TokenMount {
                        kind: if automount { TokenMountKind::DefaultAutomount } else { TokenMountKind::Projected }
                            .into(),
                        mount_path: mount.mount_path.clone(),
                        audience: audience.clone().unwrap_or_default(),
                        expiration_seconds: expiration_seconds.unwrap_or_default(),
                        secret_name: String::new(),
                        containers: Vec::new(),
                    }
                }
                TokenSource::LegacySecret { secret_name, .. } => TokenMount {
                    kind: TokenMountKind::LegacySecret.into(),
                    mount_path: mount.mount_path.clone(),
                    audience: String::new(),
                    expiration_seconds: 0,
                    secret_name: secret_name.clone(),
                    containers: Vec::new(),
                },
            };
            found.containers.push(container.name.clone());
            add_mount(&mut mounts, found);
        }
    }
    mounts
}

/// Adds `mount` to `into`, or its containers to the same mount already there.
pub fn add_mount(into: &mut Vec<TokenMount>, mount: TokenMount) {
    let same = |m: &&mut TokenMount| {
        (m.kind, &m.mount_path, &m.audience, m.expiration_seconds, &m.secret_name)
            == (mount.kind, &mount.mount_path, &mount.audience, mount.expiration_seconds, &mount.secret_name)
    };
    match into.iter_mut().find(same) {
        Some(known) => {
            for container in mount.containers {
                if !known.containers.contains(&container) {
                    known.containers.push(container);
                }
            }
            known.containers.sort();
        }
        None => {
            into.push(mount);
            into.sort_by(|a, b| (a.kind, &a.mount_path).cmp(&(b.kind, &b.mount_path)));
        }
    }
}
