//! The cluster's inventory from the metrics stack: two real agents (their
//! inventories on two "nodes", kept in their state directories as after
//! days of watching) export it on `/metrics`, a real Prometheus (Debian's,
//! on loopback, its own storage) scrapes both, and `tokenwatch inventory
//! --prometheus` and `advise --prometheus` give what `--server` on both
//! agents gives. The same series reach an OpenTelemetry Collector as OTLP
//! metrics. Root only (the agents load their eBPF programs); run by
//! `cargo xtask test`.

mod support;

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::core::v1::Pod;
use opentelemetry_proto::tonic::{
    collector::metrics::v1::ExportMetricsServiceRequest,
    common::v1::any_value::Value as AnyValue,
    metrics::v1::{metric::Data, number_data_point, NumberDataPoint},
};
use serde_json::{json, Value};
use support::{agent::AgentProcess, otlp_collector::Collector, wait_for};
use tokenwatch_agent::{
    inventory::Inventory,
    metadata::kube::{PodInfo, Workload as PodWorkload},
};
use tokenwatch_proto::v1::{
    alert::Evidence, Alert, ApiServerConnect, Inventory as Message, KubernetesContext, ProcessContext, TokenRead,
    Workload,
};

const TIMEOUT: Duration = Duration::from_secs(60);
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod of `kind`/`owner` in `namespace`, with the default token and the
/// given extra token volumes and mounts.
fn pod(namespace: &str, name: &str, kind: &str, owner: &str, sa: &str, extra: &[(Value, Value)]) -> Arc<PodInfo> {
    let mut mounts = vec![json!({"name": "kube-api-access-x1y2z", "mountPath": SA_DIR})];
    let mut volumes = vec![json!({"name": "kube-api-access-x1y2z", "projected": {"sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}})];
    for (volume, mount) in extra {
        volumes.push(volume.clone());
        mounts.push(mount.clone());
    }
    let value = json!({
        "metadata": {"namespace": namespace, "name": name, "uid": format!("uid-{name}"),
                     "labels": {"app": owner, "pod-template-hash": "abc12"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "main", "volumeMounts": mounts}], "volumes": volumes},
    });
    let api: Pod = serde_json::from_value(value).expect("a pod");
    let workload = Some(PodWorkload { kind: kind.into(), name: owner.into() });
    Arc::new(PodInfo { workload, ..PodInfo::from_pod(&api) })
}

/// A token read or API-server connect by `exe` in `pod`.
fn event(rule: &str, pod: &PodInfo, exe: &str, count: u64) -> Alert {
    let evidence = match rule {
        "apiserver-connect" => Evidence::ApiServerConnect(ApiServerConnect::default()),
        _ => Evidence::TokenRead(TokenRead::default()),
    };
    let owner = pod.workload.as_ref().map(|w| Workload { kind: w.kind.clone(), name: w.name.clone() });
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).expect("clock");
    Alert {
        rule: rule.into(),
        time: Some(pbjson_types::Timestamp {
            seconds: i64::try_from(now.as_secs()).unwrap_or(0),
            nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
        }),
        count,
        kubernetes: Some(KubernetesContext {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            pod_uid: pod.uid.clone(),
            service_account: pod.service_account.clone(),
            workload: owner,
            labels: pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            ..KubernetesContext::default()
        }),
        process: Some(ProcessContext { exe: exe.into(), comm: "x".into(), ..ProcessContext::default() }),
        evidence: Some(evidence),
        ..Alert::default()
    }
}

/// Writes the inventory an agent on `node` would have kept in `state`.
fn seed(state: &Path, node: &str, pods: &[Arc<PodInfo>], events: &[Alert]) {
    let inventory = Inventory::open(state, node).expect("an inventory");
    inventory.observe_pods(pods, SystemTime::now());
    for event in events {
        inventory.record(event);
    }
    assert!(inventory.save().expect("saved"), "written");
}

fn start_agent(node: &str, state: &Path, extra: &[&str]) -> (AgentProcess, String) {
    let mut args: Vec<String> = [
        "--standalone",
        "--node-name",
        node,
        "--state-dir",
        &state.display().to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--metrics-inventory",
    ]
    .map(str::to_owned)
    .to_vec();
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let agent = AgentProcess::start(&args);
    assert!(agent.wait_for_log(&["metrics and health endpoints listening"], TIMEOUT), "{}", agent.stderr());
    let addr = support::metrics_addr(&agent.stderr()).expect("the metrics address");
    (agent, addr)
}

/// Debian's Prometheus, scraping `targets` every second, on a free port of
/// loopback, its storage in `dir`; killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, targets: &[&str]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let text = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\nscrape_configs:\n  - job_name: tokenwatch\n    \
             static_configs: [{{targets: [{}]}}]\n",
            targets.join(", ")
        );
        std::fs::write(&config, text).expect("write prometheus.yml");
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).expect("log file"))
            .spawn()
            .expect("run prometheus (cargo xtask setup installs Debian's)");
        let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}") };
        let addr = format!("127.0.0.1:{port}");
        let ready = support::wait_for(TIMEOUT, || {
            std::net::TcpStream::connect(&addr).ok()?;
            (support::http_get(&addr, "/-/ready").0 == 200).then_some(())
        });
        let log = || std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
        assert!(ready.is_some(), "prometheus never got ready:\n{}", log());
        prometheus
    }
}

