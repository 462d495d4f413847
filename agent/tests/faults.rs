//! Faults around the agent: its delivery log's disk fills up, and hundreds
//! of subscribers come and go. It keeps watching, says so in an alert and a
//! metric, never corrupts what it stored, and leaks nothing. Root only; run
//! by `cargo xtask test`.

mod support;

use std::{path::Path, time::Duration};

use nix::{mount::MsFlags, sys::signal::Signal};
use support::{
    actor::{Actor, SA_DIR},
    agent::{held_alerts, AgentProcess},
    cgroup::TestCgroup,
    metric_sample, metrics_addr,
};
use tokenwatch_proto::v1::{alert::Evidence, alert_service_client::AlertServiceClient, Alert, SubscribeRequest};

const TIMEOUT: Duration = Duration::from_secs(20);

/// A small tmpfs, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).expect("mount point");
        nix::mount::mount(Some("tmpfs"), at, Some("tmpfs"), MsFlags::empty(), Some(format!("size={size}").as_str()))
            .expect("mount a small tmpfs");
        SmallDisk(at.to_owned())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn is_actor(actor: &Actor) -> impl Fn(&Alert) -> bool + '_ {
    move |a| a.process.as_ref().is_some_and(|p| p.pid == actor.pid)
}

#[test]
#[ignore = "needs root: loads eBPF, mounts a tmpfs; run by cargo xtask test"]
fn a_full_disk_is_reported_in_an_alert_and_a_metric_and_the_log_stays_readable() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SmallDisk::mount(&dir.path().join("disk"), "128k");
    let spool = disk.0.join("spool").display().to_string();
    let cgroup = TestCgroup::create("diskfull");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let start = |socket: &str| {
        AgentProcess::start(&[
            "--standalone".into(),
            "--dedup-window-seconds".into(),
            "0".into(),
            "--spool-dir".into(),
            spool.clone(),
            "--spool-max-mib".into(),
            "64".into(),
            "--grpc-listen".into(),
            format!("unix:{}", dir.path().join(socket).display()),
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
        ])
    };
    let agent = start("first.sock");
    // ~2 KB an alert: 400 overflow 128 KiB.
    actor.must(&format!("open-many {SA_DIR}/token 400"));
    let failing = |alerts: &[Alert]| {
        alerts
            .iter()
            .any(|a| matches!(&a.evidence, Some(Evidence::AgentHealth(h)) if h.problem == "delivery-log-failing"))
    };
    assert!(agent.wait_for_alerts(TIMEOUT, failing), "no delivery-log-failing alert:\n{}", agent.stderr());
    let all_read = |alerts: &[Alert]| alerts.iter().filter(|a| is_actor(&actor)(a)).count() >= 400;
    assert!(agent.wait_for_alerts(TIMEOUT, all_read), "the agent stopped watching when its disk filled");
    let addr = metrics_addr(&agent.stderr()).expect("the metrics address");
    let (_, metrics) = support::http_get(&addr, "/metrics");
    let refused = metric_sample(&metrics, "tokenwatch_spool_write_failures_total").unwrap_or(0);
    assert!(refused > 0, "the metric counts refused appends:\n{metrics}");
    // Still watching: a read after the disk filled alerts (on stdout).
    actor.must(&format!("openat2 {SA_DIR}/token"));
    let after = |alerts: &[Alert]| alerts.iter().filter(|a| is_actor(&actor)(a)).count() >= 401;
    assert!(agent.wait_for_alerts(TIMEOUT, after), "a read after the disk filled was missed");
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.stderr.contains("the delivery log cannot be written"), "said loudly:\n{}", stopped.stderr);
    let written: Vec<u64> = stopped.alerts.iter().map(|a| a.sequence).filter(|s| *s > 0).collect();

    // What was stored reads back whole after a restart on the same full disk.
    let again = start("second.sock");
    let held = held_alerts(&dir.path().join("second.sock"), &[]);
    let sequences: Vec<u64> = held.iter().map(|a| a.sequence).collect();
    assert!(!sequences.is_empty(), "something was stored before the disk filled");
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>(), "readable, in order, without gaps");
    for sequence in &written {
        assert!(sequences.contains(sequence), "alert {sequence} was acknowledged as written, then lost");
    }
    let stopped = again.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn five_hundred_subscribers_coming_and_going_leave_no_trace_and_the_stream_serves_on() {
    let _serial = support::serialise();
    let cgroup = TestCgroup::create("churn");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&[
        "--standalone".into(),
        "--dedup-window-seconds".into(),
        "0".into(),
        "--metrics-listen".into(),
        "127.0.0.1:0".into(),
    ]);
    actor.must(&format!("open-many {SA_DIR}/token 20"));
    assert!(agent.wait_for_alerts(TIMEOUT, |a| a.len() >= 20), "{}", agent.stderr());
    let before = fds(agent.pid());
    let socket = agent.grpc_socket();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let received: usize = runtime.block_on(async {
        let mut total = 0;
        // 10 waves of 50 at once: each connects, follows, reads a few alerts
        // and goes away mid-stream.
        for _ in 0..10 {
            let wave = (0..50).map(|_| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let channel = tokenwatch_agent::metadata::cri::channel(&socket).expect("a channel");
                    let follow = SubscribeRequest { follow: true, ..SubscribeRequest::default() };
                    let mut stream =
                        AlertServiceClient::new(channel).subscribe(follow).await.expect("subscribe").into_inner();
                    let mut got = 0;
                    while got < 3 {
                        match tokio::time::timeout(TIMEOUT, stream.message()).await {
                            Ok(Ok(Some(_))) => got += 1,
                            other => panic!("a subscriber got {other:?}"),
                        }
                    }
                    got
                })
            });
            for joined in futures::future::join_all(wave).await {
                total += joined.expect("a subscriber task");
            }
        }
        total
    });
    assert_eq!(received, 500 * 3, "every subscriber was served");
    let addr = metrics_addr(&agent.stderr()).expect("the metrics address");
    let gone = support::wait_for(TIMEOUT, || {
        let (_, text) = support::http_get(&addr, "/metrics");
        (metric_sample(&text, "tokenwatch_grpc_subscribers") == Some(0)).then_some(())
    });
    assert!(gone.is_some(), "the subscribers gauge returns to 0");
    let settled = support::wait_for(TIMEOUT, || (fds(agent.pid()) <= before + 2).then_some(()));
    assert!(settled.is_some(), "file descriptors leaked: {before} before, {} after", fds(agent.pid()));
    // The stream still serves a newcomer, and new alerts still flow.
    actor.must(&format!("openat2 {SA_DIR}/token"));
    let held = held_alerts(&socket, &[]);
    assert!(held.iter().filter(|a| is_actor(&actor)(a)).count() >= 20, "a newcomer reads what is held");
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}
