//! The inventory without an agent: events and pods in, counts out; the
//! state file; merging agents' views.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokenwatch_proto::v1::{
    alert::Evidence, Alert, ApiServerConnect, Inventory as Message, KubernetesContext, ProcessContext, TokenMountKind,
    TokenRead, Usage, Workload, WorkloadInventory,
};

use super::merge::merge_inventories;
use super::*;
use crate::metadata::kube::{PodInfo, Workload as PodWorkload};

pub(super) const T0: i64 = 1_800_000_000;

pub(super) fn at(seconds: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).unwrap_or(0))
}

fn ts(seconds: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds, nanos: 0 }
}

/// An alert of `rule` from pod `pod` of Deployment `deployment` by `exe`.
pub(super) fn alert(rule: &str, deployment: &str, pod: &str, exe: &str, comm: &str, time: i64) -> Alert {
    let evidence = if rule == "apiserver-connect" {
        Evidence::ApiServerConnect(ApiServerConnect::default())
    } else {
        Evidence::TokenRead(TokenRead::default())
    };
    Alert {
        rule: rule.to_owned(),
        time: Some(ts(time)),
        count: 1,
        kubernetes: Some(KubernetesContext {
            namespace: "shop".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            service_account: "default".into(),
            workload: Some(Workload { kind: "Deployment".into(), name: deployment.into() }),
            labels: [("app".to_owned(), deployment.to_owned()), ("pod-template-hash".to_owned(), "abc".to_owned())]
                .into(),
            ..KubernetesContext::default()
        }),
        process: Some(ProcessContext { exe: exe.into(), comm: comm.into(), ..ProcessContext::default() }),
        evidence: Some(evidence),
        ..Alert::default()
    }
}

/// A pod of Deployment `deployment` with the default automount volume, and
/// `extra` volumes and mounts.
pub(super) fn pod(name: &str, deployment: &str, sa: &str, extra: &[(serde_json::Value, serde_json::Value)]) -> PodInfo {
    let mut mounts =
        vec![json!({"name": "kube-api-access-x1y2z", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})];
    let mut volumes = vec![json!({"name": "kube-api-access-x1y2z", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}})];
    for (volume, mount) in extra {
        volumes.push(volume.clone());
        mounts.push(mount.clone());
    }
    let value = json!({
        "metadata": {"namespace": "shop", "name": name, "uid": format!("uid-{name}"),
                     "labels": {"app": deployment, "pod-template-hash": name.rsplit('-').next()}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "main", "volumeMounts": mounts}], "volumes": volumes},
    });
    let api: Pod = serde_json::from_value(value).expect("a pod");
    PodInfo {
        workload: Some(PodWorkload { kind: "Deployment".into(), name: deployment.into() }),
        ..PodInfo::from_pod(&api)
    }
}

/// A legacy Secret token volume and its mount.
pub(super) fn legacy_volume() -> (serde_json::Value, serde_json::Value) {
    (
        json!({"name": "legacy", "secret": {"secretName": "ctl-token-ab1cd"}}),
        json!({"name": "legacy", "mountPath": "/var/run/secrets/legacy"}),
    )
}

/// A projected token volume for Vault (its own audience, 600 s) and its mount.
pub(super) fn vault_volume() -> (serde_json::Value, serde_json::Value) {
    (
        json!({"name": "vault", "projected": {"sources": [{"serviceAccountToken":
            {"path": "vault-token", "audience": "vault", "expirationSeconds": 600}}]}}),
        json!({"name": "vault", "mountPath": "/var/run/secrets/tokens"}),
    )
}

fn find<'a>(inventory: &'a Message, name: &str) -> &'a WorkloadInventory {
    inventory
        .workloads
        .iter()
        .find(|w| w.workload.as_ref().is_some_and(|o| o.name == name))
        .unwrap_or_else(|| panic!("{name} not in {inventory:?}"))
}