impl Prometheus {
    /// The JSON answer of an instant query.
    fn query(&self, query: &str) -> Value {
        let addr = self.url.trim_start_matches("http://");
        let encoded = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
        let (_, body) = support::http_get(addr, &format!("/api/v1/query?query={encoded}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{query}: {e}: {body}"))
    }
}

/// The queries of deploy/README.md's `promql` block: (comment, query).
fn readme_queries() -> Vec<(String, String)> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/README.md")).expect("deploy/README.md");
    let block = readme.split("```promql\n").nth(1).and_then(|rest| rest.split("```").next()).expect("a promql block");
    let mut queries: Vec<(String, String)> = Vec::new();
    for line in block.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            queries.push((comment.to_owned(), String::new()));
        } else if let Some((_, query)) = queries.last_mut().filter(|_| !line.trim().is_empty()) {
            query.push_str(line.trim());
            query.push(' ');
        }
    }
    queries
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tokenwatch <args>`: (success, stdout, stderr).
fn tokenwatch(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwatch")).args(args).output().expect("run tokenwatch");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.success(), text(&output.stdout), text(&output.stderr))
}

/// An inventory as a scrape can carry it: times to the second, and no
/// `generated_at`, which is when each answer was made.
fn comparable(mut message: Message) -> Message {
    let cut = |t: &mut Option<pbjson_types::Timestamp>| {
        if let Some(t) = t {
            t.nanos = 0;
        }
    };
    message.generated_at = None;
    cut(&mut message.observed_since);
    for w in &mut message.workloads {
        cut(&mut w.observed_since);
        cut(&mut w.last_pod_seen);
        for usage in [&mut w.token_reads, &mut w.api_server_connects].into_iter().flatten() {
            cut(&mut usage.first_seen);
            cut(&mut usage.last_seen);
        }
    }
    message
}

/// Advice with what depends on the moment it was asked masked: the header's
/// evidence line and each workload's "observed <duration> on".
fn without_moment(advice: &str) -> String {
    advice
        .lines()
        .map(|line| {
            if line.starts_with("# Evidence: ") {
                return "# Evidence: (masked)".to_owned();
            }
            match (line.find("; observed "), line.find(" on ")) {
                (Some(start), Some(end)) if end > start => {
                    format!("{}; observed (masked){}", &line[..start], &line[end..])
                }
                _ => line.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn prometheus_scraping_two_agents_gives_the_inventory_and_advice_that_asking_them_gives() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let (state_a, state_b) = (dir.path().join("state-a"), dir.path().join("state-b"));
    let legacy = (
        json!({"name": "legacy", "secret": {"secretName": "ctl-token-ab1cd"}}),
        json!({"name": "legacy", "mountPath": "/var/run/secrets/legacy"}),
    );
    let vault = (
        json!({"name": "vault", "projected": {"sources": [{"serviceAccountToken":
            {"path": "vault-token", "audience": "vault", "expirationSeconds": 600}}]}}),
        json!({"name": "vault", "mountPath": "/var/run/secrets/tokens"}),
    );
    // node-a: a web pod that never uses its token, the ctl DaemonSet reading
    // and dialling with a legacy Secret token, a reader that only reads.
    let web_a = pod("shop", "web-abc12-x", "Deployment", "web", "default", &[]);
    let ctl_a = pod("ops", "ctl-a", "DaemonSet", "ctl", "ctl", std::slice::from_ref(&legacy));
    let reader = pod("shop", "reader-abc12-y", "Deployment", "reader", "reader", &[]);
    seed(
        &state_a,
        "node-a",
        &[Arc::clone(&web_a), Arc::clone(&ctl_a), Arc::clone(&reader)],
        &[
            event("token-read", &ctl_a, "/usr/bin/kubectl", 4),
            event("apiserver-connect", &ctl_a, "/usr/bin/kubectl", 9),
            event("token-read", &reader, "/bin/busybox", 2),
        ],
    );
    // node-b: another web pod, the ctl DaemonSet's other pod dialling with
    // another binary, a CronJob with a projected token it never reads.
    let web_b = pod("shop", "web-abc12-z", "Deployment", "web", "default", &[]);
    let ctl_b = pod("ops", "ctl-b", "DaemonSet", "ctl", "ctl", &[legacy]);
    let report = pod("batch", "report-1-q", "CronJob", "report", "report", &[vault]);
    seed(
        &state_b,
        "node-b",
        &[web_b, Arc::clone(&ctl_b), report],
        &[event("apiserver-connect", &ctl_b, "/usr/local/bin/agent", 3)],
    );

    let (agent_a, metrics_a) = start_agent("node-a", &state_a, &[]);
    let (agent_b, metrics_b) = start_agent("node-b", &state_b, &[]);
    let servers =
        [format!("unix:{}", agent_a.grpc_socket().display()), format!("unix:{}", agent_b.grpc_socket().display())];
    let prometheus = Prometheus::start(dir.path(), &[&metrics_a, &metrics_b]);

    // What asking both agents gives.
    let (ok, json, stderr) = tokenwatch(&["inventory", "--server", &servers[0], "--server", &servers[1], "-o", "json"]);
    assert!(ok, "{stderr}");
    let from_agents: Message = serde_json::from_str(&json).expect("an inventory");
    assert_eq!(from_agents.nodes, ["node-a", "node-b"]);
    assert_eq!(from_agents.workloads.len(), 4, "{from_agents:#?}");

    // Prometheus has it once it has scraped both agents.
    let mut last = String::new();
    let from_prometheus = support::wait_for(TIMEOUT, || {
        let (ok, json, stderr) = tokenwatch(&["inventory", "--prometheus", &prometheus.url, "-o", "json"]);
        last = if ok { json.clone() } else { stderr };
        let inventory: Message = serde_json::from_str(&json).ok()?;
        (inventory.nodes.len() == 2).then_some(inventory)
    });
    let from_prometheus = from_prometheus.unwrap_or_else(|| panic!("prometheus never had both agents: {last}"));
    assert_eq!(comparable(from_prometheus.clone()), comparable(from_agents.clone()));
    let ctl = from_prometheus.workloads.iter().find(|w| w.namespace == "ops").expect("ctl");
    let connects = ctl.api_server_connects.as_ref().expect("connects");
    assert_eq!((connects.count, connects.binaries.len()), (12, 2), "9 + 3, by kubectl and agent");

    // The same advice, objects and evidence alike.
    let advise = |source: &[&str]| {
        let mut args = vec!["advise", "--accept-short-window"];
        args.extend(source);
        let (ok, yaml, stderr) = tokenwatch(&args);
        assert!(ok, "{args:?}: {stderr}");
        yaml
    };
    let by_server = advise(&["--server", &servers[0], "--server", &servers[1]]);
    let by_prometheus = advise(&["--prometheus", &prometheus.url]);
    assert_eq!(without_moment(&by_prometheus), without_moment(&by_server));
    assert!(by_prometheus.contains("name: web-sa"), "web never read its token: {by_prometheus}");
    assert!(by_prometheus.contains("by /usr/bin/kubectl, /usr/local/bin/agent"), "{by_prometheus}");

    // A namespace filter, and the refusal of a too short window, as with --server.
    let (ok, json, stderr) = tokenwatch(&["inventory", "--prometheus", &prometheus.url, "-n", "ops", "-o", "json"]);
    assert!(ok, "{stderr}");
    let ops: Message = serde_json::from_str(&json).expect("an inventory");
    assert_eq!(ops.workloads.iter().map(|w| w.namespace.as_str()).collect::<Vec<_>>(), ["ops"]);
    let (ok, yaml, stderr) = tokenwatch(&["advise", "--prometheus", &prometheus.url]);
    assert!(!ok && yaml.is_empty(), "no advice from minutes of evidence");
    assert!(stderr.contains("less than the 1d 0h 0m window") && stderr.contains("node-a, node-b"), "{stderr}");

    // The dashboard queries of deploy/README.md run, and the first finds
    // the workloads that never read their token.
    let queries = readme_queries();
    assert_eq!(queries.len(), 5, "{queries:?}");
    for (title, query) in &queries {
        let result = prometheus.query(query);
        assert_eq!(result["status"], "success", "{title}: {query}: {result}");
    }
    let never_read = prometheus.query(&queries[0].1);
    let mut names: Vec<String> = never_read["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|series| {
            format!(
                "{}/{}",
                series["metric"]["namespace"].as_str().unwrap_or("?"),
                series["metric"]["workload"].as_str().unwrap_or("?")
            )
        })
        .collect();
    names.sort();
    assert_eq!(names, ["batch/report", "shop/web"], "{never_read}");

    // An agent no longer scraped: its node's evidence is missing, which is
    // refused as --server refuses an agent that is down, unless allowed.
    drop(agent_b);
    let refused = wait_for(TIMEOUT, || {
        let (ok, _, stderr) = tokenwatch(&["advise", "--accept-short-window", "--prometheus", &prometheus.url]);
        (!ok && stderr.contains("node-b within the last 24h but not now")).then_some(stderr)
    });
    assert!(refused.is_some(), "a node missing from the scrape is refused");
    let (ok, json, stderr) =
        tokenwatch(&["inventory", "--prometheus", &prometheus.url, "--allow-missing-nodes", "-o", "json"]);
    assert!(ok, "{stderr}");
    let left: Message = serde_json::from_str(&json).expect("an inventory");
    assert_eq!(left.nodes, ["node-a"]);

    // A Prometheus that scrapes no agent says so.
    drop(agent_a);
    let empty_dir = tempfile::tempdir().expect("tempdir");
    let empty = Prometheus::start(empty_dir.path(), &[]);
    let (ok, _, stderr) = tokenwatch(&["inventory", "--prometheus", &empty.url]);
    assert!(!ok && stderr.contains("no tokenwatch inventory series"), "{stderr}");
}

/// The value of the `metric` data point whose attributes include `labels`.
fn otlp_point(export: &ExportMetricsServiceRequest, metric: &str, labels: &[(&str, &str)]) -> Option<i64> {
    let metric = export
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics)
        .find(|m| m.name == metric)?;
    let points = match metric.data.as_ref()? {
        Data::Sum(sum) => &sum.data_points,
        Data::Gauge(gauge) => &gauge.data_points,
        _ => return None,
    };
    let has = |point: &&NumberDataPoint, (key, value): &(&str, &str)| {
        point.attributes.iter().any(|kv| {
            kv.key == *key
                && kv.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&AnyValue::StringValue((*value).to_owned()))
        })
    };
    let point = points.iter().find(|p| labels.iter().all(|l| has(p, l)))?;
    match point.value {
        Some(number_data_point::Value::AsInt(n)) => Some(n),
        _ => None,
    }
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn the_inventory_reaches_an_otlp_collector_as_metrics_at_start_and_at_shutdown() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let ctl = pod("ops", "ctl-a", "DaemonSet", "ctl", "ctl", &[]);
    seed(&state, "node-a", &[Arc::clone(&ctl)], &[event("apiserver-connect", &ctl, "/usr/bin/kubectl", 7)]);
    let collector = Collector::start();
    let (agent, _) = start_agent("node-a", &state, &["--otlp-endpoint", &collector.endpoint()]);
    let ctl_labels = [("node", "node-a"), ("namespace", "ops"), ("workload_kind", "DaemonSet"), ("workload", "ctl")];
    let connects = "tokenwatch_workload_api_server_connects_total";
    let first = wait_for(TIMEOUT, || {
        collector.metrics_exports().iter().find_map(|export| otlp_point(export, connects, &ctl_labels))
    });
    assert_eq!(first, Some(7), "the seeded count, at start:\n{}", agent.stderr());
    let export = collector.metrics_exports().remove(0);
    let resource = export.resource_metrics[0].resource.as_ref().expect("a resource");
    assert!(
        resource.attributes.iter().any(|kv| kv.key == "k8s.node.name"
            && kv.value.as_ref().and_then(|v| v.value.as_ref()) == Some(&AnyValue::StringValue("node-a".to_owned()))),
        "{resource:?}"
    );
    assert_eq!(otlp_point(&export, "tokenwatch_workload_pods_seen", &ctl_labels), Some(1));
    let before = collector.metrics_exports().len();
    let stopped = agent.stop(nix::sys::signal::Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(collector.metrics_exports().len() > before, "a last export at shutdown:\n{}", stopped.stderr);
}
