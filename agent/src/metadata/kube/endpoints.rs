//! The API server's own addresses, learnt from the cluster and kept current.
//!
//! A client may dial the API server through the `default/kubernetes`
//! Service's ClusterIPs (what `KUBERNETES_SERVICE_HOST` names) or directly at
//! the addresses its EndpointSlices list (what a client with a kubeconfig, or
//! one that read the slices, uses). Both are watched, so the kernel's
//! `WATCHED_ENDPOINTS` follows control-plane replacements, IP changes and
//! dual-stack clusters without an agent restart or a flag per address.
//!
//! RBAC the agent needs: `list`, `watch` on `services` and on
//! `endpointslices.discovery.k8s.io` in namespace `default`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, watcher, Event};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{KubeError, WatchOptions};

/// The namespace of the API server's Service; fixed by Kubernetes.
pub const API_SERVER_NAMESPACE: &str = "default";
/// The name of the API server's Service; fixed by Kubernetes.
pub const API_SERVER_SERVICE: &str = "kubernetes";
/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The port name the API server's Service and slices use for its listener.
const HTTPS_PORT_NAME: &str = "https";

/// Watches `default/kubernetes` (the Service and its EndpointSlices) with
/// default [`WatchOptions`] and publishes the current set of API-server
/// socket addresses on `tx` each time it changes, and only then, so a
/// receiver's `changed()` means there is something to write to the kernel.
///
/// Transient failures (API unreachable, 403 while RBAC is fixed, 410 Gone)
/// are logged and retried with backoff, one kind independently of the other,
/// and never end it: the last known set stays published meanwhile, because
/// forgetting an address would blind the agent to connections to it. It
/// returns `Ok` when cancelled.
pub async fn watch_api_server_endpoints(
    client: Client,
    tx: watch::Sender<BTreeSet<SocketAddr>>,
    cancel: CancellationToken,
) -> Result<(), KubeError> {
    watch_api_server_endpoints_with(client, tx, cancel, WatchOptions::default()).await
}

/// [`watch_api_server_endpoints`] with explicit tuning (tests shorten the
/// backoff; `owner_lookup_timeout` is not used here).
pub async fn watch_api_server_endpoints_with(
    client: Client,
    tx: watch::Sender<BTreeSet<SocketAddr>>,
    cancel: CancellationToken,
    options: WatchOptions,
) -> Result<(), KubeError> {
    let timeout = options.watch_timeout_seconds.max(1);
    let service_config =
        watcher::Config::default().fields(&format!("metadata.name={API_SERVER_SERVICE}")).timeout(timeout);
    let slice_config =
        watcher::Config::default().labels(&format!("{SERVICE_NAME_LABEL}={API_SERVER_SERVICE}")).timeout(timeout);
    let services = watcher(Api::<Service>::namespaced(client.clone(), API_SERVER_NAMESPACE), service_config);
    let slices = watcher(Api::<EndpointSlice>::namespaced(client, API_SERVER_NAMESPACE), slice_config);
    let mut updates = pin!(futures::stream::select(
        retrying(services, options.clone(), "Service").map(|event| Update::Service(Box::new(event))),
        retrying(slices, options, "EndpointSlice").map(|event| Update::Slice(Box::new(event))),
    ));
    let mut state = ApiServerObjects::default();
    info!(namespace = API_SERVER_NAMESPACE, service = API_SERVER_SERVICE, "watching the API server's addresses");
    loop {
        let update = tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(()),
            update = updates.next() => update,
        };
        // Both watchers are endless streams; an end would be a kube bug.
        let Some(update) = update else {
            warn!("the API server address watch ended; the addresses are no longer updated");
            cancel.cancelled().await;
            return Ok(());
        };
        if state.apply(update) {
            publish(&tx, state.addresses());
        }
    }
}

/// The socket addresses a client may dial to reach the API server, as named
/// by its Service (each ClusterIP, v4 and v6, at the `https` port) and its
/// EndpointSlices (each address of an endpoint not marked unready, at the
/// slices' `https` port). Where no port is named `https`, every TCP port
/// counts, so a renamed port is over-watched rather than missed. Addresses
/// that are not IPs (headless `None`, FQDN slices) are skipped.
pub fn api_server_addresses(service: Option<&Service>, slices: &[EndpointSlice]) -> BTreeSet<SocketAddr> {
    addresses(service, slices.iter())
}

