//! The pod watcher (`metadata::kube`) against an in-test API server.
//!
//! No kube-apiserver can be installed on the build machines, so these tests
//! run kube-rs's real client and watcher against `support/fake_apiserver/`,
//! which speaks the real list/watch protocol (JSON of k8s-openapi types, watch
//! events, resourceVersion, bookmarks, 410 Gone) on 127.0.0.1. No root needed.

#[path = "support/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokenwatch_agent::metadata::kube::{
    watch_pods_with, KubeError, PodInfo, PodStore, TokenSource, WatchOptions, Workload, DEFAULT_TOKEN_DIR,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "node-a";
const OTHER_NODE: &str = "node-b";
/// How long any expected change may take to reach the store.
const WAIT: Duration = Duration::from_secs(5);

/// A pod as the API serves it after admission: default token volume, owner, labels.
fn pod(name: &str, node: &str, owner: Option<(&str, &str)>) -> Pod {
    let owners: Vec<_> = owner
        .iter()
        .map(|(kind, owner)| json!({"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": "u", "controller": true}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"),
                     "labels": {"app": name, "pod-template-hash": "5f7c9"}, "ownerReferences": owners},
        "spec": {
            "nodeName": node, "serviceAccountName": "shop-sa",
            "containers": [{"name": "app", "image": format!("registry.example/{name}:1"), "volumeMounts": [
                {"name": "kube-api-access-abcde", "mountPath": DEFAULT_TOKEN_DIR, "readOnly": true}]}],
            "volumes": [{"name": "kube-api-access-abcde", "projected": {"sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
        },
    }))
    .expect("test pod JSON is a Pod")
}

fn uid(name: &str) -> String {
    format!("uid-{name}")
}

/// A watcher running against `server` with test timings.
struct Watching {
    store: PodStore,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), KubeError>>,
}

impl Watching {
    fn start(server: &FakeApiServer, deleted_grace: Duration) -> Watching {
        let store = PodStore::new(deleted_grace);
        let cancel = CancellationToken::new();
        let options = WatchOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            watch_timeout_seconds: 60,
            owner_lookup_timeout: Duration::from_secs(2),
        };
        let task =
            tokio::spawn(watch_pods_with(server.client(), NODE.to_string(), store.clone(), cancel.clone(), options));
        Watching { store, cancel, task }
    }

    async fn pod(&self, name: &str, what: &str, check: impl Fn(&PodInfo) -> bool) -> std::sync::Arc<PodInfo> {
        let found = eventually(|| self.store.get(&uid(name)).filter(|p| check(p))).await;
        found.unwrap_or_else(|| panic!("{name}: {what}; store has {:?}", self.store.get(&uid(name))))
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(WAIT, self.task).await.expect("watcher stops when cancelled");
        result.expect("watcher task").expect("cancelled watcher returns Ok");
    }
}

async fn eventually<T>(mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    eventually(|| check().then_some(())).await.unwrap_or_else(|| panic!("timed out waiting until {what}"));
}

#[tokio::test]
async fn pods_of_this_node_appear_with_all_fields() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("listed", NODE, Some(("DaemonSet", "agent"))));
    let watching = Watching::start(&server, Duration::from_secs(30));
    let listed = watching.pod("listed", "listed pod appears", |_| true).await;
    server.add_pod(pod("watched", NODE, None));
    let watched = watching.pod("watched", "watched pod appears", |_| true).await;

    assert_eq!((listed.namespace.as_str(), listed.name.as_str()), ("shop", "listed"));
    assert_eq!(listed.service_account, "shop-sa");
    assert_eq!(listed.labels.get("app").map(String::as_str), Some("listed"));
    assert_eq!(listed.workload, Some(Workload { kind: "DaemonSet".into(), name: "agent".into() }));
    assert_eq!(listed.automount_service_account_token, None);
    assert_eq!(watched.workload, None);
    let container = &watched.containers[0];
    assert_eq!((container.name.as_str(), container.image.as_str()), ("app", "registry.example/watched:1"));
    assert_eq!(container.token_mounts.len(), 1);
    assert_eq!(container.token_mounts[0].volume, "kube-api-access-abcde");
    assert_eq!(
        container.token_mounts[0].source,
        TokenSource::Projected { audience: None, expiration_seconds: Some(3607), path: "token".into() }
    );
    assert_eq!(
        container.token_mounts[0].token_path().as_deref(),
        Some("/var/run/secrets/kubernetes.io/serviceaccount/token")
    );
    let selector = format!("fieldSelector=spec.nodeName%3D{NODE}");
    assert!(server.requests().iter().all(|r| !r.starts_with("/api/v1/pods") || r.contains(&selector)));
    watching.stop().await;
}

