//! The API server address watch (`metadata::kube::endpoints`) against the
//! in-test API server (`support/fake_apiserver/`): kube-rs's real client and
//! watchers, the real list/watch protocol, on 127.0.0.1. No root needed.
//!
//! The addresses in the objects (10.96.0.1, fd00::1, 192.168.1.x) are only
//! values the fake API serves; nothing here ever dials them.

#[path = "support/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use fake_apiserver::{FakeApiServer, Resource};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;
use tokenwatch_agent::metadata::kube::{watch_api_server_endpoints_with, KubeError, WatchOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long any expected change may take to be published.
const WAIT: Duration = Duration::from_secs(5);
/// How long to wait for a publication that must not come.
const QUIET: Duration = Duration::from_millis(300);

/// `default/kubernetes` as kube-apiserver maintains it: ClusterIPs, port `https` 443 -> 6443.
fn api_service(cluster_ips: &[&str]) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "kubernetes",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ips.first(), "clusterIPs": cluster_ips,
                 "ipFamilies": cluster_ips.iter().map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" }).collect::<Vec<_>>(),
                 "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}]},
    }))
    .expect("Service JSON")
}

/// An EndpointSlice of `service` in `default`: `(address, ready condition)` at port `https` 6443.
fn slice_of(service: &str, name: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
    let address_type = if endpoints.iter().any(|(ip, _)| ip.contains(':')) { "IPv6" } else { "IPv4" };
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(ip, ready)| match ready {
            Some(ready) => json!({"addresses": [ip], "conditions": {"ready": ready, "serving": true}}),
            None => json!({"addresses": [ip]}),
        })
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": address_type, "endpoints": endpoints,
        "ports": [{"name": "https", "protocol": "TCP", "port": 6443}],
    }))
    .expect("EndpointSlice JSON")
}

fn api_slice(name: &str, endpoints: &[(&str, Option<bool>)]) -> EndpointSlice {
    slice_of("kubernetes", name, endpoints)
}

fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
    list.iter().map(|a| a.parse().expect("socket address")).collect()
}

/// The watch running against `server` with test timings, and its receiver.
struct Watching {
    rx: watch::Receiver<BTreeSet<SocketAddr>>,
    cancel: CancellationToken,
    task: JoinHandle<Result<(), KubeError>>,
}

impl Watching {
    fn start(client: kube::Client) -> Watching {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let cancel = CancellationToken::new();
        let options = WatchOptions {
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(200),
            watch_timeout_seconds: 60,
            owner_lookup_timeout: Duration::from_secs(2),
        };
        let task = tokio::spawn(watch_api_server_endpoints_with(client, tx, cancel.clone(), options));
        Watching { rx, cancel, task }
    }

    /// Waits until exactly `expected` is published.
    async fn expect(&mut self, what: &str, expected: &[&str]) {
        let want = addrs(expected);
        let reached = tokio::time::timeout(WAIT, self.rx.wait_for(|set| *set == want)).await.is_ok_and(|r| r.is_ok());
        if !reached {
            panic!("{what}: expected {want:?}, published {:?}", *self.rx.borrow());
        }
    }

    /// Asserts nothing is published for a while.
    async fn quiet(&mut self, what: &str) {
        tokio::time::sleep(QUIET).await;
        assert!(!self.rx.has_changed().expect("sender alive"), "{what}: published {:?}", *self.rx.borrow());
    }

