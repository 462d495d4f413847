//! `tokenwatch inventory` and `tokenwatch advise` against several agents at
//! once (no root: each "agent" is the real InventoryService over an
//! in-memory inventory, on its own unix socket): the views are merged.

use std::{process::Command, time::SystemTime};

use tokenwatch_agent::{deliver::grpc::inventory::InventoryServer, inventory::Inventory};
use tokenwatch_proto::v1::{
    alert::Evidence, inventory_service_server::InventoryServiceServer, Alert, ApiServerConnect, Inventory as Message,
    KubernetesContext, ProcessContext, TokenRead, Workload,
};

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds)
}

fn event(rule: &str, pod: &str, exe: &str, time: u64) -> Alert {
    let evidence = match rule {
        "apiserver-connect" => Evidence::ApiServerConnect(ApiServerConnect::default()),
        _ => Evidence::TokenRead(TokenRead::default()),
    };
    Alert {
        rule: rule.into(),
        time: Some(pbjson_types::Timestamp { seconds: i64::try_from(time).unwrap_or(0), nanos: 0 }),
        count: 1,
        kubernetes: Some(KubernetesContext {
            namespace: "ops".into(),
            pod: pod.into(),
            pod_uid: format!("uid-{pod}"),
            service_account: "ctl".into(),
            workload: Some(Workload { kind: "DaemonSet".into(), name: "ctl".into() }),
            ..KubernetesContext::default()
        }),
        process: Some(ProcessContext { exe: exe.into(), comm: "x".into(), ..ProcessContext::default() }),
        evidence: Some(evidence),
        ..Alert::default()
    }
}

/// Serves `inventory` on a unix socket in `dir`; returns its `unix:` address.
fn serve(runtime: &tokio::runtime::Runtime, dir: &std::path::Path, name: &str, inventory: Inventory) -> String {
    let path = dir.join(format!("{name}.sock"));
    let listener = runtime.block_on(async { tokio::net::UnixListener::bind(&path) }).expect("bind");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(InventoryServiceServer::new(InventoryServer::new(inventory)))
            .serve_with_incoming(incoming),
    );
    format!("unix:{}", path.display())
}

#[test]
fn inventory_and_advise_merge_several_agents() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    // Two hours ago: node-a's agent started then, node-b's an hour later.
    let t0 = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock").as_secs() - 7200;
    let dir = tempfile::tempdir().expect("tempdir");
    let node_a = Inventory::in_memory("node-a", at(t0));
    node_a.record(&event("token-read", "ctl-a", "/usr/bin/kubectl", t0 + 100));
    node_a.record(&event("apiserver-connect", "ctl-a", "/usr/bin/kubectl", t0 + 101));
    let node_b = Inventory::in_memory("node-b", at(t0 + 3600));
    node_b.record(&event("token-read", "ctl-b", "/usr/local/bin/agent", t0 + 4000));
    node_b.record(&event("token-read", "ctl-b", "/usr/local/bin/agent", t0 + 5000));
    let a = serve(&runtime, dir.path(), "a", node_a);
    let b = serve(&runtime, dir.path(), "b", node_b);

    let run = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_tokenwatch")).args(args).output().expect("tokenwatch");
    let output = run(&["inventory", "--server", &a, "--server", &b, "-o", "json"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let merged: Message = serde_json::from_slice(&output.stdout).expect("an inventory");
    assert_eq!(merged.nodes, ["node-a", "node-b"]);
    assert_eq!(merged.observed_since.map(|t| t.seconds), Some(i64::try_from(t0).unwrap_or(0)), "the earliest start");
    assert_eq!(merged.workloads.len(), 1, "{merged:?}");
    let ctl = &merged.workloads[0];
    let reads = ctl.token_reads.as_ref().expect("reads");
    assert_eq!(reads.count, 3);
    assert_eq!(reads.binaries, ["/usr/bin/kubectl", "/usr/local/bin/agent"]);
    let seconds = |t: Option<pbjson_types::Timestamp>| t.map(|t| t.seconds).unwrap_or_default();
    let (first, last) = (i64::try_from(t0 + 100).unwrap_or(0), i64::try_from(t0 + 5000).unwrap_or(0));
    assert_eq!((seconds(reads.first_seen), seconds(reads.last_seen)), (first, last));
    assert_eq!(ctl.api_server_connects.as_ref().map(|c| c.count), Some(1));
    assert_eq!((ctl.pods_seen, ctl.nodes.as_slice()), (2, ["node-a".to_owned(), "node-b".to_owned()].as_slice()));

    let table = run(&["inventory", "--server", &a, "--server", &b]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.lines().any(|l| l.contains("DaemonSet/ctl") && l.contains(" 3 ")), "{text}");
    assert!(text.contains("1 workload(s) on 2 node(s) (node-a, node-b)"), "{text}");

    // Two hours of evidence, from the earlier agent's start: not a day, but two hours.
    let refused = run(&["advise", "--server", &a, "--server", &b]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("covers only 2h 0m of observation") && stderr.contains("node-a, node-b"), "{stderr}");
    assert!(run(&["advise", "--server", &a, "--server", &b, "--window", "110m"]).status.success());
    let advice = run(&["advise", "--server", &a, "--server", &b, "--accept-short-window"]);
    let yaml = String::from_utf8_lossy(&advice.stdout);
    assert!(advice.status.success(), "{}", String::from_utf8_lossy(&advice.stderr));
    assert!(yaml.contains("namespaces:\n          - kube-system\n          - ops"), "ops needs its token: {yaml}");
    drop(runtime);
}
