//! Live tests: the real agent, its eBPF programs in this kernel, and real
//! processes in their own mount namespaces and cgroups. Root only; run by
//! `cargo xtask test`.

mod support;

use std::{fs, net::TcpListener, time::Duration};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, PROJECTED_TOKEN, SA_DIR, STOLEN_LINK},
    agent::AgentProcess,
    cgroup::TestCgroup,
};
use tokenwatch_proto::v1::{alert::Evidence, Alert, ApiServerConnect, ProcessOrigin, Severity, TokenRead};

const ALERT_TIMEOUT: Duration = Duration::from_secs(15);

/// A counter's value from the agent's `kernel counters` log line.
fn counter(stderr: &str, name: &str) -> u64 {
    let line = stderr.lines().rfind(|l| l.contains("kernel counters")).expect("a kernel counters line");
    let needle = format!("{name}=");
    let start = line.find(&needle).unwrap_or_else(|| panic!("no {name} in `{line}`")) + needle.len();
    line[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a number")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn token_read(alert: &Alert) -> Option<&TokenRead> {
    match &alert.evidence {
        Some(Evidence::TokenRead(read)) => Some(read),
        _ => None,
    }
}

fn connect(alert: &Alert) -> Option<&ApiServerConnect> {
    match &alert.evidence {
        Some(Evidence::ApiServerConnect(connect)) => Some(connect),
        _ => None,
    }
}

fn pid_of(alert: &Alert) -> u32 {
    alert.process.as_ref().map_or(0, |p| p.pid)
}

fn describe(alerts: &[Alert]) -> String {
    alerts.iter().map(|a| serde_json::to_string(a).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

/// Checks what every alert must carry about the actor.
fn assert_identity(alert: &Alert, actor: &Actor, cgroup: &TestCgroup) {
    let process = alert.process.as_ref().expect("process context");
    assert_eq!(process.pid, actor.pid);
    assert_eq!(process.tid, actor.pid, "the actor is single-threaded");
    assert_eq!(process.uid, 0);
    assert!(!process.comm.is_empty());
    assert!(!alert.node.is_empty());
    assert!(!alert.id.is_empty());
    assert!(alert.time.is_some());
    assert_eq!(process.origin, i32::from(ProcessOrigin::Host), "the actor shares the host's pid namespace");
    assert_eq!(process.ns_pid, actor.pid);
    let parent = process.parents.first().expect("the kernel records the parent");
    assert_eq!(parent.pid, std::process::id(), "the test process started the actor");
    // A test thread forked the actor: the process, not the thread, is named.
    assert_eq!(parent.ns_pid, parent.pid, "a host process's pid is the same in its namespace");
    assert_eq!(parent.comm, process.comm, "the test binary's main thread, not the forking test thread");
    assert!(alert.missing.is_empty(), "nothing is missing for a host process: {:?}", alert.missing);
    let names = &alert.container.as_ref().expect("container context").cgroup_names;
    if cgroup.has_v2 {
        assert_eq!(names[0], cgroup.name, "unified cgroup leaf read in the kernel: {names:?}");
    }
    if cgroup.has_v1_memory {
        assert_eq!(names[2], cgroup.name, "v1 memory cgroup leaf read in the kernel: {names:?}");
    }
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn token_reads_by_every_path_alert_once_each() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("reads");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--rescan-interval-seconds",
        "1",
        "--token-path",
        PROJECTED_TOKEN,
    ]));
    assert!(
        agent.wait_for_log(&["watching token file", &support::mount_ns_of(actor.pid)], ALERT_TIMEOUT),
        "the agent never found the actor's token:\n{}",
        agent.stderr()
    );

    let run_sa = format!("{}/secrets/kubernetes.io/serviceaccount", actor.run_dir.display());
    // (command, requested path the alert must carry, syscall)
    let reads = [
        (format!("open {SA_DIR}/token"), format!("{SA_DIR}/token"), "openat"),
        (format!("open {run_sa}/token"), format!("{run_sa}/token"), "openat"),
        (format!("open-in {SA_DIR} token"), "token".to_owned(), "openat"),
        (format!("open {SA_DIR}/..data/token"), format!("{SA_DIR}/..data/token"), "openat"),
        (format!("open {STOLEN_LINK}"), STOLEN_LINK.to_owned(), "openat"),
        (format!("openat2 {SA_DIR}/token"), format!("{SA_DIR}/token"), "openat2"),
    ];
    let harmless = [
        format!("open {SA_DIR}/ca.crt"),
        format!("open {SA_DIR}/namespace"),
        format!("open {SA_DIR}/..data/ca.crt"),
        "open /etc/hostname".to_owned(),
    ];
    for command in harmless.iter().chain(reads.iter().map(|r| &r.0)) {
        actor.must(command);
    }
    // A node-level process reading the pod's token through /proc/<pid>/root.
    let via_proc = format!("/proc/{}/root{run_sa}/token", actor.pid);
    fs::read(&via_proc).expect("read the token through /proc/<pid>/root");
    let me = std::process::id();
    actor.must(&format!("open {PROJECTED_TOKEN}"));
    // A child that reads the token and exits before the agent looks at /proc:
    // the kernel-side identity still places it in the actor's cgroups.
    let cat_pid: u32 = actor.act(&format!("spawn-cat {SA_DIR}/token")).expect("cat the token").parse().expect("pid");

    let want = reads.len();
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        alerts.iter().filter(|a| pid_of(a) == actor.pid).count() > want // and the projected token
            && alerts.iter().any(|a| pid_of(a) == me && token_read(a).is_some_and(|r| r.requested_path == via_proc))
            && alerts.iter().any(|a| pid_of(a) == cat_pid)
    });
    let projected = |a: &&Alert| token_read(a).is_some_and(|r| r.requested_path == PROJECTED_TOKEN);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    assert!(stopped.status.success(), "agent exit {:?}:\n{}", stopped.status, stopped.stderr);
    assert!(stopped.stderr.contains("hooks detached"), "{}", stopped.stderr);

    let from_actor: Vec<&Alert> =
        stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).filter(|a| !projected(a)).collect();
    assert_eq!(
        from_actor.len(),
        want,
        "one alert per token read, none for other files:\n{}",
        describe(&stopped.alerts)
    );
    let from_projected: Vec<&Alert> = stopped.alerts.iter().filter(projected).collect();
    assert_eq!(from_projected.len(), 1, "--token-path is watched:\n{}", describe(&stopped.alerts));
    let read = token_read(from_projected[0]).expect("token read");
    assert_eq!(read.watched_path, PROJECTED_TOKEN);
    assert_eq!(read.resolved_path, format!("{}/secrets/tokens/vault-token", actor.run_dir.display()));
    for (command, requested, syscall) in &reads {
        let matching: Vec<&&Alert> = from_actor
            .iter()
            .filter(|a| token_read(a).is_some_and(|r| &r.requested_path == requested && r.syscall == *syscall))
            .collect();
        assert_eq!(matching.len(), 1, "`{command}` must alert exactly once:\n{}", describe(&stopped.alerts));
        let alert = matching[0];
        assert_identity(alert, &actor, &cgroup);
        assert_eq!(alert.rule, "token-read");
        assert_eq!(alert.severity, i32::from(Severity::Medium), "token-read's base severity, nothing raised it");
        assert_eq!(alert.mitre_techniques, ["T1528", "T1552"]);
        assert_eq!(alert.count, 1);
        let read = token_read(alert).expect("token read");
        assert_eq!(read.resolved_path, actor.resolved_token_path(), "`{command}`");
        assert!(!read.resolved_path_truncated);
        assert_eq!(read.flags, "O_RDONLY|O_CLOEXEC", "`{command}`");
        assert!(read.fd >= 0);
        assert!(read.watched_path.ends_with("/secrets/kubernetes.io/serviceaccount/token"), "{}", read.watched_path);
    }

    let from_host: Vec<&Alert> = stopped
        .alerts
        .iter()
        .filter(|a| pid_of(a) == me && token_read(a).is_some_and(|r| r.requested_path == via_proc))
        .collect();
    assert_eq!(from_host.len(), 1, "{}", describe(&stopped.alerts));
    let read = token_read(from_host[0]).expect("token read");
    assert_eq!(read.resolved_path, actor.resolved_token_path(), "the path inside the pod's mount namespace");
    let process = from_host[0].process.as_ref().expect("process");
    assert_eq!(process.exe, std::env::current_exe().expect("exe").display().to_string(), "a live process is inspected");
    assert!(!process.parents.is_empty(), "the parent chain is reported");

    let from_cat: Vec<&Alert> = stopped.alerts.iter().filter(|a| pid_of(a) == cat_pid).collect();
    assert_eq!(from_cat.len(), 1, "{}", describe(&stopped.alerts));
    let process = from_cat[0].process.as_ref().expect("process");
    assert_eq!(process.comm, "cat");
    // Gone before /proc could be read, it is named by the executable the
    // kernel read with the event: the file `cat` on PATH resolves to.
    let cat = fs::canonicalize(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join("cat"))
            .find(|path| path.exists())
            .expect("cat on PATH"),
    )
    .expect("cat's real path");
    let cat_meta = fs::metadata(&cat).expect("stat cat");
    assert_eq!(process.executable_name, cat.file_name().and_then(|n| n.to_str()).unwrap_or_default(), "{process:?}");
    assert_eq!(process.executable_inode, std::os::unix::fs::MetadataExt::ino(&cat_meta), "{process:?}");
    assert!(!process.executable_device.is_empty(), "{process:?}");
    let parent = process.parents.first().expect("recorded in the kernel although cat has exited");
    assert_eq!(parent.pid, actor.pid, "cat's parent is the actor");
    assert!(process.parents.iter().any(|p| p.pid == std::process::id()), "and its parent the test process");
    let names = &from_cat[0].container.as_ref().expect("container").cgroup_names;
    assert!(names.contains(&cgroup.name), "a process that exited at once is still placed: {names:?}");
    assert_eq!(token_read(from_cat[0]).expect("read").resolved_path, actor.resolved_token_path());
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_full_ring_buffer_drops_are_counted_and_logged_never_silent() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("flood");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    // 4 KiB holds two open events, so a burst must overflow it.
    let agent = AgentProcess::start(&args(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--ring-buffer-kib",
        "4",
        "--log",
        "info,tokenwatch_ebpf=debug",
    ]));
    const READS: u64 = 2000;
    let rss_before = support::rss_kib(agent.pid());
    actor.must(&format!("open-many {SA_DIR}/token {READS}"));
    // Let the pipeline finish what the ring buffer delivered.
    let mut last = usize::MAX;
    support::wait_for(ALERT_TIMEOUT, || {
        std::thread::sleep(Duration::from_millis(300));
        let now = agent.alerts().len();
        std::mem::replace(&mut last, now).eq(&now).then_some(())
    });
    // The loss is itself an alert (checked every second): wait for it, and a
    // second more so every dropped event is in one.
    let lost = |alerts: &[Alert]| alerts.iter().any(|a| a.rule == "agent-degraded");
    let reported = agent.wait_for_alerts(ALERT_TIMEOUT, lost);
    std::thread::sleep(Duration::from_millis(1500));
    let rss_after = support::rss_kib(agent.pid());
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "agent exit {:?}:\n{}", stopped.status, stopped.stderr);
    assert!(reported, "no agent-degraded alert for the drops:\n{}", stopped.stderr);
    let mut lost_by_hook = std::collections::BTreeMap::new();
    for alert in stopped.alerts.iter().filter(|a| a.rule == "agent-degraded") {
        let Some(Evidence::AgentHealth(health)) = &alert.evidence else { panic!("health evidence: {alert:?}") };
        assert_eq!(health.problem, "events-lost");
        assert!(health.window_start.is_some() && health.window_end.is_some(), "when: {health:?}");
        assert_eq!(health.events_lost, health.events_lost_by_hook.values().sum::<u64>(), "{health:?}");
        for (hook, n) in &health.events_lost_by_hook {
            *lost_by_hook.entry(hook.clone()).or_insert(0) += n;
        }
    }

    let delivered = stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).count() as u64;
    let matched = counter(&stopped.stderr, "opens_matched");
    let sent = counter(&stopped.stderr, "events_sent");
    let dropped = counter(&stopped.stderr, "events_dropped");
    assert!(dropped > 0, "a 4 KiB ring cannot take {READS} reads at once; log:\n{}", stopped.stderr);
    assert_eq!(matched, READS, "every read matched in the kernel");
    assert_eq!(sent + dropped, matched, "each match is sent or counted as dropped");
    assert_eq!(delivered, sent, "everything sent reached stdout, including what was queued at shutdown");
    assert_eq!(lost_by_hook.values().sum::<u64>(), dropped, "the alerts account for every drop: {lost_by_hook:?}");
    assert!(lost_by_hook.keys().all(|hook| hook.starts_with("open")), "only the open hooks lost: {lost_by_hook:?}");
    // Bounded queues and windows: a flood does not grow the agent.
    assert!(rss_after < rss_before + 32 * 1024, "RSS grew from {rss_before} KiB to {rss_after} KiB in a flood");
    let diagnostic = format!("ring buffer full: token open by tgid {} dropped", actor.pid);
    assert!(stopped.stderr.contains(&diagnostic), "the programs' own debug log reaches the agent's log");
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn api_server_connects_over_v4_and_v6_alert_once_each() {
    let _serial = support::serialise();
    let v4 = TcpListener::bind("127.0.0.1:0").expect("bind v4");
    let v6 = TcpListener::bind("[::1]:0").expect("bind v6 (loopback IPv6 is needed)");
    let elsewhere = TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let (p4, p6, p_else) = (
        v4.local_addr().expect("addr").port(),
        v6.local_addr().expect("addr").port(),
        elsewhere.local_addr().expect("addr").port(),
    );
    let cgroup = TestCgroup::create("connects");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--api-server",
        &format!("127.0.0.1:{p4}"),
        "--api-server",
        &format!("[::1]:{p6}"),
        "--api-server",
        &format!("127.0.0.1:{closed_port}"),
    ]));

    actor.must(&format!("connect 127.0.0.1:{p_else}"));
    actor.must(&format!("connect 127.0.0.1:{p4}"));
    actor.must(&format!("connect [::1]:{p6}"));
    actor.must(&format!("connect [::ffff:127.0.0.1]:{p4}"));
    let refused = actor.act(&format!("connect 127.0.0.1:{closed_port}"));
    assert!(refused.is_err(), "nothing listens on {closed_port}");
    let nonblocking: i64 = actor
        .act(&format!("connect-nonblocking 127.0.0.1:{p4}"))
        .expect("non-blocking connect")
        .parse()
        .expect("a result");
    assert!(nonblocking == 0 || nonblocking == -i64::from(libc::EINPROGRESS), "result {nonblocking}");

    // (address, port, family, result, outcome), in the order dialled.
    let expected = [
        ("127.0.0.1".to_owned(), p4, "ipv4", 0, "connected".to_owned()),
        ("::1".to_owned(), p6, "ipv6", 0, "connected".to_owned()),
        ("::ffff:127.0.0.1".to_owned(), p4, "ipv6", 0, "connected".to_owned()),
        (
            "127.0.0.1".to_owned(),
            closed_port,
            "ipv4",
            -i64::from(libc::ECONNREFUSED),
            "failed: ECONNREFUSED".to_owned(),
        ),
        (
            "127.0.0.1".to_owned(),
            p4,
            "ipv4",
            nonblocking,
            if nonblocking == 0 { "connected" } else { "in_progress" }.to_owned(),
        ),
    ];
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| {
        alerts.iter().filter(|a| pid_of(a) == actor.pid).count() >= expected.len()
    });
    let stopped = agent.stop(Signal::SIGINT);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    assert!(stopped.status.success(), "agent exit {:?}:\n{}", stopped.status, stopped.stderr);
    assert!(stopped.stderr.contains("hooks detached"), "{}", stopped.stderr);

    let from_actor: Vec<&Alert> = stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).collect();
    let seen: Vec<(String, u32, String, i64, String)> = from_actor
        .iter()
        .map(|a| {
            let c = connect(a).expect("a connect alert");
            (c.address.clone(), c.port, c.family.clone(), c.result, c.outcome.clone())
        })
        .collect();
    let want: Vec<(String, u32, String, i64, String)> =
        expected.iter().map(|(a, p, f, r, o)| (a.clone(), u32::from(*p), (*f).to_owned(), *r, o.clone())).collect();
    assert_eq!(seen, want, "one alert per watched dial, in order, none for {p_else}");
    for alert in &from_actor {
        assert_identity(alert, &actor, &cgroup);
        assert_eq!(alert.rule, "apiserver-connect");
        assert_eq!(alert.severity, i32::from(Severity::Low));
    }
    assert!(stopped.alerts.iter().all(|a| a.rule != "token-theft-chain"), "connects without a token read are no chain");
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn token_read_then_api_server_connect_raises_the_chain_once() {
    let _serial = support::serialise();
    let api = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = api.local_addr().expect("addr").port();
    let cgroup = TestCgroup::create("chain");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--api-server",
        &format!("127.0.0.1:{port}"),
    ]));
    actor.must(&format!("open {SA_DIR}/token"));
    actor.must(&format!("connect 127.0.0.1:{port}"));
    actor.must(&format!("connect 127.0.0.1:{port}"));
    let mine = |alerts: &[Alert]| alerts.iter().filter(|a| pid_of(a) == actor.pid).count();
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| mine(alerts) >= 4);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let rules: Vec<&str> = stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).map(|a| a.rule.as_str()).collect();
    assert_eq!(rules, ["token-read", "apiserver-connect", "token-theft-chain", "apiserver-connect"]);
    let by_rule = |rule: &str| stopped.alerts.iter().find(|a| a.rule == rule).expect("an alert of the rule");
    let chain = by_rule("token-theft-chain");
    assert_eq!(chain.severity, i32::from(Severity::High));
    assert_eq!(chain.related_alert_ids, [by_rule("token-read").id.clone(), by_rule("apiserver-connect").id.clone()]);
    assert!(matches!(chain.evidence, Some(Evidence::ApiServerConnect(_))));
    assert!(chain.summary.contains("read its token, then dialled the API server"), "{}", chain.summary);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_rotated_token_is_still_watched_before_any_rescan() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("rotate");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    // No rescan during the test: only the token volume's watch can match.
    let agent = AgentProcess::start(&args(&[
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--rescan-interval-seconds",
        "3600",
    ]));
    let fresh = actor.act("rotate").expect("rotate the token");
    actor.must(&format!("open {SA_DIR}/token"));
    actor.must(&format!("open {SA_DIR}/ca.crt"));
    actor.must(&format!("open {SA_DIR}/..data/namespace"));
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| alerts.iter().any(|a| pid_of(a) == actor.pid));
    // A moment for anything that should not come.
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "the rotated token's read was missed:\n{}", stopped.stderr);
    let mine: Vec<&Alert> = stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).collect();
    assert_eq!(mine.len(), 1, "the token only, not ca.crt or namespace:\n{}", describe(&stopped.alerts));
    let read = token_read(mine[0]).expect("a token read");
    assert!(read.resolved_path.ends_with(&format!("/serviceaccount/{fresh}/token")), "{}", read.resolved_path);
    assert!(read.watched_path.ends_with("/serviceaccount/token"), "the volume names its watched path: {read:?}");
    drop(actor);
}

