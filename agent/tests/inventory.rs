//! The token usage inventory and the advice from it, with real containerd
//! pods, the real agent and its eBPF programs, over a short window: one pod
//! reads its token and dials the API server, one only reads, one does
//! neither; the inventory says exactly that, across an agent restart, and
//! `tokenwatch advise` gives each the right advice. The Kubernetes side is
//! the in-test API server (no kube-apiserver can be installed here), which
//! is also the API server the pod dials: pods use the node's network, so it
//! is on loopback and nothing leaves the machine. Root only; run by
//! `cargo xtask test`.

mod support;

use std::{os::unix::fs::PermissionsExt, path::Path, process::Command, time::Duration};

use nix::sys::signal::Signal;
use serde_json::json;
use support::{
    agent::AgentProcess,
    cri::{
        api_view::{api_pod, automount_volume, replicaset_of, NODE},
        Containerd, Pod, PodSpec, SA_MOUNT,
    },
    fake_apiserver::FakeApiServer,
    validate::{assert_kyverno_policy, documents, find},
};
use tokenwatch_proto::v1::{Inventory, TokenMountKind, WorkloadInventory};

const TIMEOUT: Duration = Duration::from_secs(30);

/// The token volume of a pod of the inventory: the default automount
/// volume, or with `legacy`, a legacy Secret token at the same place.
fn token_volume(service_account: &str, legacy: bool) -> serde_json::Value {
    if legacy {
        json!({"name": "legacy-token", "secret": {"secretName": format!("{service_account}-token-abcde")}})
    } else {
        automount_volume()
    }
}

fn spec(name: &str, service_account: &str) -> PodSpec {
    PodSpec { namespace: "shop".into(), service_account: service_account.into(), ..PodSpec::new(name) }
}

/// Runs `spec` and tells the API about it.
fn start_pod<'c>(containerd: &'c Containerd, api: &FakeApiServer, spec: &PodSpec, legacy: bool) -> Pod<'c> {
    let pod = containerd.run_pod(spec);
    let replicaset = spec.name.rsplit_once('-').expect("a pod-template-hash suffix").0.to_owned();
    let deployment = replicaset.rsplit_once('-').expect("a Deployment name").0.to_owned();
    api.add_replicaset(replicaset_of("shop", &replicaset, &deployment));
    api.add_pod(api_pod(&pod, token_volume(&spec.service_account, legacy), Some((&deployment, &replicaset))));
    pod
}

fn start_agent(containerd: &Containerd, kubeconfig: &str, api_server: &str, state: &Path) -> AgentProcess {
    let args = [
        "--cri-socket",
        &containerd.socket().display().to_string(),
        "--kubeconfig",
        kubeconfig,
        "--node-name",
        NODE,
        "--rescan-interval-seconds",
        "1",
        "--api-server",
        api_server,
        "--state-dir",
        &state.display().to_string(),
    ]
    .map(str::to_owned);
    AgentProcess::start(&args)
}

/// `tokenwatch <args>`: (exit code, stdout, stderr).
fn tokenwatch(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwatch")).args(args).output().expect("run tokenwatch");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

fn inventory(agent: &AgentProcess) -> Option<Inventory> {
    let server = format!("unix:{}", agent.grpc_socket().display());
    let (code, stdout, _) = tokenwatch(&["inventory", "--server", &server, "-o", "json"]);
    if code != Some(0) {
        return None;
    }
    serde_json::from_str(&stdout).ok()
}

fn workload<'a>(inventory: &'a Inventory, name: &str) -> Option<&'a WorkloadInventory> {
    inventory.workloads.iter().find(|w| w.workload.as_ref().is_some_and(|o| o.kind == "Deployment" && o.name == name))
}

/// (reads, connects, pods seen, pods running) of each workload.
fn counts(inventory: &Inventory, name: &str) -> Option<(u64, u64, u64, u64)> {
    let w = workload(inventory, name)?;
    let count = |u: Option<&tokenwatch_proto::v1::Usage>| u.map_or(0, |u| u.count);
    Some((count(w.token_reads.as_ref()), count(w.api_server_connects.as_ref()), w.pods_seen, w.pods_running))
}

