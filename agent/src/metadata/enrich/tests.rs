use std::time::Duration;

use tokenwatch_common::OpenSyscall;

use super::*;
use crate::kernel::{KernelAncestor, OpenRecord};

const ID: &str = "4f1d2a8b9c0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
const UID: &str = "0b1f5e1c-3c9a-4d5e-9f00-1a2b3c4d5e6f";

fn open_from(leaf: &str, parent: &str) -> KernelEvent {
    KernelEvent::Open(OpenRecord {
        identity: Identity {
            boot_time_ns: 0,
            pid: u32::MAX,
            tid: u32::MAX,
            uid: 0,
            gid: 0,
            cgroup_id: 1,
            process_start_ns: 0,
            exec_id: 0,
            comm: "cat".into(),
            cgroup_names: [String::new(), String::new(), leaf.to_owned(), parent.to_owned()],
            ns_pid: 3,
            ns_level: 1,
            ancestors: vec![KernelAncestor { pid: 1, ns_pid: 1, ns_level: 0, comm: "init".into() }],
            executable: Default::default(),
        },
        syscall: OpenSyscall::Openat,
        dirfd: -100,
        flags: 0,
        fd: 3,
        dev: 1,
        ino: 2,
        requested_path: "token".into(),
        resolved_path: "/token".into(),
        resolved_path_truncated: false,
        enforced: Default::default(),
    })
}

fn enricher(pods: PodSource) -> Enricher {
    let (_tx, rx) = watch::channel(Arc::new(TokenFiles::new()));
    Enricher::new(CriCache::new(Some("/nonexistent/cri.sock".into())), pods, rx, Arc::default(), "/proc".into())
}

#[tokio::test]
async fn a_host_process_needs_nothing_more() {
    let enrichment = enricher(PodSource::Standalone).enrich(&open_from("session-1.scope", "user.slice")).await;
    assert_eq!(enrichment.cgroup, CgroupIdentity::default());
    assert!(enrichment.missing.is_empty(), "{:?}", enrichment.missing);
}

#[tokio::test]
async fn a_container_without_runtime_or_api_says_what_is_missing() {
    let event = open_from(ID, &format!("pod{UID}"));
    let enrichment = enricher(PodSource::Standalone).enrich(&event).await;
    assert_eq!(enrichment.cgroup.container_id.as_deref(), Some(ID));
    assert_eq!(enrichment.cgroup.pod_uid.as_deref(), Some(UID));
    assert_eq!(enrichment.missing.len(), 2, "{:?}", enrichment.missing);
    assert!(enrichment.missing[0].starts_with("cri: "), "{:?}", enrichment.missing);
    assert_eq!(enrichment.missing[1], "kubernetes: standalone mode, the API is not watched");

    let store = PodStore::new(Duration::from_secs(60));
    let enrichment = enricher(PodSource::Api(store.clone())).enrich(&event).await;
    assert_eq!(enrichment.missing[1], format!("kubernetes: pod {UID} is not known (yet)"));
    assert!(enrichment.pod.is_none());
}

#[tokio::test]
async fn the_pod_is_found_by_the_uid_in_the_cgroup_name() {
    let store = PodStore::new(Duration::from_secs(60));
    store.upsert(PodInfo {
        namespace: "shop".into(),
        name: "checkout-7f9c".into(),
        uid: UID.into(),
        service_account: "checkout".into(),
        labels: Default::default(),
        workload: None,
        automount_service_account_token: None,
        containers: Vec::new(),
        deleted_at: None,
    });
    let enrichment = enricher(PodSource::Api(store)).enrich(&open_from(ID, &format!("pod{UID}"))).await;
    let pod = enrichment.pod.expect("found by uid");
    assert_eq!((pod.namespace.as_str(), pod.service_account.as_str()), ("shop", "checkout"));
    assert_eq!(enrichment.missing.len(), 1, "only the runtime is missing: {:?}", enrichment.missing);
}
