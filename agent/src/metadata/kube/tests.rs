//! Unit tests of the pure parts: Pod -> PodInfo, owner naming, the store.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::*;

fn pod(spec: serde_json::Value, owners: serde_json::Value, labels: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "namespace": "shop", "name": "web-7d4b9c-abcde", "uid": "uid-1",
            "labels": labels, "ownerReferences": owners,
        },
        "spec": spec,
    }))
    .expect("test pod JSON is a Pod")
}

fn default_access_volume() -> serde_json::Value {
    json!({"name": "kube-api-access-x2v9q", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}})
}

fn owner(kind: &str, name: &str, controller: bool) -> serde_json::Value {
    json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": "owner-uid", "controller": controller})
}

fn workload(kind: &str, name: &str) -> Option<Workload> {
    Some(Workload { kind: kind.to_string(), name: name.to_string() })
}

#[test]
fn default_kube_api_access_volume_is_a_token_mount() {
    let spec = json!({
        "serviceAccountName": "builder", "nodeName": "node-a",
        "containers": [{"name": "app", "image": "registry.example/app:1.2", "volumeMounts": [
            {"name": "kube-api-access-x2v9q", "mountPath": DEFAULT_TOKEN_DIR, "readOnly": true},
        ]}],
        "volumes": [default_access_volume()],
    });
    let info = PodInfo::from_pod(&pod(spec, json!([]), json!({"app": "web"})));
    assert_eq!((info.namespace.as_str(), info.name.as_str(), info.uid.as_str()), ("shop", "web-7d4b9c-abcde", "uid-1"));
    assert_eq!(info.service_account, "builder");
    assert_eq!(info.labels, BTreeMap::from([("app".to_string(), "web".to_string())]));
    assert_eq!(info.automount_service_account_token, None);
    assert_eq!(info.deleted_at, None);
    let [app] = info.containers.as_slice() else { panic!("one container expected: {:?}", info.containers) };
    assert_eq!(
        (app.name.as_str(), app.image.as_str(), app.kind),
        ("app", "registry.example/app:1.2", ContainerKind::Regular)
    );
    let [mount] = app.token_mounts.as_slice() else { panic!("one token mount expected: {:?}", app.token_mounts) };
    assert_eq!(mount.volume, "kube-api-access-x2v9q");
    assert_eq!(mount.mount_path, DEFAULT_TOKEN_DIR);
    assert_eq!(
        mount.source,
        TokenSource::Projected { audience: None, expiration_seconds: Some(3607), path: "token".to_string() }
    );
    assert_eq!(mount.token_path().as_deref(), Some("/var/run/secrets/kubernetes.io/serviceaccount/token"));
}