#[test]
fn events_count_reads_and_connects_with_binaries_and_first_and_last_sight() {
    let inventory = Inventory::in_memory("node-a", at(T0));
    inventory.record(&alert("token-read", "ctl", "ctl-1", "/usr/bin/kubectl", "kubectl", T0 + 20));
    inventory.record(&alert("token-read", "ctl", "ctl-1", "/bin/busybox", "cat", T0 + 10));
    inventory.record(&alert("token-read", "ctl", "ctl-2", "/usr/bin/kubectl", "kubectl", T0 + 30));
    inventory.record(&alert("apiserver-connect", "ctl", "ctl-1", "/usr/bin/kubectl", "kubectl", T0 + 21));
    // The chain repeats events already counted; a harvest is the node's.
    inventory.record(&alert("token-theft-chain", "ctl", "ctl-1", "/usr/bin/kubectl", "kubectl", T0 + 21));
    inventory.record(&alert("node-token-harvest", "ctl", "ctl-1", "/usr/bin/cat", "cat", T0 + 22));
    // A host process is no workload.
    let mut host = alert("token-read", "x", "", "/usr/bin/cat", "cat", T0 + 23);
    host.kubernetes = Some(KubernetesContext::default());
    inventory.record(&host);

    let snapshot = inventory.snapshot(&[], at(T0 + 60));
    assert_eq!(snapshot.workloads.len(), 1, "{snapshot:?}");
    let ctl = find(&snapshot, "ctl");
    let reads = ctl.token_reads.as_ref().expect("reads");
    assert_eq!(reads.count, 3);
    assert_eq!(reads.binaries, ["/bin/busybox (cat)", "/usr/bin/kubectl"]);
    assert_eq!((reads.first_seen, reads.last_seen), (Some(ts(T0 + 10)), Some(ts(T0 + 30))));
    let connects = ctl.api_server_connects.as_ref().expect("connects");
    assert_eq!((connects.count, connects.binaries.as_slice()), (1, ["/usr/bin/kubectl".to_owned()].as_slice()));
    assert!(ctl.token_mounted);
    assert_eq!(ctl.pods_seen, 2, "two pods read");
    assert_eq!(ctl.selector_labels, [("app".to_owned(), "ctl".to_owned())].into(), "no pod-template-hash");
    assert_eq!((ctl.nodes.as_slice(), ctl.service_account.as_str()), (["node-a".to_owned()].as_slice(), "default"));
    assert_eq!(snapshot.observed_since, Some(ts(T0)));
}

