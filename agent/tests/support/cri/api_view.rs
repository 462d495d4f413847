//! The Kubernetes API's view of the harness's pods, for the in-test API
//! server: what kubelet's pod would say of the CRI pod the harness runs
//! (its node, ServiceAccount, container and image, the token volumes it
//! mounts, its container's runtime id), and the owners that name its
//! workload.

use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Pod as ApiPod};
use serde_json::{json, Value};

use super::{Pod, PodSpec, IMAGE, SA_MOUNT};

/// The node the agent is told it runs on.
pub const NODE: &str = "node-under-test";

/// The ServiceAccount token volume every pod gets by default
/// (`automountServiceAccountToken`), mounted at [`SA_MOUNT`].
pub fn automount_volume() -> Value {
    json!({"name": "kube-api-access-abcde", "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}})
}

/// The API's view of `pod` on [`NODE`] once kubelet runs it: as
/// [`scheduled_pod`], with its container's status (the runtime id the
/// agent ties the pod to).
pub fn api_pod(pod: &Pod<'_>, volume: Value, owner: Option<(&str, &str)>) -> ApiPod {
    let spec = pod.spec();
    let mut value = scheduled(spec, volume, owner);
    value["status"] = json!({"containerStatuses": [{"name": spec.container_name, "containerID":
        format!("containerd://{}", pod.container_id()), "image": IMAGE, "imageID": "", "ready": true,
        "restartCount": 0}]});
    serde_json::from_value(value).expect("a Pod")
}

/// A pod as the API holds it once scheduled to [`NODE`], before kubelet
/// has started anything (no status yet).
pub fn scheduled_pod(spec: &PodSpec, volume: Value, owner: Option<(&str, &str)>) -> ApiPod {
    serde_json::from_value(scheduled(spec, volume, owner)).expect("a Pod")
}

/// The pod of `spec` on [`NODE`], with `volume` mounted at [`SA_MOUNT`],
/// and, when the spec has one, its custom projected token (audience
/// `vault`) at its own mount path. With `owner` (Deployment, ReplicaSet)
/// it is that Deployment's pod, labelled as its ReplicaSet labels it.
fn scheduled(spec: &PodSpec, volume: Value, owner: Option<(&str, &str)>) -> Value {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": spec.namespace, "name": spec.name, "uid": spec.uid},
        "spec": {
            "nodeName": NODE, "serviceAccountName": spec.service_account,
            "containers": [{"name": spec.container_name, "image": IMAGE, "volumeMounts": [
                {"name": volume["name"], "mountPath": SA_MOUNT, "readOnly": true}]}],
            "volumes": [volume],
        },
    });
    if let Some((deployment, replicaset)) = owner {
        value["metadata"]["labels"] = json!({"app": deployment, "pod-template-hash": replicaset.rsplit('-').next()});
        value["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": replicaset, "uid": "rs-uid", "controller": true}]);
    }
    if let Some((mount_path, file)) = &spec.projected {
        value["spec"]["containers"][0]["volumeMounts"]
            .as_array_mut()
            .expect("mounts")
            .push(json!({"name": "vault-token", "mountPath": mount_path, "readOnly": true}));
        value["spec"]["volumes"].as_array_mut().expect("volumes").push(json!({"name": "vault-token", "projected":
            {"sources": [{"serviceAccountToken": {"audience": "vault", "expirationSeconds": 600, "path": file}}]}}));
    }
    value
}

/// ReplicaSet `namespace/name`, owned by Deployment `deployment`.
pub fn replicaset_of(namespace: &str, name: &str, deployment: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"namespace": namespace, "name": name, "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment, "uid": "d-uid", "controller": true}]},
        "spec": {"selector": {}},
    }))
    .expect("a ReplicaSet")
}
