//! A container as the runtime describes it over CRI, reduced to what alerts
//! and the token-file scanner need.

use k8s_cri::v1::ContainerStatusResponse;

/// kubelet's labels on every container it creates.
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_UID: &str = "io.kubernetes.pod.uid";
const CONTAINER_NAME: &str = "io.kubernetes.container.name";

/// What the runtime knows of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMeta {
    /// Container id.
    pub id: String,
    /// Container name in the pod spec.
    pub name: String,
    /// Image as the pod spec named it (else the resolved reference).
    pub image: String,
    /// Pod name, namespace and uid from kubelet's labels.
    pub pod_name: String,
    /// See `pod_name`.
    pub pod_namespace: String,
    /// See `pod_name`.
    pub pod_uid: String,
    /// Host pid of the container's first process, from the verbose status.
    pub init_pid: Option<u32>,
    /// Bind mounts: where a host path appears inside the container.
    pub mounts: Vec<ContainerMount>,
}

/// One CRI mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMount {
    /// Path inside the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Mounted read-only.
    pub readonly: bool,
}

/// Why a status could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    /// The response had no status.
    #[error("the runtime returned no status for container {0}")]
    NoStatus(String),
}

impl ContainerMeta {
    /// Reads a `ContainerStatus` response (verbose, for the init pid).
    pub fn from_status(response: &ContainerStatusResponse) -> Result<Self, ContainerError> {
        let status = response.status.as_ref().ok_or_else(|| ContainerError::NoStatus(String::new()))?;
        let label = |key: &str| status.labels.get(key).cloned().unwrap_or_default();
        let name = status.metadata.as_ref().map(|m| m.name.clone()).filter(|n| !n.is_empty());
        let image = status
            .image
            .as_ref()
            .map(|i| if i.user_specified_image.is_empty() { i.image.clone() } else { i.user_specified_image.clone() })
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| status.image_ref.clone());
        Ok(ContainerMeta {
            id: status.id.clone(),
            name: name.unwrap_or_else(|| label(CONTAINER_NAME)),
            image,
            pod_name: label(POD_NAME),
            pod_namespace: label(POD_NAMESPACE),
            pod_uid: label(POD_UID),
            init_pid: response.info.get("info").and_then(|info| init_pid(info)),
            mounts: status
                .mounts
                .iter()
                .map(|m| ContainerMount {
                    container_path: m.container_path.clone(),
                    host_path: m.host_path.clone(),
                    readonly: m.readonly,
                })
                .collect(),
        })
    }
}

/// containerd and CRI-O put a JSON object under `info` whose `pid` is the
/// container's first process on the host.
fn init_pid(info: &str) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(info).ok()?;
    value.get("pid")?.as_u64().and_then(|pid| u32::try_from(pid).ok()).filter(|pid| *pid > 0)
}

#[cfg(test)]
mod tests {
    use k8s_cri::v1::{ContainerMetadata, ContainerStatus, ImageSpec, Mount};

    use super::*;

    #[test]
    fn reads_kubelet_labels_image_mounts_and_init_pid() {
        let status = ContainerStatus {
            id: "abc".into(),
            metadata: Some(ContainerMetadata { name: "api".into(), attempt: 0 }),
            image: Some(ImageSpec {
                image: "sha256:1".into(),
                user_specified_image: "shop/api:1.4".into(),
                ..Default::default()
            }),
            labels: [(POD_NAME, "checkout-7f9c"), (POD_NAMESPACE, "shop"), (POD_UID, "0b1f")]
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .into(),
            mounts: vec![Mount {
                container_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
                host_path: "/var/lib/kubelet/pods/0b1f/volumes/kubernetes.io~projected/kube-api-access-x".into(),
                readonly: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        let response = ContainerStatusResponse {
            status: Some(status),
            info: [("info".to_owned(), r#"{"pid": 4242, "sandboxID": "s"}"#.to_owned())].into(),
        };
        let meta = ContainerMeta::from_status(&response).expect("status");
        assert_eq!(meta.name, "api");
        assert_eq!(meta.image, "shop/api:1.4");
        assert_eq!(
            (meta.pod_namespace.as_str(), meta.pod_name.as_str(), meta.pod_uid.as_str()),
            ("shop", "checkout-7f9c", "0b1f")
        );
        assert_eq!(meta.init_pid, Some(4242));
        assert_eq!(meta.mounts.len(), 1);
        assert!(meta.mounts[0].readonly);
    }

    #[test]
    fn missing_parts_stay_empty() {
        assert_eq!(
            ContainerMeta::from_status(&ContainerStatusResponse::default()),
            Err(ContainerError::NoStatus(String::new()))
        );
        let response = ContainerStatusResponse {
            status: Some(ContainerStatus { id: "x".into(), image_ref: "sha256:2".into(), ..Default::default() }),
            info: [("info".to_owned(), "not json".to_owned())].into(),
        };
        let meta = ContainerMeta::from_status(&response).expect("status");
        assert_eq!((meta.image.as_str(), meta.init_pid), ("sha256:2", None));
    }
}