fn api_service(cluster_ip: &str, port: u16) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "kubernetes"},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                 "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
    }))
    .expect("a Service")
}

fn api_slice(address: &str, port: u16) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "kubernetes",
                     "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [address], "conditions": {"ready": true}}],
        "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
    }))
    .expect("an EndpointSlice")
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn api_server_endpoints_learnt_from_the_cluster_follow_its_endpointslices() {
    let _serial = support::serialise();
    // Loopback addresses only: the cluster's objects name them, the actor
    // dials them, nothing leaves the machine.
    let bind = |ip: &str| TcpListener::bind((ip, 0)).expect("bind a loopback address");
    let (cluster_ip, old, new) = (bind("127.0.0.1"), bind("127.0.0.2"), bind("127.0.0.3"));
    let port = |l: &TcpListener| l.local_addr().expect("addr").port();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(support::fake_apiserver::FakeApiServer::start());
    api.add_service(api_service("127.0.0.1", port(&cluster_ip)));
    api.add_endpointslice(api_slice("127.0.0.2", port(&old)));
    let dir = tempfile::tempdir().expect("tempdir");
    let cgroup = TestCgroup::create("endpoints");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args(&[
        "--kubeconfig",
        &support::kubeconfig(dir.path(), api.url()),
        "--node-name",
        "n1",
        "--dedup-window-seconds",
        "0",
    ]));
    let watching = |address: String| agent.wait_for_log(&["watching API-server endpoint", &address], ALERT_TIMEOUT);
    assert!(watching(format!("endpoint=127.0.0.1:{}", port(&cluster_ip))), "{}", agent.stderr());
    assert!(watching(format!("endpoint=127.0.0.2:{}", port(&old))), "{}", agent.stderr());

    actor.must(&format!("connect 127.0.0.1:{}", port(&cluster_ip)));
    actor.must(&format!("connect 127.0.0.2:{}", port(&old)));
    api.modify_endpointslice(api_slice("127.0.0.3", port(&new)));
    assert!(watching(format!("endpoint=127.0.0.3:{}", port(&new))), "{}", agent.stderr());
    assert!(
        agent.wait_for_log(&["no longer an API-server endpoint", &format!("127.0.0.2:{}", port(&old))], ALERT_TIMEOUT),
        "{}",
        agent.stderr()
    );
    actor.must(&format!("connect 127.0.0.2:{}", port(&old)));
    actor.must(&format!("connect 127.0.0.3:{}", port(&new)));

    let mine = |alerts: &[Alert]| alerts.iter().filter(|a| pid_of(a) == actor.pid).count();
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| mine(alerts) >= 3);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let dialled: Vec<String> = stopped
        .alerts
        .iter()
        .filter(|a| pid_of(a) == actor.pid)
        .filter_map(connect)
        .map(|c| format!("{}:{}", c.address, c.port))
        .collect();
    assert_eq!(
        dialled,
        [
            format!("127.0.0.1:{}", port(&cluster_ip)),
            format!("127.0.0.2:{}", port(&old)),
            format!("127.0.0.3:{}", port(&new)),
        ],
        "the ClusterIP and the endpoints match; the old endpoint no longer does"
    );
    drop(actor);
}