fn addresses<'a>(
    service: Option<&Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<SocketAddr> {
    let mut set = BTreeSet::new();
    if let Some(spec) = service.and_then(|s| s.spec.as_ref()) {
        let ports =
            https_ports(spec.ports.iter().flatten().map(|p| (p.name.as_deref(), p.protocol.as_deref(), Some(p.port))));
        let ips = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips.iter().collect::<Vec<_>>(),
            _ => spec.cluster_ip.iter().collect(),
        };
        cross(&mut set, ips.into_iter().map(String::as_str), &ports);
    }
    for slice in slices {
        let ports =
            https_ports(slice.ports.iter().flatten().map(|p| (p.name.as_deref(), p.protocol.as_deref(), p.port)));
        // A ready condition that is absent means unknown, which Kubernetes says to treat as ready.
        let usable = slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        cross(&mut set, usable.flat_map(|e| e.addresses.iter().map(String::as_str)), &ports);
    }
    set
}

/// The ports among `(name, protocol, port)` that carry the API: those named
/// `https`, else every TCP one (a missing protocol is TCP).
fn https_ports<'a>(ports: impl Iterator<Item = (Option<&'a str>, Option<&'a str>, Option<i32>)>) -> Vec<u16> {
    let tcp: Vec<_> = ports
        .filter(|(_, protocol, _)| protocol.is_none_or(|p| p.eq_ignore_ascii_case("TCP")))
        .filter_map(|(name, _, port)| Some((name, u16::try_from(port?).ok().filter(|p| *p != 0)?)))
        .collect();
    let named: Vec<u16> = tcp.iter().filter(|(name, _)| *name == Some(HTTPS_PORT_NAME)).map(|(_, p)| *p).collect();
    if named.is_empty() {
        tcp.into_iter().map(|(_, port)| port).collect()
    } else {
        named
    }
}

/// Adds each IP among `ips` at each of `ports`; what does not parse as an IP is skipped.
fn cross<'a>(set: &mut BTreeSet<SocketAddr>, ips: impl Iterator<Item = &'a str>, ports: &[u16]) {
    for ip in ips.filter_map(|ip| ip.trim().parse::<IpAddr>().ok()) {
        set.extend(ports.iter().map(|port| SocketAddr::new(ip, *port)));
    }
}

/// Replaces the published set if it differs, so receivers wake only on a change.
fn publish(tx: &watch::Sender<BTreeSet<SocketAddr>>, new: BTreeSet<SocketAddr>) {
    tx.send_if_modified(|current| {
        if *current == new {
            return false;
        }
        info!(addresses = ?new, before = ?current, "API server addresses changed");
        *current = new;
        true
    });
}

/// An event of one of the two watches (boxed: the two kinds differ in size by hundreds of bytes).
enum Update {
    Service(Box<Event<Service>>),
    Slice(Box<Event<EndpointSlice>>),
}

/// What the two watches currently know.
#[derive(Default)]
struct ApiServerObjects {
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
}

impl ApiServerObjects {
    /// Applies an event; true if the known objects may have changed.
    fn apply(&mut self, update: Update) -> bool {
        match update {
            Update::Service(event) => self.services.apply(*event, "Service"),
            Update::Slice(event) => self.slices.apply(*event, "EndpointSlice"),
        }
    }

    fn addresses(&self) -> BTreeSet<SocketAddr> {
        addresses(self.services.current.get(API_SERVER_SERVICE), self.slices.current.values())
    }
}

/// Objects of one kind by name. A (re)list is collected aside and replaces
/// them whole at its end, so a relist never publishes a half-filled set.
struct Objects<K> {
    current: BTreeMap<String, K>,
    /// Objects listed since the last `Init`, while a (re)list is in progress.
    relisting: Option<BTreeMap<String, K>>,
}

impl<K> Default for Objects<K> {
    fn default() -> Self {
        Objects { current: BTreeMap::new(), relisting: None }
    }
}