#[test]
fn pods_make_workloads_that_never_use_their_token_appear_with_how_it_is_mounted() {
    let inventory = Inventory::in_memory("node-a", at(T0));
    let (legacy, vault) = (legacy_volume(), vault_volume());
    let mut gone = pod("web-abc-3", "web", "default", &[]);
    gone.deleted_at = Some(std::time::Instant::now());
    let pods: Vec<Arc<PodInfo>> = vec![
        Arc::new(pod("web-abc-1", "web", "default", &[])),
        Arc::new(pod("web-abc-2", "web", "default", &[])),
        Arc::new(gone),
        Arc::new(pod("ctl-def-1", "ctl", "ctl", &[legacy, vault])),
    ];
    inventory.observe_pods(&pods, at(T0 + 5));
    inventory.observe_pods(&pods, at(T0 + 7));
    let snapshot = inventory.snapshot(&[], at(T0 + 10));
    let web = find(&snapshot, "web");
    assert_eq!((web.pods_seen, web.pods_running), (3, 2), "a pod that came and went is counted, not running");
    assert!(web.token_mounted && web.token_reads.is_none() && web.api_server_connects.is_none());
    assert_eq!(web.token_mounts.len(), 1);
    assert_eq!(web.token_mounts[0].kind, i32::from(TokenMountKind::DefaultAutomount));
    assert_eq!(
        (web.token_mounts[0].expiration_seconds, web.token_mounts[0].containers.as_slice()),
        (3607, ["main".to_owned()].as_slice())
    );
    assert_eq!(web.last_pod_seen, Some(ts(T0 + 7)));
    assert_eq!(web.observed_since, Some(ts(T0 + 5)));
    let ctl = find(&snapshot, "ctl");
    let kinds: Vec<(i32, &str, &str, i64)> = ctl
        .token_mounts
        .iter()
        .map(|m| (m.kind, m.audience.as_str(), m.secret_name.as_str(), m.expiration_seconds))
        .collect();
    assert_eq!(
        kinds,
        [
            (i32::from(TokenMountKind::DefaultAutomount), "", "", 3607),
            (i32::from(TokenMountKind::Projected), "vault", "", 600),
            (i32::from(TokenMountKind::LegacySecret), "", "ctl-token-ab1cd", 0),
        ]
    );
    // web is hardened: its new pods come without a token, and say so.
    let mut hardened = pod("web-def-1", "web", "default", &[]);
    hardened.containers.iter_mut().for_each(|c| c.token_mounts.clear());
    hardened.automount_service_account_token = Some(false);
    inventory.observe_pods(&[Arc::new(hardened)], at(T0 + 8));
    let web = find(&inventory.snapshot(&[], at(T0 + 9)), "web").clone();
    assert!(!web.token_mounted && web.token_mounts.is_empty(), "{web:?}");
    assert_eq!((web.automount_service_account_token, web.pods_seen, web.pods_running), (Some(false), 4, 1));
    // The pods go: nothing runs, the counts stay.
    inventory.observe_pods(&[], at(T0 + 20));
    let snapshot = inventory.snapshot(&["shop".to_owned()], at(T0 + 30));
    assert_eq!((find(&snapshot, "web").pods_seen, find(&snapshot, "web").pods_running), (4, 0));
    assert!(!find(&snapshot, "web").token_mounted, "what the last pods said");
    assert!(inventory.snapshot(&["other".to_owned()], at(T0 + 30)).workloads.is_empty(), "namespace filter");
}

#[test]
fn the_state_file_survives_a_restart_readable_by_the_agent_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let first = Inventory::open(&state, "node-a").expect("open");
    first.observe_pods(&[Arc::new(pod("web-abc-1", "web", "default", &[]))], at(T0));
    first.record(&alert("token-read", "web", "web-abc-1", "/app/server", "server", T0 + 1));
    assert!(first.save().expect("save"), "changed, so written");
    assert!(!first.save().expect("save"), "unchanged, so not rewritten");
    let before = first.snapshot(&[], at(T0 + 2));
    let file = state.join(STATE_FILE);
    assert_eq!(std::fs::metadata(&file).expect("file").permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(&state).expect("dir").permissions().mode() & 0o777, 0o700);

    let second = Inventory::open(&state, "node-a").expect("reopen");
    let after = second.snapshot(&[], at(T0 + 2));
    let running_zeroed = |mut m: Message| {
        m.workloads.iter_mut().for_each(|w| w.pods_running = 0);
        m
    };
    assert_eq!(
        running_zeroed(after),
        running_zeroed(before.clone()),
        "the same, running pods aside (relearnt from the store)"
    );
    // The same pod seen again after the restart is not counted twice.
    second.observe_pods(&[Arc::new(pod("web-abc-1", "web", "default", &[]))], at(T0 + 3));
    assert_eq!(find(&second.snapshot(&[], at(T0 + 4)), "web").pods_seen, 1);

    std::fs::write(&file, b"{ not json").expect("damage");
    let third = Inventory::open(&state, "node-a").expect("a damaged file is set aside");
    assert!(third.snapshot(&[], at(T0)).workloads.is_empty());
    assert!(state.join("inventory.json.damaged").exists());
}

