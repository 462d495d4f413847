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