    async fn stop(self) {
        self.cancel.cancel();
        let result = tokio::time::timeout(WAIT, self.task).await.expect("watch stops when cancelled");
        result.expect("watch task").expect("cancelled watch returns Ok");
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn cluster_ips_v4_v6_and_slice_endpoints_are_published() {
    let server = FakeApiServer::start().await;
    server.add_service(api_service(&["10.96.0.1", "fd00::1"]));
    server.add_endpointslice(api_slice("kubernetes", &[("192.168.1.10", Some(true))]));
    let mut watching = Watching::start(server.client());
    watching.expect("listed", &["10.96.0.1:443", "[fd00::1]:443", "192.168.1.10:6443"]).await;

    server.add_endpointslice(api_slice("kubernetes-v6", &[("fd00:10::10", None)]));
    let all = ["10.96.0.1:443", "[fd00::1]:443", "192.168.1.10:6443", "[fd00:10::10]:6443"];
    watching.expect("a watched v6 slice is added", &all).await;

    let requests = server.requests();
    let services: Vec<_> = requests.iter().filter(|r| r.starts_with("/api/v1/namespaces/default/services?")).collect();
    let slices: Vec<_> = requests
        .iter()
        .filter(|r| r.starts_with("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?"))
        .collect();
    assert!(!services.is_empty() && services.iter().all(|r| r.contains("fieldSelector=metadata.name%3Dkubernetes")));
    let label = "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
    assert!(!slices.is_empty() && slices.iter().all(|r| r.contains(label)), "{slices:?}");
    assert_eq!(services.len() + slices.len(), requests.len(), "nothing but the two watches: {requests:?}");
    watching.stop().await;
}

#[tokio::test]
async fn changed_slices_and_service_replace_their_addresses() {
    let server = FakeApiServer::start().await;
    server.add_service(api_service(&["10.96.0.1"]));
    server.add_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None)]));
    server.add_endpointslice(api_slice("kubernetes-extra", &[("192.168.1.20", None)]));
    let mut watching = Watching::start(server.client());
    watching.expect("listed", &["10.96.0.1:443", "192.168.1.10:6443", "192.168.1.20:6443"]).await;

    server.modify_endpointslice(api_slice("kubernetes", &[("192.168.1.11", None)]));
    watching
        .expect("the new endpoint replaces the old", &["10.96.0.1:443", "192.168.1.11:6443", "192.168.1.20:6443"])
        .await;
    server.delete_endpointslice("default", "kubernetes-extra");
    watching.expect("a deleted slice's addresses go", &["10.96.0.1:443", "192.168.1.11:6443"]).await;
    // Relabelled away from the Service: the label-selected watch sees it DELETED.
    server.modify_endpointslice(slice_of("elsewhere", "kubernetes", &[("192.168.1.11", None)]));
    watching.expect("a slice no longer of the Service goes", &["10.96.0.1:443"]).await;
    server.modify_service(api_service(&["10.100.0.1", "fd00::1"]));
    watching.expect("new ClusterIPs replace the old", &["10.100.0.1:443", "[fd00::1]:443"]).await;
    server.delete_service("default", "kubernetes");
    watching.expect("a deleted Service's addresses go", &[]).await;
    watching.stop().await;
}

#[tokio::test]
async fn not_ready_endpoints_are_excluded() {
    let server = FakeApiServer::start().await;
    let endpoints = [("192.168.1.10", Some(true)), ("192.168.1.11", Some(false)), ("192.168.1.12", None)];
    server.add_endpointslice(api_slice("kubernetes", &endpoints));
    let mut watching = Watching::start(server.client());
    watching.expect("ready and unknown, not unready", &["192.168.1.10:6443", "192.168.1.12:6443"]).await;

    let flipped = [("192.168.1.10", Some(false)), ("192.168.1.11", Some(true)), ("192.168.1.12", None)];
    server.modify_endpointslice(api_slice("kubernetes", &flipped));
    watching.expect("readiness followed", &["192.168.1.11:6443", "192.168.1.12:6443"]).await;
    watching.stop().await;
}

#[tokio::test]
async fn expired_watches_relist_and_see_changes_made_while_down() {
    let server = FakeApiServer::start().await;
    server.add_service(api_service(&["10.96.0.1"]));
    server.add_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None)]));
    server.add_endpointslice(api_slice("kubernetes-old", &[("192.168.1.20", None)]));
    let mut watching = Watching::start(server.client());
    watching.expect("listed", &["10.96.0.1:443", "192.168.1.10:6443", "192.168.1.20:6443"]).await;
    let watches = |resource| server.watch_requests_of(resource);
    until("both watches are open", || watches(Resource::Services) == 1 && watches(Resource::EndpointSlices) == 1).await;

    server.pause_watches(true);
    server.drop_watches();
    until("both try to resume", || watches(Resource::Services) == 2 && watches(Resource::EndpointSlices) == 2).await;
    server.modify_service(api_service(&["10.96.0.2"]));
    server.modify_endpointslice(api_slice("kubernetes", &[("192.168.1.11", None)]));
    server.delete_endpointslice("default", "kubernetes-old");
    server.compact();
    server.pause_watches(false);
    watching.expect("relisted", &["10.96.0.2:443", "192.168.1.11:6443"]).await;
    assert_eq!(server.list_requests_of(Resource::Services), 2);
    assert_eq!(server.list_requests_of(Resource::EndpointSlices), 2);

    // A 410 on one kind relists that kind only; the watch goes on from the new list.
    server.expire_next_watch_of(Resource::EndpointSlices);
    server.drop_watches();
    until("the slices are relisted", || server.list_requests_of(Resource::EndpointSlices) == 3).await;
    server.add_endpointslice(api_slice("kubernetes-2", &[("192.168.1.12", None)]));
    watching.expect("watched after the relist", &["10.96.0.2:443", "192.168.1.11:6443", "192.168.1.12:6443"]).await;
    assert_eq!(server.list_requests_of(Resource::Services), 2, "the Service watch resumed");
    watching.stop().await;
}