#[test]
fn merging_agents_sums_counts_unites_binaries_and_keeps_the_widest_times() {
    let usage = |count, binary: &str, first, last| Usage {
        count,
        binaries: vec![binary.to_owned()],
        first_seen: Some(ts(first)),
        last_seen: Some(ts(last)),
    };
    let workload = |node: &str, reads: Option<Usage>, since, labels: &[(&str, &str)], pods| WorkloadInventory {
        namespace: "shop".into(),
        workload: Some(Workload { kind: "Deployment".into(), name: "ctl".into() }),
        service_account: "ctl".into(),
        token_reads: reads,
        observed_since: Some(ts(since)),
        pods_seen: pods,
        pods_running: pods,
        selector_labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        nodes: vec![node.to_owned()],
        ..WorkloadInventory::default()
    };
    let a = Message {
        nodes: vec!["a".into()],
        observed_since: Some(ts(T0 + 100)),
        generated_at: Some(ts(T0 + 1000)),
        workloads: vec![workload(
            "a",
            Some(usage(2, "/bin/kubectl", T0 + 200, T0 + 300)),
            T0 + 100,
            &[("app", "ctl"), ("v", "1")],
            1,
        )],
    };
    let b = Message {
        nodes: vec!["b".into()],
        observed_since: Some(ts(T0)),
        generated_at: Some(ts(T0 + 900)),
        workloads: vec![
            workload(
                "b",
                Some(usage(3, "/usr/bin/python3", T0 + 150, T0 + 250)),
                T0 + 50,
                &[("app", "ctl"), ("v", "2")],
                2,
            ),
            WorkloadInventory { service_account: "other".into(), ..workload("b", None, T0, &[], 1) },
        ],
    };
    let merged = merge_inventories([a, b]);
    assert_eq!(merged.nodes, ["a", "b"]);
    assert_eq!((merged.observed_since, merged.generated_at), (Some(ts(T0)), Some(ts(T0 + 1000))));
    assert_eq!(merged.workloads.len(), 2, "another ServiceAccount is another entry");
    let ctl = merged.workloads.iter().find(|w| w.service_account == "ctl").expect("ctl");
    let reads = ctl.token_reads.as_ref().expect("reads");
    assert_eq!(reads.count, 5);
    assert_eq!(reads.binaries, ["/bin/kubectl", "/usr/bin/python3"]);
    assert_eq!((reads.first_seen, reads.last_seen), (Some(ts(T0 + 150)), Some(ts(T0 + 300))));
    assert_eq!((ctl.pods_seen, ctl.pods_running), (3, 3));
    assert_eq!(ctl.observed_since, Some(ts(T0 + 50)));
    assert_eq!(ctl.nodes, ["a", "b"]);
    assert_eq!(ctl.selector_labels, [("app".to_owned(), "ctl".to_owned())].into(), "only what every pod shares");
}

#[test]
fn binaries_and_workloads_are_bounded() {
    let inventory = Inventory::in_memory("node-a", at(T0));
    for i in 0..(MAX_BINARIES + 10) {
        inventory.record(&alert("token-read", "ctl", "ctl-1", &format!("/bin/tool{i:03}"), "tool", T0));
    }
    let snapshot = inventory.snapshot(&[], at(T0));
    let reads = find(&snapshot, "ctl").token_reads.as_ref().expect("reads");
    assert_eq!((reads.count, reads.binaries.len()), (u64::try_from(MAX_BINARIES + 10).unwrap_or(0), MAX_BINARIES));
    let mut book = Book::new("node-a", ts(T0));
    for i in 0..(MAX_WORKLOADS + 5) {
        book.record(&alert(
            "token-read",
            &format!("w{i}"),
            &format!("w{i}-pod"),
            "/bin/x",
            "x",
            T0 + i64::try_from(i).unwrap_or(0),
        ));
    }
    assert_eq!(book.len(), MAX_WORKLOADS);
    let snapshot = book.snapshot(&[], ts(T0));
    assert!(snapshot.workloads.iter().all(|w| w.workload.as_ref().is_some_and(|o| o.name != "w0")), "the idlest went");
}
