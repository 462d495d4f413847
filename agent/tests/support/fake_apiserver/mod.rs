//! A stand-in for kube-apiserver, which cannot be installed on the build
//! machines (no cluster, no registry). It is a plain-HTTP/1 server on
//! 127.0.0.1 that speaks the real list/watch protocol for pods, Services and
//! EndpointSlices, well enough for kube-rs's watcher:
//!
//! - `GET /api/v1/pods`, `/api/v1/services`,
//!   `/apis/discovery.k8s.io/v1/endpointslices` and their
//!   `/namespaces/{ns}/` forms: a list (k8s-openapi types as JSON) with
//!   `metadata.resourceVersion`, honouring `fieldSelector` (`=`, `==`, `!=`,
//!   comma-separated) on the fields the real server supports for the kind
//!   (pods: `spec.nodeName`, `metadata.name`, `metadata.namespace`; services:
//!   also `spec.clusterIP`, `spec.type`; endpointslices: the two `metadata`
//!   ones; any other field gets 400 as on a real server) and `labelSelector`
//!   (`key=value`, `key==value`, `key!=value`, `key`, `!key`, comma-separated;
//!   set-based terms get 400 here).
//! - the same with `watch=true&resourceVersion=N`: newline-delimited watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`) for every change of that kind
//!   after N, then live ones; an object that starts or stops matching the
//!   selectors is ADDED or DELETED as the real server does. `BOOKMARK` events
//!   on request when `allowWatchBookmarks=true`; `timeoutSeconds` ends the
//!   watch cleanly. A resourceVersion older than the last compaction (or a
//!   watch after [`FakeApiServer::expire_next_watch`]) gets `ERROR` with a
//!   `Status` of code 410, reason `Expired`, exactly as kube-apiserver answers.
//! - `GET /apis/apps/v1/namespaces/{ns}/replicasets/{name}` and
//!   `/apis/batch/v1/namespaces/{ns}/jobs/{name}`: the object, 404 or 403.
//!
//! Every mutation of any kind bumps one global resourceVersion, as etcd does;
//! a watch sees only its own kind's changes.
//!
//! Layout: this file holds the server and the controls shared by all kinds;
//! `pods.rs` and `services.rs` the typed controls; `list_watch.rs` the
//! protocol; `selectors.rs` field and label selectors; `http.rs` the plumbing.

// kube_watch.rs includes this file alone (`#[path]`) and uses part of it.
#![allow(dead_code, reason = "shared test support: each test target uses a different part")]

mod http;
mod list_watch;
mod pods;
mod selectors;
mod services;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

use self::http::{parse_query, status, Body};

/// A kind of object the server lists and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// `pods` (core v1).
    Pods,
    /// `services` (core v1).
    Services,
    /// `endpointslices.discovery.k8s.io` (v1).
    EndpointSlices,
    /// `nodes` (core v1, cluster-scoped).
    Nodes,
}

impl Resource {
    /// The kind's name in objects, lists (`{kind}List`) and bookmarks.
    fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Services | Resource::Nodes => "v1",
            Resource::EndpointSlices => "discovery.k8s.io/v1",
        }
    }
}

/// The running server; dropping it stops it and every open connection.
pub struct FakeApiServer {
    url: String,
    shared: Arc<Shared>,
    accept: tokio::task::JoinHandle<()>,
}

struct Shared {
    state: Mutex<State>,
    live: broadcast::Sender<Live>,
    drop_watches: watch::Sender<u64>,
    paused: watch::Sender<bool>,
}

/// An object's identity: kind, namespace, name.
type ObjectKey = (Resource, String, String);

#[derive(Default)]
struct State {
    resource_version: u64,
    objects: BTreeMap<ObjectKey, Value>,
    history: Vec<Arc<Change>>,
    compacted_at: u64,
    /// The next watch of any kind answers 410.
    expire_next_watch: bool,
    /// The next watch of each of these kinds answers 410.
    expire_next_watch_of: BTreeSet<Resource>,
    forbid_gets: bool,
    /// ReplicaSets and Jobs by (`replicasets.apps` | `jobs.batch`, namespace, name).
    owners: HashMap<(String, String, String), Value>,
    requests: Vec<String>,
    lists: BTreeMap<Resource, usize>,
    watches: BTreeMap<Resource, usize>,
    gets: usize,
}

#[derive(Clone)]
enum Live {
    Change(Arc<Change>),
    Bookmark(u64),
}

struct Change {
    resource: Resource,
    resource_version: u64,
    /// The object before the change (`None`: it was created).
    old: Option<Value>,
    /// The object after the change, or as it was when deleted.
    new: Value,
    deleted: bool,
}