#[tokio::test]
async fn dropped_watches_resume_without_relisting() {
    let server = FakeApiServer::start().await;
    server.add_service(api_service(&["10.96.0.1"]));
    let mut watching = Watching::start(server.client());
    watching.expect("listed", &["10.96.0.1:443"]).await;
    let watches = |resource| server.watch_requests_of(resource);
    until("both watches are open", || watches(Resource::Services) == 1 && watches(Resource::EndpointSlices) == 1).await;

    server.pause_watches(true);
    server.drop_watches();
    until("both try to resume", || watches(Resource::Services) == 2 && watches(Resource::EndpointSlices) == 2).await;
    server.add_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None)]));
    server.pause_watches(false);
    watching.expect("replayed from the resumed watch", &["10.96.0.1:443", "192.168.1.10:6443"]).await;
    assert_eq!(server.list_requests_of(Resource::Services), 1);
    assert_eq!(server.list_requests_of(Resource::EndpointSlices), 1);
    watching.stop().await;
}

#[tokio::test]
async fn each_change_is_published_once_and_unrelated_events_not_at_all() {
    let server = FakeApiServer::start().await;
    server.add_service(api_service(&["10.96.0.1"]));
    server.add_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None)]));
    let mut watching = Watching::start(server.client());
    let listed = ["10.96.0.1:443", "192.168.1.10:6443"];
    watching.expect("listed", &listed).await;
    watching.quiet("after the lists").await;

    // Events the watches see that change no address.
    let mut relabelled = api_service(&["10.96.0.1"]);
    relabelled.metadata.labels.get_or_insert_default().insert("touched".into(), "yes".into());
    server.modify_service(relabelled);
    server.modify_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None), ("192.168.1.99", Some(false))]));
    // Events they must not see at all.
    let mut other = api_service(&["10.96.0.50"]);
    other.metadata.name = Some("other".into());
    server.add_service(other);
    let mut elsewhere = api_service(&["10.96.0.60"]);
    elsewhere.metadata.namespace = Some("kube-system".into());
    server.add_service(elsewhere);
    server.add_endpointslice(slice_of("other", "other-abcde", &[("192.168.1.50", None)]));
    let pod = serde_json::from_value::<Pod>(json!({"metadata": {"namespace": "default", "name": "p"}})).expect("Pod");
    server.add_pod(pod);
    server.bookmark();
    watching.quiet("after unrelated events").await;

    // A relist that finds the same objects publishes nothing either.
    server.expire_next_watch();
    server.drop_watches();
    until("a relist", || {
        server.list_requests_of(Resource::Services) + server.list_requests_of(Resource::EndpointSlices) == 3
    })
    .await;
    watching.quiet("after a relist").await;

    server.modify_endpointslice(api_slice("kubernetes", &[("192.168.1.10", None), ("192.168.1.99", Some(true))]));
    watching.expect("the endpoint turned ready", &["10.96.0.1:443", "192.168.1.10:6443", "192.168.1.99:6443"]).await;
    watching.quiet("after the change was published").await;
    watching.stop().await;
}

#[tokio::test]
async fn unreachable_api_is_retried_until_cancelled() {
    // A loopback port nothing listens on: every list fails; the watch must keep trying.
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().expect("URI"));
    let mut watching = Watching::start(kube::Client::try_from(config).expect("client"));
    tokio::time::sleep(QUIET).await;
    assert!(!watching.task.is_finished(), "a transient failure does not end the watch");
    watching.quiet("nothing learnt").await;
    watching.stop().await;
}