/// A read soon after one that woke the agent does not wake it (the
/// programs' `RING_QUIET_NS`): the agent drains again by itself, so the
/// second read is not held in the kernel until some later event. 250 us
/// apart: after the agent has drained the first, inside the quiet time.
#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_read_that_did_not_wake_the_agent_still_reaches_it() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("quiet");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args(&["--standalone", "--dedup-window-seconds", "1"]));
    actor.must(&format!("open-twice {SA_DIR}/token 250"));
    let both = |alerts: &[Alert]| alerts.iter().any(|a| pid_of(a) == actor.pid && a.count == 2);
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, both);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "the second read was not delivered:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_thousand_identical_reads_are_one_alert_with_count_1000() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("dedup");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    // 8 MiB holds ~3,600 events: the burst cannot overflow it however the
    // agent is scheduled, so every read reaches the deduplicator.
    let agent =
        AgentProcess::start(&args(&["--standalone", "--dedup-window-seconds", "2", "--ring-buffer-kib", "8192"]));
    actor.must(&format!("open-many {SA_DIR}/token 1000"));
    let merged = |alerts: &[Alert]| alerts.iter().any(|a| pid_of(a) == actor.pid && a.count == 1000);
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, merged);
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "no merged alert:\n{}\nlog:\n{}", describe(&stopped.alerts), stopped.stderr);
    let mine: Vec<&Alert> = stopped.alerts.iter().filter(|a| pid_of(a) == actor.pid).collect();
    let ids: std::collections::BTreeSet<&str> = mine.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids.len(), 1, "one alert (its first sight, then its final count):\n{}", describe(&stopped.alerts));
    assert_eq!(mine.first().map(|a| a.count), Some(1), "the first read goes out at once");
    let last = mine.last().expect("the merged alert");
    assert_eq!(counter(&stopped.stderr, "events_dropped"), 0, "{}", stopped.stderr);
    assert_eq!(last.count, 1000);
    let at = |t: &Option<pbjson_types::Timestamp>| t.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(at(&last.first_seen) < at(&last.last_seen), "{:?} .. {:?}", last.first_seen, last.last_seen);
    drop(actor);
}
