//! The list/watch protocol, the same for every kind: a list at the current
//! resourceVersion, or a watch replaying the kind's history after the given
//! resourceVersion and then streaming live changes.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::Response;
use serde_json::json;
use tokio::sync::{broadcast, watch};

use super::http::{json_response, status, status_json, Body};
use super::selectors::Selector;
use super::{Change, Live, Resource, Shared};

/// `GET` of a collection of `resource` (in `namespace`, or all): a list, or a watch with `watch=true`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    resource: Resource,
    namespace: Option<&str>,
    query: &HashMap<String, String>,
) -> Response<Body> {
    let text = |key: &str| query.get(key).map_or("", String::as_str);
    let selector = match Selector::parse(resource, text("fieldSelector"), text("labelSelector"), namespace) {
        Ok(selector) => selector,
        Err(message) => return status(400, "BadRequest", &message),
    };
    if !matches!(text("watch"), "true" | "1") {
        let mut state = shared.lock();
        *state.lists.entry(resource).or_default() += 1;
        let items: Vec<_> = state
            .objects
            .iter()
            .filter(|((kind, _, _), object)| *kind == resource && selector.matches(object))
            .map(|(_, object)| object.clone())
            .collect();
        let list = json!({
            "kind": format!("{}List", resource.kind()), "apiVersion": resource.api_version(),
            "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items,
        });
        return json_response(200, list.to_string());
    }
    *shared.lock().watches.entry(resource).or_default() += 1;
    let mut paused = shared.paused.subscribe();
    let _ = paused.wait_for(|paused| !*paused).await;
    let since = query.get("resourceVersion").and_then(|rv| rv.parse::<u64>().ok()).filter(|rv| *rv > 0);
    let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(1800);
    let bookmarks = text("allowWatchBookmarks") == "true";
    let mut dropped = shared.drop_watches.subscribe();
    dropped.mark_unchanged();
    let stream = {
        let mut state = shared.lock();
        let since_rv = since.unwrap_or(state.resource_version);
        let expire = std::mem::take(&mut state.expire_next_watch) | state.expire_next_watch_of.remove(&resource);
        if expire || since_rv < state.compacted_at {
            let message = format!("too old resource version: {since_rv} ({})", state.resource_version);
            let error = json!({"type": "ERROR", "object": status_json(410, "Expired", &message)});
            return json_response(200, format!("{error}\n"));
        }
        // History and live changes split under the lock: none is lost or sent twice.
        let lines = state.history.iter().filter(|c| c.resource_version > since_rv);
        WatchStream {
            lines: lines.filter_map(|change| event_line(change, resource, &selector)).collect(),
            resource,
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
    resource: Resource,
    bookmarks: bool,
    deadline: tokio::time::Instant,
    dropped: watch::Receiver<u64>,
    live: broadcast::Receiver<Live>,
    selector: Selector,
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
                    Ok(Live::Change(change)) => self.lines.extend(event_line(&change, self.resource, &self.selector)),
                    Ok(Live::Bookmark(rv)) if self.bookmarks => self.lines.push_back(bookmark_line(self.resource, rv)),
                    Ok(Live::Bookmark(_)) => {}
                    // Too far behind: end the watch; the client resumes from its last version.
                    Err(_) => return None,
                },
            }
        }
    }
}

/// The event a watch of `resource` with `selector` sees for `change`, if any.
fn event_line(change: &Change, resource: Resource, selector: &Selector) -> Option<Bytes> {
    if change.resource != resource {
        return None;
    }
    let now = selector.matches(&change.new);
    let before = change.old.as_ref().is_some_and(|old| selector.matches(old));
    // An object that starts (stops) matching the selector is ADDED (DELETED) for this watch.
    let kind = match (change.deleted, before, now) {
        (false, false, true) => "ADDED",
        (false, true, true) => "MODIFIED",
        (false, true, false) | (true, _, true) => "DELETED",
        _ => return None,
    };
    Some(format!("{}\n", json!({"type": kind, "object": change.new})).into())
}

/// A bookmark as kube-apiserver sends it: the object's kind with only a resourceVersion.
fn bookmark_line(resource: Resource, resource_version: u64) -> Bytes {
    let object = json!({"kind": resource.kind(), "apiVersion": resource.api_version(),
                        "metadata": {"resourceVersion": resource_version.to_string()}});
    format!("{}\n", json!({"type": "BOOKMARK", "object": object})).into()
}