impl FakeApiServer {
    /// Starts the server on a free loopback port.
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the fake API server");
        let url = format!("http://{}", listener.local_addr().expect("local address"));
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            live: broadcast::channel(1024).0,
            drop_watches: watch::channel(0).0,
            paused: watch::channel(false).0,
        });
        let server = shared.clone();
        let accept = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let shared = server.clone();
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    // A connection ending badly (a dropped watch) is part of the tests.
                    // Half-closes are served, as kube-apiserver (Go's net/http)
                    // serves them: a pod's `nc` shuts its write side after the
                    // request, and without this hyper may close on that EOF
                    // before answering (the inventory test once got no `200 OK`).
                    let _ = hyper::server::conn::http1::Builder::new()
                        .half_close(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        FakeApiServer { url, shared, accept }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A kube client for this server: plain HTTP, no credentials.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url.parse().expect("server URL is a URI"));
        kube::Client::try_from(config).expect("kube client for the fake API server")
    }

    /// The next watch request (of any kind) answers 410 Expired whatever its resourceVersion.
    pub fn expire_next_watch(&self) {
        self.shared.lock().expire_next_watch = true;
    }

    /// The next watch request of `resource` answers 410 Expired; other kinds' watches resume.
    pub fn expire_next_watch_of(&self, resource: Resource) {
        self.shared.lock().expire_next_watch_of.insert(resource);
    }

    /// Forgets the change history, as etcd compaction does: a watch from an
    /// older resourceVersion gets 410 Expired and must relist.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted_at = state.resource_version;
        state.history.clear();
    }

    /// Aborts every open watch connection mid-stream (no final chunk), like a
    /// network failure or an API server restart.
    pub fn drop_watches(&self) {
        self.shared.drop_watches.send_modify(|generation| *generation += 1);
    }

    /// While paused, watch requests get no answer: changes made meanwhile
    /// happen "while the watch is down". Unpausing lets them proceed.
    pub fn pause_watches(&self, paused: bool) {
        self.shared.paused.send_replace(paused);
    }

    /// Sends a BOOKMARK at the current resourceVersion on open watches that
    /// asked for bookmarks; returns that resourceVersion.
    pub fn bookmark(&self) -> u64 {
        let state = self.shared.lock();
        let _ = self.shared.live.send(Live::Bookmark(state.resource_version));
        state.resource_version
    }

    /// How many pod lists were served.
    pub fn list_requests(&self) -> usize {
        self.list_requests_of(Resource::Pods)
    }

    /// How many pod watches were requested (including ones answered 410).
    pub fn watch_requests(&self) -> usize {
        self.watch_requests_of(Resource::Pods)
    }

    /// How many lists of `resource` were served.
    pub fn list_requests_of(&self, resource: Resource) -> usize {
        self.shared.lock().lists.get(&resource).copied().unwrap_or_default()
    }

    /// How many watches of `resource` were requested (including ones answered 410).
    pub fn watch_requests_of(&self, resource: Resource) -> usize {
        self.shared.lock().watches.get(&resource).copied().unwrap_or_default()
    }

    /// How many ReplicaSet and Job GETs were requested.
    pub fn get_requests(&self) -> usize {
        self.shared.lock().gets
    }

    /// Every request's path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Creates an object; `what` names the control in the panic if it exists.
    fn add(&self, resource: Resource, object: Value, what: &str) -> u64 {
        let key = key(resource, &object);
        assert!(!self.shared.lock().objects.contains_key(&key), "{what}: {key:?} exists");
        self.change(resource, object, false)
    }

    /// Replaces an existing object; `what` names the control in the panic if there is none.
    fn modify(&self, resource: Resource, object: Value, what: &str) -> u64 {
        let key = key(resource, &object);
        assert!(self.shared.lock().objects.contains_key(&key), "{what}: no {key:?}");
        self.change(resource, object, false)
    }

    /// Deletes an existing object; `what` names the control in the panic if there is none.
    fn delete(&self, resource: Resource, namespace: &str, name: &str, what: &str) -> u64 {
        let key = (resource, namespace.to_string(), name.to_string());
        let object = self.shared.lock().objects.get(&key).cloned();
        self.change(resource, object.unwrap_or_else(|| panic!("{what}: no {key:?}")), true)
    }

    fn change(&self, resource: Resource, mut object: Value, deleted: bool) -> u64 {
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let resource_version = state.resource_version;
        object["metadata"]["resourceVersion"] = Value::String(resource_version.to_string());
        let key = key(resource, &object);
        let old = if deleted { state.objects.remove(&key) } else { state.objects.insert(key, object.clone()) };
        let change = Arc::new(Change { resource, resource_version, old, new: object, deleted });
        state.history.push(change.clone());
        let _ = self.shared.live.send(Live::Change(change));
        resource_version
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A typed object as the server stores it: its JSON (with `apiVersion` and `kind`).
fn to_json(object: &impl serde::Serialize) -> Value {
    serde_json::to_value(object).expect("k8s-openapi objects serialise")
}

fn key(resource: Resource, object: &Value) -> ObjectKey {
    let field = |name: &str| object["metadata"][name].as_str().unwrap_or_default().to_string();
    (resource, field("namespace"), field("name"))
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().clone();
    shared.lock().requests.push(uri.to_string());
    let query = parse_query(uri.query().unwrap_or_default());
    if req.method() != Method::GET {
        return Ok(status(405, "MethodNotAllowed", "the fake API server only serves GET"));
    }
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (resource, namespace) = match segments.as_slice() {
        ["api", "v1", "pods"] => (Resource::Pods, None),
        ["api", "v1", "namespaces", ns, "pods"] => (Resource::Pods, Some(*ns)),
        ["api", "v1", "services"] => (Resource::Services, None),
        ["api", "v1", "nodes"] => (Resource::Nodes, None),
        ["api", "v1", "namespaces", ns, "services"] => (Resource::Services, Some(*ns)),
        ["apis", "discovery.k8s.io", "v1", "endpointslices"] => (Resource::EndpointSlices, None),
        ["apis", "discovery.k8s.io", "v1", "namespaces", ns, "endpointslices"] => (Resource::EndpointSlices, Some(*ns)),
        ["apis", group @ ("apps" | "batch"), "v1", "namespaces", ns, kind @ ("replicasets" | "jobs"), name] => {
            return Ok(pods::get_owner(&shared, &format!("{kind}.{group}"), ns, name));
        }
        _ => return Ok(status(404, "NotFound", "the server could not find the requested resource")),
    };
    Ok(list_watch::serve(shared, resource, namespace, &query).await)
}