#[tokio::test]
async fn pods_of_another_node_never_appear() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("elsewhere-listed", OTHER_NODE, None));
    server.add_pod(pod("here", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("here", "pod of this node appears", |_| true).await;
    server.add_pod(pod("elsewhere-watched", OTHER_NODE, None));
    // Events arrive in order: once the marker is in, the other pod would have been too.
    server.add_pod(pod("marker", NODE, None));
    watching.pod("marker", "marker appears", |_| true).await;
    assert!(watching.store.get(&uid("elsewhere-listed")).is_none());
    assert!(watching.store.get(&uid("elsewhere-watched")).is_none());
    assert_eq!(watching.store.len(), 2);
    watching.stop().await;
}

#[tokio::test]
async fn modified_pod_is_updated() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("web", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("web", "pod appears", |_| true).await;
    let mut changed = pod("web", NODE, None);
    changed.metadata.labels.get_or_insert_default().insert("tier".into(), "front".into());
    changed.spec.as_mut().expect("spec").containers[0].image = Some("registry.example/web:2".into());
    server.modify_pod(changed);
    let updated = watching.pod("web", "update is applied", |p| p.labels.contains_key("tier")).await;
    assert_eq!(updated.containers[0].image, "registry.example/web:2");
    watching.stop().await;
}

#[tokio::test]
async fn deleted_pod_stays_resolvable_for_the_grace_period() {
    let grace = Duration::from_millis(600);
    let server = FakeApiServer::start().await;
    server.add_pod(pod("web", NODE, None));
    server.add_pod(pod("db", NODE, None));
    let watching = Watching::start(&server, grace);
    watching.pod("web", "pod appears", |_| true).await;
    watching.pod("db", "pod appears", |_| true).await;
    server.delete_pod("shop", "web");
    let deleted = watching.pod("web", "marked deleted", |p| p.deleted_at.is_some()).await;
    assert_eq!(deleted.name, "web", "a deleted pod is still resolvable");
    assert_eq!(watching.store.len(), 2);
    until("the grace period is over", || watching.store.get(&uid("web")).is_none()).await;
    let deleted_at = deleted.deleted_at.expect("deleted_at");
    assert!(deleted_at.elapsed() >= grace, "dropped only after the grace period");
    assert_eq!(watching.store.len(), 1);
    watching.stop().await;
}

#[tokio::test]
async fn relists_after_410_gone() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("stays", NODE, None));
    server.add_pod(pod("goes", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("goes", "pod appears", |_| true).await;
    until("the watch is open", || server.watch_requests() == 1).await;
    assert_eq!(server.list_requests(), 1);

    // Changes while the watch is down, then the server says the version expired.
    server.pause_watches(true);
    server.drop_watches();
    until("the watcher tries to resume", || server.watch_requests() == 2).await;
    server.delete_pod("shop", "goes");
    server.add_pod(pod("comes", NODE, None));
    server.expire_next_watch();
    server.pause_watches(false);

    until("a second list", || server.list_requests() == 2).await;
    watching.pod("comes", "added while down appears", |_| true).await;
    watching.pod("goes", "deleted while down is marked deleted", |p| p.deleted_at.is_some()).await;
    assert!(watching.store.get(&uid("stays")).is_some_and(|p| p.deleted_at.is_none()));
    // The watch goes on from the new list.
    server.add_pod(pod("after", NODE, None));
    watching.pod("after", "watched after the relist", |_| true).await;
    watching.stop().await;
}

#[tokio::test]
async fn relists_when_the_resource_version_was_compacted() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("goes", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("goes", "pod appears", |_| true).await;
    until("the watch is open", || server.watch_requests() == 1).await;
    server.pause_watches(true);
    server.drop_watches();
    until("the watcher tries to resume", || server.watch_requests() == 2).await;
    server.delete_pod("shop", "goes");
    server.compact();
    server.pause_watches(false);
    watching.pod("goes", "deleted while down is marked deleted", |p| p.deleted_at.is_some()).await;
    assert_eq!(server.list_requests(), 2);
    watching.stop().await;
}

#[tokio::test]
async fn dropped_watch_is_resumed_from_its_resource_version() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("first", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("first", "pod appears", |_| true).await;
    until("the watch is open", || server.watch_requests() == 1).await;

    server.pause_watches(true);
    server.drop_watches();
    until("the watcher tries to resume", || server.watch_requests() == 2).await;
    server.add_pod(pod("while-down", NODE, None));
    server.pause_watches(false);
    watching.pod("while-down", "replayed from the resumed watch", |_| true).await;
    server.add_pod(pod("live", NODE, None));
    watching.pod("live", "live after resuming", |_| true).await;
    assert_eq!(server.list_requests(), 1, "a dropped connection resumes the watch, no relist");
    watching.stop().await;
}

#[tokio::test]
async fn bookmarks_move_the_resume_point() {
    let server = FakeApiServer::start().await;
    server.add_pod(pod("here", NODE, None));
    let watching = Watching::start(&server, Duration::from_secs(30));
    watching.pod("here", "pod appears", |_| true).await;
    until("the watch is open", || server.watch_requests() == 1).await;
    server.add_pod(pod("elsewhere", OTHER_NODE, None));
    let bookmark = server.bookmark();
    // Give the bookmark time to arrive, then force a resume.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.drop_watches();
    until("the watcher resumes", || server.watch_requests() == 2).await;
    let resumed = server.requests().into_iter().rfind(|r| r.contains("watch=true")).expect("a watch request");
    assert!(resumed.contains(&format!("resourceVersion={bookmark}")), "{resumed}");
    watching.stop().await;
}

#[tokio::test]
async fn replicaset_resolves_to_its_deployment() {
    let server = FakeApiServer::start().await;
    let replicaset = |name: &str, owner: serde_json::Value| {
        serde_json::from_value(json!({"metadata": {"namespace": "shop", "name": name, "ownerReferences": owner}}))
            .expect("ReplicaSet JSON")
    };
    let deployment_owner =
        json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d", "controller": true}]);
    server.add_replicaset(replicaset("web-5f7c9", deployment_owner));
    server.add_replicaset(replicaset("bare-rs", json!([])));
    let cronjob_owner =
        json!([{"apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly", "uid": "c", "controller": true}]);
    server.add_job(
        serde_json::from_value(
            json!({"metadata": {"namespace": "shop", "name": "nightly-2901", "ownerReferences": cronjob_owner}}),
        )
        .expect("Job JSON"),
    );
    server.add_pod(pod("web-5f7c9-aaaaa", NODE, Some(("ReplicaSet", "web-5f7c9"))));
    server.add_pod(pod("web-5f7c9-bbbbb", NODE, Some(("ReplicaSet", "web-5f7c9"))));
    server.add_pod(pod("bare-rs-ccccc", NODE, Some(("ReplicaSet", "bare-rs"))));
    server.add_pod(pod("nightly-2901-ddddd", NODE, Some(("Job", "nightly-2901"))));
    // Not readable: named from the pod's pod-template-hash label (5f7c9).
    server.add_pod(pod("gone-5f7c9-eeeee", NODE, Some(("ReplicaSet", "gone-5f7c9"))));
    let watching = Watching::start(&server, Duration::from_secs(30));

    let expect = |kind: &str, name: &str| Some(Workload { kind: kind.into(), name: name.into() });
    for (pod_name, workload) in [
        ("web-5f7c9-aaaaa", expect("Deployment", "web")),
        ("web-5f7c9-bbbbb", expect("Deployment", "web")),
        ("bare-rs-ccccc", expect("ReplicaSet", "bare-rs")),
        ("nightly-2901-ddddd", expect("CronJob", "nightly")),
        ("gone-5f7c9-eeeee", expect("Deployment", "gone")),
    ] {
        let info = watching.pod(pod_name, "pod appears", |_| true).await;
        assert_eq!(info.workload, workload, "{pod_name}");
    }
    assert_eq!(server.get_requests(), 4, "one GET per owner, cached");

    // Without RBAC for ReplicaSets, the label fallback names the Deployment.
    server.forbid_gets(true);
    server.add_pod(pod("api-5f7c9-fffff", NODE, Some(("ReplicaSet", "api-5f7c9"))));
    let info = watching.pod("api-5f7c9-fffff", "pod appears", |_| true).await;
    assert_eq!(info.workload, expect("Deployment", "api"));
    watching.stop().await;
}

#[tokio::test]
async fn unreachable_api_is_retried_until_cancelled() {
    // A port nothing listens on: every list fails; the watcher must keep trying.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().expect("URI"));
    let client = kube::Client::try_from(config).expect("client");
    let store = PodStore::new(Duration::from_secs(1));
    let cancel = CancellationToken::new();
    let options = WatchOptions { backoff_min: Duration::from_millis(20), ..WatchOptions::default() };
    let task = tokio::spawn(watch_pods_with(client, NODE.into(), store.clone(), cancel.clone(), options));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished(), "a transient failure does not end the watcher");
    cancel.cancel();
    tokio::time::timeout(WAIT, task).await.expect("stops").expect("task").expect("Ok when cancelled");
    assert!(store.is_empty());
}

#[tokio::test]
async fn an_empty_node_name_is_a_configuration_error() {
    let server = FakeApiServer::start().await;
    let store = PodStore::new(Duration::from_secs(1));
    let result =
        watch_pods_with(server.client(), " ".into(), store, CancellationToken::new(), WatchOptions::default()).await;
    assert!(matches!(result, Err(KubeError::NoNodeName)), "{result:?}");
}
