//! A stand-in for kube-apiserver, which cannot be installed on the build
//! machines (no cluster, no registry). It is a plain-HTTP/1 server on
//! 127.0.0.1 that speaks the real list/watch protocol for pods, well enough
//! for kube-rs's watcher:
//!
//! - `GET /api/v1/pods` and `/api/v1/namespaces/{ns}/pods`: a `PodList`
//!   (k8s-openapi types as JSON) with `metadata.resourceVersion`, honouring
//!   `fieldSelector` on `spec.nodeName`, `metadata.name`, `metadata.namespace`
//!   (`=`, `==`, `!=`, comma-separated; other fields get 400 as on a real server).
//! - the same with `watch=true&resourceVersion=N`: newline-delimited watch
//!   events (`ADDED`, `MODIFIED`, `DELETED`) for every change after N, then
//!   live ones; a pod that starts or stops matching the selector is ADDED or
//!   DELETED as the real server does. `BOOKMARK` events on request when
//!   `allowWatchBookmarks=true`; `timeoutSeconds` ends the watch cleanly. A
//!   resourceVersion older than the last compaction (or any watch after
//!   [`FakeApiServer::expire_next_watch`]) gets `ERROR` with a `Status` of
//!   code 410, reason `Expired`, exactly as kube-apiserver answers.
//! - `GET /apis/apps/v1/namespaces/{ns}/replicasets/{name}` and
//!   `/apis/batch/v1/namespaces/{ns}/jobs/{name}`: the object, 404 or 403.
//!
//! Every mutation bumps one global resourceVersion, as etcd does.

// kube_watch.rs includes this file alone (`#[path]`) and uses part of it.
#![allow(dead_code, reason = "shared test support: each test target uses a different part")]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ListMeta, WatchEvent};
use serde_json::json;
use tokio::sync::{broadcast, watch};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;
type Key = (String, String);

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

#[derive(Default)]
struct State {
    resource_version: u64,
    pods: BTreeMap<Key, Pod>,
    history: Vec<Arc<Change>>,
    compacted_at: u64,
    expire_next_watch: bool,
    forbid_gets: bool,
    /// ReplicaSets and Jobs by (`replicasets.apps` | `jobs.batch`, namespace, name).
    owners: HashMap<(String, String, String), serde_json::Value>,
    requests: Vec<String>,
    lists: usize,
    watches: usize,
    gets: usize,
}

#[derive(Clone)]
enum Live {
    Change(Arc<Change>),
    Bookmark(u64),
}

#[derive(Clone)]
struct Change {
    resource_version: u64,
    /// The pod before the change (`None`: it was created).
    old: Option<Pod>,
    /// The pod after the change, or as it was when deleted.
    new: Pod,
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
                    let _ = hyper::server::conn::http1::Builder::new()
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

    /// Creates a pod (keyed by namespace and name); returns its resourceVersion.
    pub fn add_pod(&self, pod: Pod) -> u64 {
        assert!(!self.shared.lock().pods.contains_key(&key(&pod.metadata)), "add_pod: the pod exists");
        self.change(pod, false)
    }

    /// Replaces an existing pod; returns its new resourceVersion.
    pub fn modify_pod(&self, pod: Pod) -> u64 {
        assert!(self.shared.lock().pods.contains_key(&key(&pod.metadata)), "modify_pod: no such pod");
        self.change(pod, false)
    }

    /// Deletes a pod; returns the resourceVersion of the deletion.
    pub fn delete_pod(&self, namespace: &str, name: &str) -> u64 {
        let pod = self.shared.lock().pods.get(&(namespace.to_string(), name.to_string())).cloned();
        self.change(pod.expect("delete_pod: no such pod"), true)
    }

    /// Makes a ReplicaSet readable by GET.
    pub fn add_replicaset(&self, replicaset: ReplicaSet) {
        let (namespace, name) = key(&replicaset.metadata);
        self.shared.lock().owners.insert(("replicasets.apps".into(), namespace, name), json!(replicaset));
    }

    /// Makes a Job readable by GET.
    pub fn add_job(&self, job: Job) {
        let (namespace, name) = key(&job.metadata);
        self.shared.lock().owners.insert(("jobs.batch".into(), namespace, name), json!(job));
    }

    /// GETs of ReplicaSets and Jobs answer 403, as with a missing RBAC rule.
    pub fn forbid_gets(&self, forbid: bool) {
        self.shared.lock().forbid_gets = forbid;
    }

