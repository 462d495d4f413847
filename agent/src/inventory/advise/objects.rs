//! The Kubernetes objects the advice consists of, as JSON values (rendered
//! to YAML by `render`): ServiceAccounts, pod-template patches (server-side
//! apply configurations: only the fields the advice sets), NetworkPolicies
//! and the Kyverno ClusterPolicy.

use serde_json::{json, Map, Value};
use tokenwatch_proto::v1::{TokenMount, WorkloadInventory};

/// The label every object carries, naming its step of the rollout, so each
/// step can be applied alone: `kubectl apply -l tokenwatch.io/advice-step=1-serviceaccounts`.
pub const STEP_LABEL: &str = "tokenwatch.io/advice-step";
/// Step 1: ServiceAccounts (restarts nothing).
pub const STEP_SERVICE_ACCOUNTS: &str = "1-serviceaccounts";
/// Step 2: pod-template patches (rolls the pods).
pub const STEP_WORKLOADS: &str = "2-workloads";
/// Step 3: NetworkPolicies.
pub const STEP_NETWORK: &str = "3-networkpolicies";
/// Step 4: the admission policy.
pub const STEP_ADMISSION: &str = "4-admission";
/// The projected volume the advice adds instead of a legacy Secret token.
pub const PROJECTED_VOLUME: &str = "tokenwatch-projected-token";

fn metadata(name: &str, namespace: Option<&str>, step: &str) -> Value {
    let mut meta = json!({"name": name, "labels": {STEP_LABEL: step}});
    if let Some(namespace) = namespace {
        meta["namespace"] = json!(namespace);
    }
    meta
}

/// A ServiceAccount with automount off (a new one, or an existing one
/// changed by server-side apply: only this field is set).
pub fn service_account(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": metadata(name, Some(namespace), STEP_SERVICE_ACCOUNTS),
        "automountServiceAccountToken": false,
    })
}

/// Where a kind keeps its pod template, and its API version; `None` for
/// kinds whose template cannot be patched (a Pod's and a Job's are
/// immutable) or that tokenwatch does not know.
pub fn template_path(kind: &str) -> Option<(&'static str, &'static [&'static str])> {
    match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => Some(("apps/v1", &["spec", "template", "spec"])),
        "CronJob" => Some(("batch/v1", &["spec", "jobTemplate", "spec", "template", "spec"])),
        _ => None,
    }
}

/// A patch of `workload`'s pod template setting `pod_spec` (a server-side
/// apply configuration), or `None` if the kind cannot be patched.
pub fn template_patch(workload: &WorkloadInventory, pod_spec: Map<String, Value>) -> Option<Value> {
    let owner = workload.workload.as_ref()?;
    let (api_version, path) = template_path(&owner.kind)?;
    let mut inner = Value::Object(pod_spec);
    for step in path.iter().rev() {
        let mut wrapper = Map::new();
        wrapper.insert((*step).to_owned(), inner);
        inner = Value::Object(wrapper);
    }
    let mut object = json!({
        "apiVersion": api_version, "kind": owner.kind,
        "metadata": metadata(&owner.name, Some(&workload.namespace), STEP_WORKLOADS),
    });
    object["spec"] = inner["spec"].take();
    Some(object)
}

/// The pod-spec fields that turn the token off (and move the pod to its own
/// ServiceAccount).
pub fn automount_off(new_service_account: Option<&str>) -> Map<String, Value> {
    let mut spec = Map::new();
    spec.insert("automountServiceAccountToken".into(), json!(false));
    if let Some(name) = new_service_account {
        spec.insert("serviceAccountName".into(), json!(name));
    }
    spec
}

/// The pod-spec fields that mount a projected token (with the CA and the
/// namespace, as the default volume has, so in-cluster clients keep
/// working) where each legacy Secret token was mounted. The Secret volume
/// stays defined but unmounted (server-side apply cannot remove a field
/// another manager owns); delete it from the manifests afterwards.
pub fn projected_token(legacy: &[TokenMount], audience: &str, expiration_seconds: i64) -> Map<String, Value> {
    let volume = json!({
        "name": PROJECTED_VOLUME,
        "projected": {"sources": [
            {"serviceAccountToken": {"path": "token", "audience": audience, "expirationSeconds": expiration_seconds}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]},
    });
    let mut containers: Vec<(String, Vec<Value>)> = Vec::new();
    for mount in legacy {
        for container in &mount.containers {
            let volume_mount = json!({"name": PROJECTED_VOLUME, "mountPath": mount.mount_path, "readOnly": true});
            match containers.iter_mut().find(|(name, _)| name == container) {
                Some((_, mounts)) => mounts.push(volume_mount),
                None => containers.push((container.clone(), vec![volume_mount])),
            }
        }
    }
    let containers: Vec<Value> =
        containers.into_iter().map(|(name, mounts)| json!({"name": name, "volumeMounts": mounts})).collect();
    let mut spec = Map::new();
    spec.insert("volumes".into(), json!([volume]));
    spec.insert("containers".into(), Value::Array(containers));
    spec
}

/// The article's deny-api-access policy: the workload's pods may send DNS
/// to kube-dns and nothing else, so a stolen token cannot reach the API
/// server.
pub fn deny_api_egress(workload: &WorkloadInventory) -> Value {
    let name = workload.workload.as_ref().map_or("workload", |w| w.name.as_str());
    let labels: std::collections::BTreeMap<&String, &String> = workload.selector_labels.iter().collect();
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": metadata(&format!("{}-deny-api-access", truncate(name, 235)), Some(&workload.namespace), STEP_NETWORK),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Egress"],
            "egress": [{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            }],
        },
    })
}

/// Name of the admission policy.
pub const CLUSTER_POLICY: &str = "tokenwatch-restrict-token-automount";

/// The Kyverno ClusterPolicy: outside `allowed` namespaces, a pod must set
/// `automountServiceAccountToken: false` or is refused.
pub fn cluster_policy(allowed: &[String], enforce: bool) -> Value {
    let mut rule = json!({
        "name": "require-automount-false",
        "match": {"any": [{"resources": {"kinds": ["Pod"]}}]},
        "validate": {
            "message": "Pods outside the namespaces that need ServiceAccount tokens must set \
                        automountServiceAccountToken: false (tokenwatch advise: no workload here used its token).",
            "pattern": {"spec": {"automountServiceAccountToken": "false"}},
        },
    });
    if !allowed.is_empty() {
        rule["exclude"] = json!({"any": [{"resources": {"namespaces": allowed}}]});
    }
    json!({
        "apiVersion": "kyverno.io/v1", "kind": "ClusterPolicy",
        "metadata": {
            "name": CLUSTER_POLICY,
            "labels": {STEP_LABEL: STEP_ADMISSION},
            "annotations": {
                "policies.kyverno.io/title": "Restrict ServiceAccount token automount",
                "policies.kyverno.io/category": "Security",
                "policies.kyverno.io/subject": "Pod",
                "policies.kyverno.io/description": "Generated by tokenwatch advise from runtime evidence: \
                    namespaces whose workloads read their token or dial the API server are allowed; \
                    elsewhere pods must opt out of the token.",
            },
        },
        "spec": {
            "validationFailureAction": if enforce { "Enforce" } else { "Audit" },
            "background": true,
            "rules": [rule],
        },
    })
}

fn truncate(name: &str, max: usize) -> &str {
    name.char_indices().nth(max).map_or(name, |(at, _)| &name[..at])
}