impl<K: ResourceExt> Objects<K> {
    /// Applies a watcher event; true if `current` may have changed.
    fn apply(&mut self, event: Event<K>, kind: &str) -> bool {
        match event {
            Event::Init => {
                debug!(kind, "API server object list started");
                self.relisting = Some(BTreeMap::new());
                false
            }
            Event::InitApply(object) => match &mut self.relisting {
                Some(listed) => {
                    listed.insert(object.name_any(), object);
                    false
                }
                None => {
                    self.current.insert(object.name_any(), object);
                    true
                }
            },
            Event::InitDone => {
                self.current = self.relisting.take().unwrap_or_default();
                debug!(kind, objects = self.current.len(), "API server object list complete");
                true
            }
            Event::Apply(object) => {
                self.current.insert(object.name_any(), object);
                true
            }
            Event::Delete(object) => self.current.remove(&object.name_any()).is_some(),
        }
    }
}

/// The watcher's events with its errors handled here: logged, retried with
/// backoff (a first 410 Gone relists at once, as the pod watcher does). Each
/// kind backs off alone, so a failing slice watch never delays the Service's.
fn retrying<K, S>(stream: S, options: WatchOptions, kind: &'static str) -> impl Stream<Item = Event<K>>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    let start = (Box::pin(stream), 0u32, options.retry_delays());
    futures::stream::unfold(start, move |(mut stream, mut failures, mut delays)| {
        let options = options.clone();
        async move {
            loop {
                match stream.next().await? {
                    Ok(event) => {
                        // `Init` comes before every list attempt, even ones that fail.
                        if !matches!(event, Event::Init) {
                            failures = 0;
                            delays = options.retry_delays();
                        }
                        return Some((event, (stream, failures, delays)));
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let gone = matches!(&err, watcher::Error::WatchError(status) if status.code == 410);
                        if gone && failures == 1 {
                            info!(kind, error = %err, "API server address watch expired; relisting");
                            continue;
                        }
                        let delay = delays.next().unwrap_or(options.backoff_max);
                        warn!(kind, retry = failures, delay_ms = delay.as_millis() as u64, error = %err,
                            "API server address watch failed; retrying");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({"metadata": {"namespace": "default", "name": "kubernetes"}, "spec": spec}))
            .expect("Service JSON")
    }

    fn slice(name: &str, endpoints: serde_json::Value, ports: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "default", "name": name, "labels": {SERVICE_NAME_LABEL: "kubernetes"}},
            "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
        }))
        .expect("EndpointSlice JSON")
    }

    fn addrs(list: &[&str]) -> BTreeSet<SocketAddr> {
        list.iter().map(|a| a.parse().expect("socket address")).collect()
    }

    fn https(port: u16) -> serde_json::Value {
        json!([{"name": "https", "protocol": "TCP", "port": port}])
    }

    #[test]
    fn dual_stack_cluster_ips_and_slice_endpoints() {
        let svc = service(json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
            "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}]}));
        let v4 =
            slice("kubernetes", json!([{"addresses": ["192.168.1.10"]}, {"addresses": ["192.168.1.11"]}]), https(6443));
        let v6 = slice("kubernetes-v6", json!([{"addresses": ["fd00:10::10"]}]), https(6443));
        assert_eq!(
            api_server_addresses(Some(&svc), &[v4, v6]),
            addrs(&["10.96.0.1:443", "[fd00::1]:443", "192.168.1.10:6443", "192.168.1.11:6443", "[fd00:10::10]:6443"])
        );
    }

    #[test]
    fn single_cluster_ip_without_cluster_ips() {
        let svc = service(json!({"clusterIP": "10.0.0.1", "ports": [{"name": "https", "port": 443}]}));
        assert_eq!(api_server_addresses(Some(&svc), &[]), addrs(&["10.0.0.1:443"]));
    }

    #[test]
    fn no_service_no_slices_nothing() {
        assert!(api_server_addresses(None, &[]).is_empty());
        let headless = service(json!({"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 443}]}));
        assert!(api_server_addresses(Some(&headless), &[]).is_empty());
        let portless = service(json!({"clusterIPs": ["10.96.0.1"]}));
        assert!(api_server_addresses(Some(&portless), &[]).is_empty());
    }

    #[test]
    fn https_port_preferred_else_every_tcp_port() {
        let named = service(json!({"clusterIPs": ["10.96.0.1"], "ports": [
            {"name": "metrics", "port": 8080}, {"name": "https", "port": 443}, {"name": "dns", "protocol": "UDP", "port": 53}]}));
        assert_eq!(api_server_addresses(Some(&named), &[]), addrs(&["10.96.0.1:443"]));
        let unnamed = service(json!({"clusterIPs": ["10.96.0.1"], "ports": [
            {"name": "api", "port": 8443}, {"name": "dns", "protocol": "UDP", "port": 53}]}));
        assert_eq!(api_server_addresses(Some(&unnamed), &[]), addrs(&["10.96.0.1:8443"]));
        let slice_unnamed = slice("s", json!([{"addresses": ["192.168.1.10"]}]), json!([{"port": 6443}, {"port": 0}]));
        assert_eq!(api_server_addresses(None, &[slice_unnamed]), addrs(&["192.168.1.10:6443"]));
    }

    #[test]
    fn unready_endpoints_are_excluded_unknown_are_kept() {
        let s = slice(
            "kubernetes",
            json!([
                {"addresses": ["192.168.1.10"], "conditions": {"ready": true}},
                {"addresses": ["192.168.1.11"], "conditions": {"ready": false, "serving": true}},
                {"addresses": ["192.168.1.12"], "conditions": {}},
                {"addresses": ["192.168.1.13", "192.168.1.14"]},
            ]),
            https(6443),
        );
        assert_eq!(
            api_server_addresses(None, &[s]),
            addrs(&["192.168.1.10:6443", "192.168.1.12:6443", "192.168.1.13:6443", "192.168.1.14:6443"])
        );
    }

    #[test]
    fn non_ip_addresses_and_portless_slices_are_skipped() {
        let fqdn = slice("fqdn", json!([{"addresses": ["api.example.com", " 192.168.1.20 "]}]), https(6443));
        let portless = slice("portless", json!([{"addresses": ["192.168.1.30"]}]), json!(null));
        assert_eq!(api_server_addresses(None, &[fqdn, portless]), addrs(&["192.168.1.20:6443"]));
    }

    fn slice_event(event: Event<EndpointSlice>) -> Update {
        Update::Slice(Box::new(event))
    }

    #[test]
    fn a_relist_replaces_the_objects_at_its_end() {
        let mut state = ApiServerObjects::default();
        let a = slice("a", json!([{"addresses": ["192.168.1.10"]}]), https(6443));
        let b = slice("b", json!([{"addresses": ["192.168.1.11"]}]), https(6443));
        assert!(state.apply(slice_event(Event::Apply(a.clone()))));
        assert!(state.apply(slice_event(Event::Apply(b.clone()))));
        assert!(!state.apply(slice_event(Event::Init)));
        assert!(!state.apply(slice_event(Event::InitApply(b.clone()))));
        assert_eq!(state.addresses().len(), 2, "nothing changes while the list is in progress");
        assert!(state.apply(slice_event(Event::InitDone)));
        assert_eq!(state.addresses(), addrs(&["192.168.1.11:6443"]), "a deleted while unwatched is gone");
        assert!(state.apply(slice_event(Event::Delete(b))));
        assert!(!state.apply(slice_event(Event::Delete(a))), "deleting an unknown object changes nothing");
        assert!(state.addresses().is_empty());
    }

    #[test]
    fn publish_sends_only_changes() {
        let (tx, mut rx) = watch::channel(BTreeSet::new());
        publish(&tx, BTreeSet::new());
        assert!(!rx.has_changed().expect("open"));
        publish(&tx, addrs(&["10.96.0.1:443"]));
        assert!(rx.has_changed().expect("open"));
        rx.mark_unchanged();
        publish(&tx, addrs(&["10.96.0.1:443"]));
        assert!(!rx.has_changed().expect("open"));
    }
}