/// Waits until the agent's inventory satisfies `done`; returns the last one seen.
fn wait_inventory(agent: &AgentProcess, what: &str, done: impl Fn(&Inventory) -> bool) -> Inventory {
    let mut last = None;
    let found = support::wait_for(TIMEOUT, || {
        let now = inventory(agent)?;
        let ok = done(&now);
        last = Some(now.clone());
        ok.then_some(now)
    });
    found.unwrap_or_else(|| panic!("{what}: inventory never got there:\n{last:#?}\nlog:\n{}", agent.stderr()))
}

fn wait_watched(agent: &AgentProcess, api: &FakeApiServer, pods: &[&Pod<'_>]) {
    for pod in pods {
        assert!(
            agent.wait_for_log(&["watching token file", &support::mount_ns_of(pod.pid())], TIMEOUT),
            "the agent never found the token of pod {}:\n{}",
            pod.spec().name,
            agent.stderr()
        );
    }
    assert!(support::wait_for(TIMEOUT, || (api.watch_requests() > 0).then_some(())).is_some(), "no watch");
}

/// The pod reads its token, then asks the API server for pods, as kubectl
/// would (with `nc`: the static busybox's `wget` crashes resolving names
/// without the NSS libraries an image would have).
fn read_and_dial(pod: &Pod<'_>, api_server: &str) {
    let (host, port) = api_server.rsplit_once(':').expect("host:port");
    let script = format!(
        "cat {SA_MOUNT}/token >/dev/null && printf 'GET /api/v1/namespaces/shop/pods HTTP/1.0\\r\\n\\r\\n' | \\
         nc -w 5 {host} {port} | grep -q '200 OK'"
    );
    let (code, _, stderr) = pod.exec(&["sh", "-c", &script]);
    assert_eq!(code, 0, "read and dial: {stderr}");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn three_pods_inventory_across_a_restart_and_the_right_advice_for_each() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(FakeApiServer::start());
    let api_server = api.url().trim_start_matches("http://").to_owned();
    let containerd = Containerd::start();
    let state = tempfile::tempdir().expect("state dir");
    let ctl = start_pod(&containerd, &api, &spec("ctl-6d5f8b7c9-a1b2c", "ctl"), true);
    let reader = start_pod(&containerd, &api, &spec("reader-5c4d3b2a1-d3e4f", "reader"), false);
    let web = start_pod(&containerd, &api, &spec("web-7b8c9d0e1-g5h6i", "default"), false);
    let config = support::kubeconfig(containerd.dir(), api.url());

    let agent = start_agent(&containerd, &config, &api_server, state.path());
    wait_watched(&agent, &api, &[&ctl, &reader, &web]);
    read_and_dial(&ctl, &api_server);
    // Twice within the dedup window: one alert, two reads counted.
    reader.trigger();
    reader.trigger();
    // A second web pod comes and goes.
    let web2_spec = spec("web-7b8c9d0e1-j7k8l", "default");
    let web2 = start_pod(&containerd, &api, &web2_spec, false);
    wait_inventory(&agent, "the second web pod", |i| counts(i, "web").is_some_and(|c| c.2 == 2));
    api.delete_pod("shop", &web2_spec.name);
    web2.remove();
    let first = wait_inventory(&agent, "first run", |i| {
        counts(i, "ctl") == Some((1, 1, 1, 1)) && counts(i, "reader") == Some((2, 0, 1, 1))
    });
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    let file = state.path().join("inventory.json");
    assert_eq!(std::fs::metadata(&file).expect("state file").permissions().mode() & 0o777, 0o600);

    let agent = start_agent(&containerd, &config, &api_server, state.path());
    wait_watched(&agent, &api, &[&ctl, &reader, &web]);
    read_and_dial(&ctl, &api_server);
    let last = wait_inventory(&agent, "after the restart", |i| {
        counts(i, "ctl") == Some((2, 2, 1, 1)) && counts(i, "web") == Some((0, 0, 2, 1))
    });
    assert_eq!(counts(&last, "reader"), Some((2, 0, 1, 1)), "the reads before the restart are kept: {last:#?}");
    assert_eq!(last.observed_since, first.observed_since, "observed since the first start");
    assert_eq!(last.nodes, [NODE]);

    let ctl_w = workload(&last, "ctl").expect("ctl");
    assert_eq!(ctl_w.service_account, "ctl");
    assert_eq!(ctl_w.token_mounts.len(), 1);
    assert_eq!(ctl_w.token_mounts[0].kind, i32::from(TokenMountKind::LegacySecret));
    assert_eq!(ctl_w.token_mounts[0].secret_name, "ctl-token-abcde");
    // The executable when /proc still had it, else the kernel's name for it.
    let by = |binaries: &[String], applet: &str| {
        !binaries.is_empty() && binaries.iter().all(|b| *b == applet || *b == format!("/bin/busybox ({applet})"))
    };
    let reads_by = &ctl_w.token_reads.as_ref().expect("reads").binaries;
    assert!(by(reads_by, "cat"), "{reads_by:?}");
    let connects_by = &ctl_w.api_server_connects.as_ref().expect("connects").binaries;
    assert!(by(connects_by, "nc"), "{connects_by:?}");
    let web_w = workload(&last, "web").expect("web");
    assert!(web_w.token_mounted && web_w.token_reads.is_none() && web_w.api_server_connects.is_none(), "{web_w:?}");
    assert_eq!(web_w.token_mounts[0].kind, i32::from(TokenMountKind::DefaultAutomount));
    assert_eq!(web_w.selector_labels, [("app".to_owned(), "web".to_owned())].into());

    let server = format!("unix:{}", agent.grpc_socket().display());
    let (code, table, _) = tokenwatch(&["inventory", "--server", &server]);
    assert_eq!(code, Some(0));
    assert!(table.lines().any(|l| l.contains("Deployment/web") && l.contains("automount")), "{table}");

    // A minute of evidence is not a day's.
    let (code, stdout, stderr) = tokenwatch(&["advise", "--server", &server]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stderr.contains("less than the 1d 0h 0m window") && stderr.contains("--accept-short-window"), "{stderr}");
    let (code, yaml, stderr) = tokenwatch(&["advise", "--server", &server, "--accept-short-window"]);
    assert_eq!(code, Some(0), "{stderr}");
    let objects = documents(&yaml);

    // web never read its token: off, on a ServiceAccount of its own, fenced from the API.
    let account = find(&objects, "ServiceAccount", "web-sa").expect("web-sa");
    assert_eq!(account["automountServiceAccountToken"], false);
    let web_patch = &find(&objects, "Deployment", "web").expect("web patch")["spec"]["template"]["spec"];
    assert_eq!(
        (&web_patch["automountServiceAccountToken"], &web_patch["serviceAccountName"]),
        (&json!(false), &json!("web-sa"))
    );
    let fence = find(&objects, "NetworkPolicy", "web-deny-api-access").expect("web fence");
    assert_eq!(fence["spec"]["podSelector"]["matchLabels"], json!({"app": "web"}));
    // reader reads its token, never dials: keeps it, fenced.
    assert!(find(&objects, "Deployment", "reader").is_none(), "{yaml}");
    assert!(find(&objects, "NetworkPolicy", "reader-deny-api-access").is_some(), "{yaml}");
    // ctl uses the API with a legacy Secret token: a projected one instead, no fence.
    let ctl_patch = &find(&objects, "Deployment", "ctl").expect("ctl patch")["spec"]["template"]["spec"];
    assert_eq!(ctl_patch["containers"][0]["volumeMounts"][0]["mountPath"], SA_MOUNT);
    assert!(ctl_patch["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"].is_number());
    assert!(ctl_patch.get("automountServiceAccountToken").is_none());
    assert!(find(&objects, "NetworkPolicy", "ctl-deny-api-access").is_none(), "{yaml}");
    let policy = find(&objects, "ClusterPolicy", "tokenwatch-restrict-token-automount").expect("policy");
    assert_kyverno_policy(policy);
    assert_eq!(
        policy["spec"]["rules"][0]["exclude"]["any"][0]["resources"]["namespaces"],
        json!(["kube-system", "shop"])
    );
    assert!(yaml.contains("shop/Deployment/web (ServiceAccount default): never read its token"), "{yaml}");
    assert!(yaml.contains("token reads: 2 by "), "the evidence beside the advice: {yaml}");

    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop((ctl, reader, web));
}
