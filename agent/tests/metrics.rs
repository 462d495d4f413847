//! The metrics and probe endpoints of a live agent, and the agent's own
//! token reads and API-server calls, which must never alert. Root only; run
//! by `cargo xtask test`. The Kubernetes API is the in-test server (no
//! kube-apiserver can run here), dialled on loopback.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, SA_DIR},
    agent::AgentProcess,
    cgroup::TestCgroup,
    http_get as get, metric_sample as sample,
};

const TIMEOUT: Duration = Duration::from_secs(15);

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn metrics_count_what_happened_and_the_agents_own_token_and_api_calls_never_alert() {
    let _serial = support::serialise();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(support::fake_apiserver::FakeApiServer::start());
    let api_addr = api.url().trim_start_matches("http://").to_owned();
    // The agent's own credentials: a token file it watches (it is a token
    // path) and reads (its kubeconfig names it), for an API server it
    // watches (its address is an API-server endpoint).
    let dir = tempfile::tempdir().expect("tempdir");
    let own_token = dir.path().join("agent-token");
    std::fs::write(&own_token, "not-a-real-token").expect("write the agent's token");
    let own_token = own_token.display().to_string();
    let kubeconfig = support::kubeconfig_with_user(dir.path(), api.url(), &format!("{{tokenFile: \"{own_token}\"}}"));
    let cgroup = TestCgroup::create("metrics");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&[
        "--kubeconfig".into(),
        kubeconfig,
        "--node-name".into(),
        "n1".into(),
        "--token-path".into(),
        own_token.clone(),
        "--api-server".into(),
        api_addr.clone(),
        "--rescan-interval-seconds".into(),
        "1".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    assert!(agent.wait_for_log(&["metrics and health endpoints listening"], TIMEOUT), "{}", agent.stderr());
    let addr = support::metrics_addr(&agent.stderr()).expect("the metrics address in the log");
    assert!(agent.wait_for_log(&["watching token file", &own_token], TIMEOUT), "{}", agent.stderr());

    actor.must(&format!("open {SA_DIR}/token"));
    let arrived = agent.wait_for_alerts(TIMEOUT, |alerts| {
        alerts.iter().any(|a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid))
    });
    assert!(arrived, "the actor's read was missed:\n{}", agent.stderr());

    let (status, text) = get(&addr, "/metrics");
    assert_eq!(status, 200, "{text}");
    assert_eq!(sample(&text, "tokenwatch_ready"), Some(1), "{text}");
    let reads = sample(&text, "tokenwatch_alerts_total{rule=\"token-read\",severity=\"SEVERITY_MEDIUM\"}")
        .or_else(|| sample(&text, "tokenwatch_alerts_total{rule=\"token-read\",severity=\"SEVERITY_HIGH\"}"));
    assert!(reads >= Some(1), "the actor's read is counted by rule and severity:\n{text}");
    let matched: u64 = ["open", "openat", "openat2"]
        .iter()
        .filter_map(|hook| {
            sample(&text, &format!("tokenwatch_kernel_events_total{{hook=\"{hook}\",stage=\"matched\"}}"))
        })
        .sum();
    assert!(matched >= 1, "the kernel's match is counted per hook:\n{text}");
    assert!(sample(&text, "tokenwatch_spool_alerts") >= Some(1), "{text}");
    assert_eq!(sample(&text, "tokenwatch_grpc_subscribers"), Some(0), "{text}");
    // The inventory names workloads and binaries, and /metrics is open: it
    // is there only when asked for (--metrics-inventory).
    assert!(!text.contains("tokenwatch_workload_") && !text.contains("tokenwatch_inventory_"), "{text}");
    assert!(text.contains("# TYPE tokenwatch_metadata_cache_misses_total counter"), "{text}");
    // Every program's state on this kernel: the core and the cgroup
    // connect hooks are attached, the entry tracepoint they stand in for is
    // verified but idle, and each program has exactly one state.
    let series = |program: &str, state: &str| format!("tokenwatch_hooks{{hook=\"{program}\",state=\"{state}\"}}");
    for program in ["sys_exit_openat", "sys_exit_connect", "connect4", "connect6"] {
        assert_eq!(sample(&text, &series(program, "attached")), Some(1), "{program} is live:\n{text}");
        assert_eq!(sample(&text, &series(program, "refused")), Some(0), "{text}");
    }
    assert_eq!(sample(&text, &series("sys_enter_connect", "loaded")), Some(1), "the fallback is idle:\n{text}");
    let hook_states = text.lines().filter(|l| l.starts_with("tokenwatch_hooks{") && l.ends_with(" 1")).count();
    let programs =
        text.lines().filter(|l| l.starts_with("tokenwatch_hooks{") && l.contains("state=\"attached\"")).count();
    assert_eq!(hook_states, programs, "one state per program:\n{text}");
    let (status, body) = get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    let degraded: Vec<&str> = body.lines().filter(|l| l.starts_with("hook ")).collect();
    let not_live = text
        .lines()
        .filter(|l| {
            l.starts_with("tokenwatch_hooks{")
                && l.ends_with(" 1")
                && !l.contains("state=\"attached\"")
                && !l.contains("state=\"loaded\"")
        })
        .count();
    assert_eq!(degraded.len(), not_live, "/readyz names every hook that is not live:\n{body}\n{text}");
    let (code, body) = get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ok: the event pipeline turned "), "{body}");
    assert_eq!(get(&addr, "/nothing-here").0, 404);

    // Scrapers holding every connection (32, idle: no request sent) do
    // not starve the probes: kubelet's /healthz and /readyz are answered
    // on a slot kept for them, at once, not after the idle ones time out.
    let held: Vec<std::net::TcpStream> =
        (0..32).map(|_| std::net::TcpStream::connect(&addr).expect("a scraper's connection")).collect();
    // (The listener accepts in arrival order: the probe's is the 33rd.)
    let probed = std::time::Instant::now();
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/readyz").0, 200);
    let (code, body) = get(&addr, "/metrics");
    let waited = probed.elapsed();
    assert_eq!(code, 503, "the 33rd connection is a probe's: {body}");
    assert!(body.starts_with("busy: 32 connections are open"), "{body}");
    // The idle connections would be dropped after 5 s; the probes did not
    // wait for that.
    assert!(waited < Duration::from_secs(4), "the probes waited {waited:?}");
    drop(held);

    // Make the agent dial its API server again while its hooks are live:
    // the watches are dropped and re-established.
    let watches = api.watch_requests();
    api.drop_watches();
    assert!(support::wait_for(TIMEOUT, || (api.watch_requests() > watches).then_some(())).is_some(), "no re-watch");
    // Two rescans (each opens every token file, the agent's own included).
    std::thread::sleep(Duration::from_millis(2500));
    let agent_pid = agent.pid();
    let stopped = agent.stop(Signal::SIGTERM);
    let own: Vec<_> =
        stopped.alerts.iter().filter(|a| a.process.as_ref().is_some_and(|p| p.pid == agent_pid)).collect();
    assert!(own.is_empty(), "the agent alerted on itself: {own:?}");
    assert!(
        !stopped.alerts.iter().any(|a| serde_json::to_string(a).unwrap_or_default().contains(&own_token)),
        "no alert names the agent's own token file"
    );
    drop(actor);
}