    /// The next watch request answers 410 Expired whatever its resourceVersion.
    pub fn expire_next_watch(&self) {
        self.shared.lock().expire_next_watch = true;
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
        self.shared.lock().lists
    }

    /// How many pod watches were requested (including ones answered 410).
    pub fn watch_requests(&self) -> usize {
        self.shared.lock().watches
    }

    /// How many ReplicaSet and Job GETs were requested.
    pub fn get_requests(&self) -> usize {
        self.shared.lock().gets
    }

    /// Every request's path and query, in order.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    fn change(&self, mut pod: Pod, deleted: bool) -> u64 {
        let mut state = self.shared.lock();
        state.resource_version += 1;
        let resource_version = state.resource_version;
        pod.metadata.resource_version = Some(resource_version.to_string());
        let key = key(&pod.metadata);
        let old = if deleted { state.pods.remove(&key) } else { state.pods.insert(key, pod.clone()) };
        let change = Arc::new(Change { resource_version, old, new: pod, deleted });
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

fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Key {
    (meta.namespace.clone().unwrap_or_default(), meta.name.clone().unwrap_or_default())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let uri = req.uri().clone();
    shared.lock().requests.push(uri.to_string());
    let query: HashMap<String, String> = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect();
    if req.method() != Method::GET {
        return Ok(status(405, "MethodNotAllowed", "the fake API server only serves GET"));
    }
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    Ok(match segments.as_slice() {
        ["api", "v1", "pods"] => pods(shared, None, &query).await,
        ["api", "v1", "namespaces", ns, "pods"] => pods(shared, Some(ns), &query).await,
        ["apis", group @ ("apps" | "batch"), "v1", "namespaces", ns, kind @ ("replicasets" | "jobs"), name] => {
            get(&shared, &format!("{kind}.{group}"), ns, name)
        }
        _ => status(404, "NotFound", "the server could not find the requested resource"),
    })
}

/// GET of one owner object (`resource` is `replicasets.apps` or `jobs.batch`).
fn get(shared: &Shared, resource: &str, namespace: &str, name: &str) -> Response<Body> {
    let mut state = shared.lock();
    state.gets += 1;
    if state.forbid_gets {
        let message = format!("{resource} \"{name}\" is forbidden: cannot get in the namespace \"{namespace}\"");
        return status(403, "Forbidden", &message);
    }
    match state.owners.get(&(resource.to_string(), namespace.to_string(), name.to_string())) {
        Some(object) => json_response(200, object.to_string()),
        None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
    }
}

async fn pods(shared: Arc<Shared>, namespace: Option<&str>, query: &HashMap<String, String>) -> Response<Body> {
    let mut selector = match FieldSelector::parse(query.get("fieldSelector").map_or("", String::as_str)) {
        Ok(selector) => selector,
        Err(message) => return status(400, "BadRequest", &message),
    };
    if query.get("labelSelector").is_some_and(|s| !s.is_empty()) {
        return status(400, "BadRequest", "labelSelector is not supported by the fake API server");
    }
    if let Some(ns) = namespace {
        selector.0.push(("metadata.namespace".to_string(), true, ns.to_string()));
    }
    if !matches!(query.get("watch").map(String::as_str), Some("true" | "1")) {
        let mut state = shared.lock();
        state.lists += 1;
        let list = k8s_openapi::List::<Pod> {
            items: state.pods.values().filter(|p| selector.matches(p)).cloned().collect(),
            metadata: ListMeta { resource_version: Some(state.resource_version.to_string()), ..ListMeta::default() },
        };
        return json_response(200, serde_json::to_string(&list).expect("PodList serialises"));
    }
    shared.lock().watches += 1;
    let mut paused = shared.paused.subscribe();
    let _ = paused.wait_for(|paused| !*paused).await;
    let since = query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok()).filter(|rv| *rv > 0);
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800);
    let bookmarks = query.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let mut dropped = shared.drop_watches.subscribe();
    dropped.mark_unchanged();
    let stream = {
        let mut state = shared.lock();
        let since_rv = since.unwrap_or(state.resource_version);
        if state.expire_next_watch || since_rv < state.compacted_at {
            state.expire_next_watch = false;
            let message = format!("too old resource version: {since_rv} ({})", state.resource_version);
            let error = json!({"type": "ERROR", "object": status_json(410, "Expired", &message)});
            return json_response(200, format!("{error}\n"));
        }
        // History and live changes split under the lock: none is lost or sent twice.
        let lines = state.history.iter().filter(|c| c.resource_version > since_rv);
        WatchStream {
            lines: lines.filter_map(|change| event_line(change, &selector)).collect(),
            bookmarks,
            deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
            dropped,
            live: shared.live.subscribe(),
            selector,
            ended: false,
        }
    };
    let body = futures::stream::unfold(stream, WatchStream::next);
    let response = Response::builder().status(200).header("content-type", "application/json");
    response.body(StreamBody::new(body).boxed_unsync()).expect("watch response")
}