#[test]
fn container_ids_come_from_the_status_without_the_scheme() {
    let mut pod = pod(
        json!({"containers": [{"name": "app"}, {"name": "side"}], "initContainers": [{"name": "setup"}]}),
        json!([]),
        json!({}),
    );
    pod.status = serde_json::from_value(json!({
        "containerStatuses": [
            {"name": "app", "containerID": "containerd://abc123", "image": "i", "imageID": "", "ready": true, "restartCount": 0},
            {"name": "side", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
        ],
        "initContainerStatuses": [
            {"name": "setup", "containerID": "cri-o://def456", "image": "i", "imageID": "", "ready": false, "restartCount": 0},
        ],
    }))
    .expect("a pod status");
    let info = PodInfo::from_pod(&pod);
    let ids: Vec<(&str, Option<&str>)> =
        info.containers.iter().map(|c| (c.name.as_str(), c.container_id.as_deref())).collect();
    assert_eq!(ids, [("setup", Some("def456")), ("app", Some("abc123")), ("side", None)]);
}

#[test]
fn projected_token_at_a_custom_mount_path() {
    let spec = json!({
        "containers": [
            {"name": "app", "image": "app:1", "volumeMounts": [
                {"name": "vault-token", "mountPath": "/var/run/secrets/vault/"},
                {"name": "data", "mountPath": "/data"},
            ]},
            {"name": "sidecar", "image": "proxy:2", "volumeMounts": [
                {"name": "vault-token", "mountPath": "/etc/token-file", "subPath": "sub/vault-token"},
                {"name": "vault-token", "mountPath": "/elsewhere", "subPath": "other"},
            ]},
        ],
        "volumes": [
            {"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "vault", "expirationSeconds": 600, "path": "sub/vault-token"}}]}},
            {"name": "data", "emptyDir": {}},
        ],
    });
    let info = PodInfo::from_pod(&pod(spec, json!([]), json!({})));
    assert_eq!(info.service_account, "default", "unset serviceAccountName means default");
    let expected = TokenSource::Projected {
        audience: Some("vault".to_string()),
        expiration_seconds: Some(600),
        path: "sub/vault-token".to_string(),
    };
    let app = &info.containers[0];
    assert_eq!(app.token_mounts.len(), 1, "emptyDir is not a token: {:?}", app.token_mounts);
    assert_eq!(app.token_mounts[0].source, expected);
    assert_eq!(app.token_mounts[0].token_path().as_deref(), Some("/var/run/secrets/vault/sub/vault-token"));
    let sidecar = &info.containers[1];
    assert_eq!(sidecar.token_mounts[0].sub_path.as_deref(), Some("sub/vault-token"));
    assert_eq!(sidecar.token_mounts[0].token_path().as_deref(), Some("/etc/token-file"));
    assert_eq!(sidecar.token_mounts[1].token_path(), None, "a subPath beside the token does not show it");
}

#[test]
fn automount_false_and_no_token_volume() {
    let spec = json!({"automountServiceAccountToken": false, "containers": [{"name": "app", "image": "app:1"}]});
    let info = PodInfo::from_pod(&pod(spec, json!([]), json!({})));
    assert_eq!(info.automount_service_account_token, Some(false));
    assert!(info.containers[0].token_mounts.is_empty());
}

#[test]
fn init_and_ephemeral_containers_are_kept_apart() {
    let mount = json!([{"name": "kube-api-access-x2v9q", "mountPath": DEFAULT_TOKEN_DIR}]);
    let spec = json!({
        "initContainers": [{"name": "setup", "image": "setup:1", "volumeMounts": mount}],
        "containers": [{"name": "app", "image": "app:1"}],
        "ephemeralContainers": [{"name": "debugger", "image": "busybox", "volumeMounts": mount}],
        "volumes": [default_access_volume()],
    });
    let info = PodInfo::from_pod(&pod(spec, json!([]), json!({})));
    let kinds: Vec<_> = info.containers.iter().map(|c| (c.name.as_str(), c.kind, c.token_mounts.len())).collect();
    assert_eq!(
        kinds,
        [
            ("setup", ContainerKind::Init, 1),
            ("app", ContainerKind::Regular, 0),
            ("debugger", ContainerKind::Ephemeral, 1)
        ]
    );
}

#[test]
fn legacy_secret_tokens_are_recognised() {
    let spec = json!({
        "containers": [{"name": "app", "image": "app:1", "volumeMounts": [
            {"name": "default-token-7xk2p", "mountPath": DEFAULT_TOKEN_DIR},
            {"name": "sa-secret", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount-copy"},
            {"name": "tls", "mountPath": "/etc/tls"},
        ]}],
        "volumes": [
            {"name": "default-token-7xk2p", "secret": {"secretName": "default-token-7xk2p"}},
            {"name": "sa-secret", "secret": {"secretName": "ci-token-ab12c", "items": [{"key": "token", "path": "jwt"}]}},
            {"name": "tls", "secret": {"secretName": "web-tls"}},
        ],
    });
    let info = PodInfo::from_pod(&pod(spec, json!([]), json!({})));
    let paths: Vec<_> = info.containers[0].token_mounts.iter().map(TokenMount::token_path).collect();
    assert_eq!(
        paths,
        [
            Some("/var/run/secrets/kubernetes.io/serviceaccount/token".to_string()),
            Some("/var/run/secrets/kubernetes.io/serviceaccount-copy/jwt".to_string()),
        ]
    );
    assert_eq!(
        info.containers[0].token_mounts[1].source,
        TokenSource::LegacySecret { secret_name: "ci-token-ab12c".to_string(), path: "jwt".to_string() }
    );
}

#[test]
fn direct_owner_of_each_controller_kind() {
    let spec = json!({"containers": [{"name": "app", "image": "app:1"}]});
    for (kind, name) in
        [("ReplicaSet", "web-7d4b9c"), ("DaemonSet", "agent"), ("StatefulSet", "db"), ("Job", "migrate")]
    {
        let info = PodInfo::from_pod(&pod(spec.clone(), json!([owner(kind, name, true)]), json!({})));
        assert_eq!(info.workload, workload(kind, name));
    }
    assert_eq!(PodInfo::from_pod(&pod(spec.clone(), json!([]), json!({}))).workload, None);
    let two = json!([owner("Thing", "not-controller", false), owner("StatefulSet", "db", true)]);
    assert_eq!(PodInfo::from_pod(&pod(spec, two, json!({}))).workload, workload("StatefulSet", "db"));
}

#[test]
fn replicaset_name_fallback_needs_the_pod_template_hash_label() {
    let hash = BTreeMap::from([("pod-template-hash".to_string(), "7d4b9c".to_string())]);
    assert_eq!(Some(deployment_from_replicaset_name("web-7d4b9c", &hash)), workload("Deployment", "web"));
    assert_eq!(
        Some(deployment_from_replicaset_name("web-7d4b9c", &BTreeMap::new())),
        workload("ReplicaSet", "web-7d4b9c")
    );
    assert_eq!(Some(deployment_from_replicaset_name("web-other", &hash)), workload("ReplicaSet", "web-other"));
    assert_eq!(Some(deployment_from_replicaset_name("7d4b9c", &hash)), workload("ReplicaSet", "7d4b9c"));
}

fn info(uid: &str) -> PodInfo {
    PodInfo {
        uid: uid.to_string(),
        name: format!("pod-{uid}"),
        ..PodInfo::from_pod(&pod(json!({"containers": []}), json!([]), json!({})))
    }
}

#[test]
fn store_keeps_deleted_pods_for_the_grace_period() {
    let store = PodStore::new(Duration::from_secs(60));
    store.upsert(info("a"));
    store.upsert(info("b"));
    let long_ago = Instant::now() - Duration::from_secs(120);
    store.mark_deleted(info("a"), Instant::now());
    store.mark_deleted(info("b"), long_ago);
    assert!(store.get("a").is_some_and(|p| p.deleted_at.is_some()), "recently deleted stays resolvable");
    assert!(store.get("b").is_none(), "deleted beyond the grace period is gone");
    assert_eq!(store.len(), 1);
    store.prune(Instant::now());
    assert_eq!(store.snapshot().len(), 1);
    store.upsert(info("a"));
    assert_eq!(store.get("a").and_then(|p| p.deleted_at), None, "listed again: alive");
}

#[test]
fn relist_marks_missing_pods_deleted() {
    let store = PodStore::new(Duration::from_secs(60));
    for uid in ["a", "b", "c"] {
        store.upsert(info(uid));
    }
    let listed = HashSet::from(["a".to_string(), "c".to_string()]);
    assert_eq!(store.mark_missing(&listed, Instant::now()), 1);
    assert!(store.get("b").is_some_and(|p| p.deleted_at.is_some()));
    assert!(store.get("a").is_some_and(|p| p.deleted_at.is_none()));
    assert_eq!(store.mark_missing(&listed, Instant::now()), 0, "already marked");
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let options = WatchOptions { backoff_min: Duration::from_millis(100), ..WatchOptions::default() };
    // Whole milliseconds: backon doubles in f32.
    let delays: Vec<u128> = options.retry_delays().take(12).map(|d| d.as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 800, 1_600, 3_200, 6_400, 12_800, 25_600, 30_000, 30_000, 30_000]);
}

#[tokio::test]
async fn client_names_the_kubeconfig_it_could_not_read() {
    let missing = std::path::Path::new("/nonexistent/tokenwatch/kubeconfig");
    let err = client(Some(missing)).await.err().expect("a missing kubeconfig is an error");
    assert!(err.to_string().contains("/nonexistent/tokenwatch/kubeconfig"), "{err}");

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config");
    let kubeconfig = "apiVersion: v1\nkind: Config\ncurrent-context: t\n\
        clusters: [{name: t, cluster: {server: 'http://127.0.0.1:1'}}]\n\
        contexts: [{name: t, context: {cluster: t, user: t}}]\nusers: [{name: t, user: {}}]\n";
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");
    client(Some(&path)).await.expect("a valid kubeconfig gives a client");
}
