//! The gRPC alert stream, live: alerts from real syscalls reach subscribers
//! (the `tokenwatch alerts` CLI and a tonic client), filtered as asked,
//! resumable by sequence across disconnects and agent restarts, and a
//! stalled subscriber delays no one. Root only; run by `cargo xtask test`.

mod support;

use std::{process::Command, time::Duration};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, SA_DIR},
    agent::AgentProcess,
    cgroup::TestCgroup,
};
use tokenwatch_proto::v1::{
    alert_service_client::AlertServiceClient, subscribe_response::Item, Alert, SubscribeRequest,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

use support::agent::held_alerts as cli;

fn sequences(alerts: &[Alert]) -> Vec<u64> {
    alerts.iter().map(|a| a.sequence).collect()
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn subscribers_get_real_alerts_filtered_and_resume_exactly_across_restarts() {
    let _serial = support::serialise();
    let api = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = api.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, socket) = (dir.path().join("spool"), dir.path().join("grpc.sock"));
    let args = strings(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--api-server",
        &format!("127.0.0.1:{port}"),
        "--spool-dir",
        &spool.display().to_string(),
        "--grpc-listen",
        &format!("unix:{}", socket.display()),
    ]);
    let cgroup = TestCgroup::create("stream");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args);
    for _ in 0..3 {
        actor.must(&format!("open {SA_DIR}/token"));
    }
    actor.must(&format!("connect 127.0.0.1:{port}"));
    actor.must(&format!("connect 127.0.0.1:{port}"));
    // 3 reads, 2 connects, 1 chain.
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| alerts.len() >= 6), "{}", agent.stderr());

    let all = cli(&socket, &[]);
    assert_eq!(sequences(&all), [1, 2, 3, 4, 5, 6], "every alert, in order, numbered");
    let printed: Vec<String> = agent.alerts().iter().map(|a| a.id.clone()).collect();
    let streamed: Vec<String> = all.iter().map(|a| a.id.clone()).collect();
    assert_eq!(streamed, printed, "the stream carries what stdout printed");
    let connects = cli(&socket, &["--rule", "apiserver-connect"]);
    assert_eq!(connects.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(), ["apiserver-connect"; 2]);
    let severe = cli(&socket, &["--min-severity", "high"]);
    assert_eq!(severe.iter().map(|a| a.rule.as_str()).collect::<Vec<_>>(), ["token-theft-chain"]);
    assert!(cli(&socket, &["--namespace", "shop"]).is_empty(), "host processes have no namespace");

    // Disconnected: two more alerts; resuming after the last seen gets
    // exactly those.
    actor.must(&format!("open {SA_DIR}/token"));
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| alerts.len() >= 8), "{}", agent.stderr());
    assert_eq!(sequences(&cli(&socket, &["--since", "6"])), [7, 8]);
    let first_boot = all[0].boot_id.clone();
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);

    // Restarted on the same log: the sequence goes on, nothing is repeated.
    let agent = AgentProcess::start(&args);
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| !alerts.is_empty()), "{}", agent.stderr());
    let after_restart = cli(&socket, &["--since", "8"]);
    assert_eq!(sequences(&after_restart), [9]);
    assert_ne!(after_restart[0].boot_id, first_boot, "a new run of the agent");
    assert_eq!(sequences(&cli(&socket, &[])), (1..=9).collect::<Vec<u64>>(), "the log kept the first run's alerts");
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_stalled_subscriber_does_not_delay_another() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("stall");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    // 8 MiB of ring buffer holds the whole burst: every read becomes an
    // alert however the agent is scheduled, so the count below is exact.
    let agent =
        AgentProcess::start(&strings(&["--standalone", "--dedup-window-seconds", "0", "--ring-buffer-kib", "8192"]));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let socket = agent.grpc_socket();
    let follow = SubscribeRequest { follow: true, ..SubscribeRequest::default() };
    // A lazy tonic channel over a unix socket (the agent's CRI helper).
    let channel = runtime.block_on(async { tokenwatch_agent::metadata::cri::channel(&socket).expect("a channel") });
    // Subscribed, never read: its buffers fill and its feeder waits.
    let stalled = runtime
        .block_on(AlertServiceClient::new(channel.clone()).subscribe(follow.clone()))
        .expect("subscribe")
        .into_inner();
    let mut reader =
        runtime.block_on(AlertServiceClient::new(channel).subscribe(follow)).expect("subscribe").into_inner();

    // ~1,000 alerts of ~2 KB: far more than the stalled stream's buffers.
    const READS: usize = 1000;
    actor.must(&format!("open-many {SA_DIR}/token {READS}"));
    let received = runtime.block_on(async {
        let mut count = 0;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while count < READS {
            let Ok(Ok(Some(message))) = tokio::time::timeout_at(deadline, reader.message()).await else { break };
            if let Some(Item::Alert(alert)) = message.item {
                if alert.process.as_ref().is_some_and(|p| p.pid == actor.pid) {
                    count += 1;
                }
            }
        }
        count
    });
    drop(stalled);
    let stopped = agent.stop(Signal::SIGTERM);
    assert_eq!(received, READS, "the reading subscriber got every alert while the other stalled:\n{}", stopped.stderr);
    assert!(stopped.status.success(), "shut down cleanly with a stalled subscriber:\n{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn mutual_tls_refuses_clients_without_a_trusted_certificate() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| support::pki::write_pem(dir.path(), name, pem);
    let (ours, theirs) = (support::pki::Pki::new("tokenwatch test CA"), support::pki::Pki::new("another CA"));
    let (server_cert, server_key) = ours.server(&["localhost"]);
    let (client_cert, client_key) = ours.client("siem");
    let (foreign_cert, foreign_key) = theirs.client("intruder");
    let files = [
        ("ca", write("ca.pem", &ours.ca_pem)),
        ("server.crt", write("server.crt", &server_cert)),
        ("server.key", write("server.key", &server_key)),
        ("client.crt", write("client.crt", &client_cert)),
        ("client.key", write("client.key", &client_key)),
        ("foreign.crt", write("foreign.crt", &foreign_cert)),
        ("foreign.key", write("foreign.key", &foreign_key)),
    ];
    let file = |name: &str| files.iter().find(|(n, _)| *n == name).map(|(_, p)| p.clone()).expect("a file");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = format!("127.0.0.1:{port}");

    let cgroup = TestCgroup::create("mtls");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&strings(&[
        "--standalone",
        "--grpc-listen",
        &server,
        "--grpc-tls-cert",
        &file("server.crt"),
        "--grpc-tls-key",
        &file("server.key"),
        "--grpc-tls-client-ca",
        &file("ca"),
    ]));
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| !alerts.is_empty()), "{}", agent.stderr());

    let alerts = |extra: &[String]| {
        Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
            .args(["alerts", "--server", &server, "-o", "json", "--server-name", "localhost"])
            .args(extra)
            .output()
            .expect("run tokenwatch alerts")
    };
    let trusted = alerts(&strings(&["--ca", &file("ca"), "--cert", &file("client.crt"), "--key", &file("client.key")]));
    assert!(trusted.status.success(), "{}", String::from_utf8_lossy(&trusted.stderr));
    assert_eq!(String::from_utf8_lossy(&trusted.stdout).lines().count(), 1, "the trusted client gets the alert");
    for (what, extra) in [
        ("no client certificate", strings(&["--ca", &file("ca")])),
        (
            "a certificate from another CA",
            strings(&["--ca", &file("ca"), "--cert", &file("foreign.crt"), "--key", &file("foreign.key")]),
        ),
        ("plaintext", Vec::new()),
    ] {
        let refused = alerts(&extra);
        assert!(!refused.status.success(), "{what}: must be refused");
        assert!(
            refused.stdout.is_empty(),
            "{what}: must get nothing, got {}",
            String::from_utf8_lossy(&refused.stdout)
        );
    }

    // cert-manager renews: a new CA, server certificate and key replace
    // the files (by rename, as kubelet swaps a Secret's), then SIGHUP. New
    // connections get the new certificate and the new CA's clients; the
    // old CA's are refused. No restart.
    let renewed = support::pki::Pki::new("renewed CA");
    let (server_cert, server_key) = renewed.server(&["localhost"]);
    let (client_cert, client_key) = renewed.client("siem");
    for (name, pem) in [("ca.pem", &renewed.ca_pem), ("server.crt", &server_cert), ("server.key", &server_key)] {
        let fresh = write(&format!("{name}.new"), pem);
        std::fs::rename(&fresh, dir.path().join(name)).expect("swap in the renewed file");
    }
    let new_client = [write("new-client.crt", &client_cert), write("new-client.key", &client_key)];
    let new_ca = write("new-ca.pem", &renewed.ca_pem);
    let old_ca = write("old-ca.pem", &ours.ca_pem);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.pid() as i32), Signal::SIGHUP).expect("SIGHUP");
    assert!(agent.wait_for_log(&["gRPC TLS certificate and keys reloaded"], TIMEOUT), "{}", agent.stderr());
    let renewed_client = alerts(&strings(&["--ca", &new_ca, "--cert", &new_client[0], "--key", &new_client[1]]));
    assert!(renewed_client.status.success(), "after renewal: {}", String::from_utf8_lossy(&renewed_client.stderr));
    assert_eq!(String::from_utf8_lossy(&renewed_client.stdout).lines().count(), 1, "the renewed client gets the alert");
    let old = alerts(&strings(&["--ca", &old_ca, "--cert", &file("client.crt"), "--key", &file("client.key")]));
    assert!(!old.status.success() && old.stdout.is_empty(), "the old CA's client is refused after renewal");
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn health_and_reflection_let_stock_tools_discover_the_stream() {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse, ServerReflectionRequest,
    };

    let _serial = support::serialise();
    let agent = AgentProcess::start(&strings(&["--standalone"]));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let socket = agent.grpc_socket();
    let (status, services) = runtime.block_on(async {
        let channel = tokenwatch_agent::metadata::cri::channel(&socket).expect("a channel");
        let mut status = Vec::new();
        for service in ["tokenwatch.v1.AlertService", "tokenwatch.v1.InventoryService"] {
            let request = HealthCheckRequest { service: service.into() };
            status.push(
                HealthClient::new(channel.clone()).check(request).await.expect("health check").into_inner().status,
            );
        }
        let list = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = ServerReflectionClient::new(channel)
            .server_reflection_info(futures::stream::iter([list]))
            .await
            .expect("reflection")
            .into_inner();
        let reply = replies.message().await.expect("a reply").expect("one message");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("not a service list: {reply:?}")
        };
        (status, list.service.into_iter().map(|s| s.name).collect::<Vec<_>>())
    });
    assert_eq!(status, [i32::from(ServingStatus::Serving); 2]);
    for service in ["tokenwatch.v1.AlertService", "tokenwatch.v1.InventoryService", "grpc.health.v1.Health"] {
        assert!(services.iter().any(|s| s == service), "{service} not listed: {services:?}");
    }
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn bad_and_oversized_requests_are_refused_and_the_agent_serves_on() {
    let _serial = support::serialise();
    let agent = AgentProcess::start(&strings(&["--standalone"]));
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let socket = agent.grpc_socket();
    runtime.block_on(async {
        let channel = tokenwatch_agent::metadata::cri::channel(&socket).expect("a channel");
        let mut client = AlertServiceClient::new(channel);
        let bad = SubscribeRequest { rules: vec!["no-such-rule".into()], ..SubscribeRequest::default() };
        let status = client.subscribe(bad).await.expect_err("an unknown rule is refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains("rules: `no-such-rule` is not a rule id"), "{status:?}");
        let huge = SubscribeRequest { pods: vec!["p".repeat(200); 1000], ..SubscribeRequest::default() };
        let status = client.subscribe(huge).await.expect_err("a 200 KB request is refused");
        assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
        assert!(status.message().contains("the limit is: 65536 bytes"), "{status:?}");
        let good = SubscribeRequest { rules: vec!["token-read".into()], ..SubscribeRequest::default() };
        client.subscribe(good).await.expect("a good request still works after the bad ones");
    });
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_thousand_subscribers_coming_and_going_leave_nothing_behind_and_the_cap_holds() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("subscribers");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&strings(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--metrics-listen",
        "127.0.0.1:0",
    ]));
    // Something to replay: each subscriber from sequence 0 reads the log.
    actor.must(&format!("open-many {SA_DIR}/token 50"));
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| alerts.len() >= 50), "{}", agent.stderr());
    let metrics = support::metrics_addr(&agent.stderr()).expect("the metrics address");
    let subscribers =
        || support::metric_sample(&support::http_get(&metrics, "/metrics").1, "tokenwatch_grpc_subscribers");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let socket = agent.grpc_socket();
    let channel = || tokenwatch_agent::metadata::cri::channel(&socket).expect("a channel");
    // Opens `count` subscriptions from sequence 0, ten at a time on a
    // connection of their own, each read to its first alert and dropped;
    // half of them follow. (A thousand resets on one connection is what
    // h2 treats as an attack, "rapid reset": it ends that connection.)
    let come_and_go = |count: usize| {
        runtime.block_on(async {
            for round in 0..count / 10 {
                let client = AlertServiceClient::new(channel());
                let opened = (0..10).map(|i| {
                    let mut client = client.clone();
                    let follow = (round + i) % 2 == 0;
                    async move {
                        let request = SubscribeRequest { follow, ..SubscribeRequest::default() };
                        let mut stream = client.subscribe(request).await.expect("subscribe").into_inner();
                        stream.message().await.expect("a message").expect("an alert");
                    }
                });
                futures::future::join_all(opened).await;
            }
        });
    };
    let settled = |fds: usize| {
        support::wait_for(TIMEOUT, || {
            (subscribers() == Some(0) && support::fd_count(agent.pid()) <= fds + 2).then_some(())
        })
    };
    come_and_go(100);
    assert!(settled(usize::MAX - 2).is_some(), "subscribers left: {:?}", subscribers());
    let (fds, rss) = (support::fd_count(agent.pid()), support::rss_kib(agent.pid()));
    come_and_go(1000);
    assert!(
        settled(fds).is_some(),
        "after 1,000: {:?} subscribers, {} fds (was {fds})",
        subscribers(),
        support::fd_count(agent.pid())
    );
    let grown = support::rss_kib(agent.pid()).saturating_sub(rss);
    assert!(grown < 16 * 1024, "1,000 subscribers came and went; the agent grew by {grown} KiB");

    // The cap: 64 held (16 streams a connection), the 65th refused, and
    // served again once one goes.
    let refused = runtime.block_on(async {
        let follow = SubscribeRequest { follow: true, ..SubscribeRequest::default() };
        let mut held = Vec::new();
        for _ in 0..4 {
            let client = AlertServiceClient::new(channel());
            for _ in 0..16 {
                held.push(client.clone().subscribe(follow.clone()).await.expect("one of 64").into_inner());
            }
        }
        let mut extra = AlertServiceClient::new(channel());
        let status = extra.subscribe(follow.clone()).await.expect_err("the 65th is refused");
        held.pop();
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while extra.subscribe(follow.clone()).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "never served again after one went");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        status
    });
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("64 subscribers are connected"), "{refused:?}");
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_python_siem_discovers_the_api_by_reflection_subscribes_and_reads_the_inventory() {
    let _serial = support::serialise();
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let server = format!("127.0.0.1:{port}");
    let cgroup = TestCgroup::create("python");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&strings(&["--standalone", "--grpc-listen", &server, "--node-name", "node-py"]));
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(agent.wait_for_alerts(TIMEOUT, |alerts| !alerts.is_empty()), "{}", agent.stderr());
    // The official client, installed from PyPI by `cargo xtask setup`.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/python/siem_client.py");
    let output = Command::new("python3").arg(script).arg(&server).output().expect("run python3");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(output.status.success(), "the Python client failed:\n{stdout}\n{stderr}\n{}", stopped.stderr);
    let steps: Vec<serde_json::Value> =
        stdout.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let services: Vec<&str> =
        steps[0]["services"].as_array().expect("services").iter().filter_map(|s| s.as_str()).collect();
    for wanted in ["tokenwatch.v1.AlertService", "tokenwatch.v1.InventoryService", "grpc.health.v1.Health"] {
        assert!(services.contains(&wanted), "reflection lists {wanted}: {services:?}");
    }
    assert_eq!(steps[1]["step"], "alert");
    assert_eq!(steps[1]["rule"], "token-read", "{}", steps[1]);
    assert_eq!(steps[1]["pid"], actor.pid, "the actor's read: {}", steps[1]);
    assert_eq!(steps[2]["step"], "inventory");
    assert_eq!(steps[2]["nodes"], serde_json::json!(["node-py"]), "{}", steps[2]);
    drop(actor);
}