/// One open watch: replayed history first, then live changes.
struct WatchStream {
    lines: VecDeque<Bytes>,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    dropped: watch::Receiver<u64>,
    live: broadcast::Receiver<Live>,
    selector: FieldSelector,
    ended: bool,
}

impl WatchStream {
    async fn next(mut self) -> Option<(Result<Frame<Bytes>, std::io::Error>, Self)> {
        if self.ended {
            return None;
        }
        loop {
            if let Some(line) = self.lines.pop_front() {
                return Some((Ok(Frame::data(line)), self));
            }
            tokio::select! {
                () = tokio::time::sleep_until(self.deadline) => return None,
                _ = self.dropped.changed() => {
                    self.ended = true;
                    let error = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "watch dropped by the test");
                    return Some((Err(error), self));
                }
                live = self.live.recv() => match live {
                    Ok(Live::Change(change)) => self.lines.extend(event_line(&change, &self.selector)),
                    Ok(Live::Bookmark(rv)) if self.bookmarks => self.lines.push_back(bookmark_line(rv)),
                    Ok(Live::Bookmark(_)) => {}
                    // Too far behind: end the watch; the client resumes from its last version.
                    Err(_) => return None,
                },
            }
        }
    }
}

/// The event a watcher with `selector` sees for `change`, if any.
fn event_line(change: &Change, selector: &FieldSelector) -> Option<Bytes> {
    let now = selector.matches(&change.new);
    let before = change.old.as_ref().is_some_and(|old| selector.matches(old));
    let pod = change.new.clone();
    // A pod that starts (stops) matching the selector is ADDED (DELETED) for this watch.
    let event = match (change.deleted, before, now) {
        (false, false, true) => WatchEvent::Added(pod),
        (false, true, true) => WatchEvent::Modified(pod),
        (false, true, false) | (true, _, true) => WatchEvent::Deleted(pod),
        _ => return None,
    };
    let mut line = serde_json::to_vec(&event).expect("watch event serialises");
    line.push(b'\n');
    Some(line.into())
}

/// A bookmark as kube-apiserver sends it: the object's kind with only a resourceVersion.
fn bookmark_line(resource_version: u64) -> Bytes {
    let object =
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": resource_version.to_string()}});
    format!("{}\n", json!({"type": "BOOKMARK", "object": object})).into()
}

/// `field=value`, `field==value`, `field!=value`, comma-separated.
struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    fn parse(text: &str) -> Result<FieldSelector, String> {
        let mut terms = Vec::new();
        for term in text.split(',').filter(|t| !t.is_empty()) {
            let (field, equal, value) = match term.split_once("!=") {
                Some((f, v)) => (f, false, v),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((f, v)) => (f, true, v),
                    None => return Err(format!("invalid field selector term {term:?}")),
                },
            };
            if !["spec.nodeName", "metadata.name", "metadata.namespace"].contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_string(), equal, value.to_string()));
        }
        Ok(FieldSelector(terms))
    }

    fn matches(&self, pod: &Pod) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "spec.nodeName" => pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
                "metadata.name" => pod.metadata.name.as_deref(),
                _ => pod.metadata.namespace.as_deref(),
            };
            (actual.unwrap_or_default() == value) == *equal
        })
    }
}

fn percent_decode(text: &str) -> String {
    let (bytes, mut out, mut i) = (text.as_bytes(), Vec::new(), 0);
    while let Some(&byte) = bytes.get(i) {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        let (decoded, used) = match (byte, hex) {
            (b'%', Some(hex)) => (hex, 3),
            (b'+', _) => (b' ', 1),
            _ => (byte, 1),
        };
        out.push(decoded);
        i += used;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn status_json(code: u16, reason: &str, message: &str) -> serde_json::Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(code, status_json(code, reason, message).to_string())
}

fn json_response(code: u16, body: String) -> Response<Body> {
    let body = Full::new(Bytes::from(body)).map_err(|never: Infallible| match never {}).boxed_unsync();
    Response::builder().status(code).header("content-type", "application/json").body(body).expect("response")
}
