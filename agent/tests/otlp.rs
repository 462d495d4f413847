//! The OTLP exporter, live: alerts from real syscalls reach an in-test
//! OpenTelemetry Collector as log records, every one exactly as printed on
//! stdout, across a collector outage (retried with backoff, at-least-once:
//! duplicates only from the outage, identical to the first copy) and an
//! agent restart (the acknowledged position is kept: nothing is sent
//! again). Root only; run by `cargo xtask test`.

mod support;

use std::{collections::BTreeMap, time::Duration};

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, SA_DIR},
    agent::AgentProcess,
    cgroup::TestCgroup,
    otlp_collector::{body, sequence, Collector},
    wait_for,
};
use tokenwatch_proto::v1::Alert;

const TIMEOUT: Duration = Duration::from_secs(30);
const READS: u64 = 20;

/// How many duplicates the outage caused, on the test's stderr.
#[expect(clippy::print_stderr, reason = "the duplicate count is reported on the test's stderr")]
fn report(line: &str) {
    eprintln!("otlp: {line}");
}

/// Waits until the collector has `n` distinct sequences.
fn got(collector: &Collector, n: u64) -> bool {
    wait_for(TIMEOUT, || (collector.sequences().len() as u64 >= n).then_some(())).is_some()
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn every_alert_reaches_the_collector_across_an_outage_and_an_agent_restart() {
    let _serial = support::serialise();
    let mut collector = Collector::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let args: Vec<String> = [
        "--standalone",
        "--dedup-window-seconds",
        "0",
        "--spool-dir",
        &spool.display().to_string(),
        "--otlp-endpoint",
        &collector.endpoint(),
    ]
    .map(str::to_owned)
    .to_vec();
    let cgroup = TestCgroup::create("otlp");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&args);
    assert!(agent.wait_for_log(&["exporting alerts as OTLP logs"], TIMEOUT), "{}", agent.stderr());

    actor.must(&format!("open-many {SA_DIR}/token {READS}"));
    assert!(got(&collector, READS), "the collector got {:?}:\n{}", collector.sequences(), agent.stderr());

    // Outage: the collector goes away, alerts keep coming; the exporter
    // retries with backoff.
    collector.stop();
    actor.must(&format!("open-many {SA_DIR}/token {READS}"));
    assert!(agent.wait_for_alerts(TIMEOUT, |a| a.len() as u64 >= 2 * READS), "{}", agent.stderr());
    assert!(agent.wait_for_log(&["OTLP export failed; retrying", "attempt=2"], TIMEOUT), "{}", agent.stderr());
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(collector.sequences().len() as u64, READS, "nothing arrives while the collector is down");
    collector.restart();
    let wait = got(&collector, 2 * READS);
    let sequences = collector.sequences();
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(wait, "after the outage the collector has {sequences:?}:\n{}", stopped.stderr);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    assert!(stopped.stderr.contains("OTLP exporter stopped"), "{}", stopped.stderr);

    // Exactly the alerts printed, each as printed; duplicates identical.
    let printed: BTreeMap<u64, Alert> = stopped.alerts.iter().map(|a| (a.sequence, a.clone())).collect();
    assert_eq!(printed.keys().copied().collect::<Vec<_>>(), (1..=2 * READS).collect::<Vec<_>>(), "stdout");
    let records = collector.records();
    let mut first_copy = BTreeMap::new();
    let mut duplicates = 0;
    for record in &records {
        let seq = sequence(record);
        let alert: Alert = serde_json::from_str(body(record)).expect("the body is an alert in JSON");
        assert_eq!(alert.sequence, seq, "attribute and body agree");
        assert_eq!(Some(&alert), printed.get(&seq), "sequence {seq} as printed on stdout");
        match first_copy.get(&seq) {
            Some(first) => {
                assert_eq!(first, record, "a duplicate of {seq} is identical to its first copy");
                duplicates += 1;
            }
            None => {
                first_copy.insert(seq, record.clone());
            }
        }
    }
    assert_eq!(first_copy.keys().copied().collect::<Vec<_>>(), (1..=2 * READS).collect::<Vec<_>>());
    assert_eq!(duplicates, records.len() - first_copy.len());
    report(&format!("{} records for {} alerts: {duplicates} duplicates", records.len(), first_copy.len()));

    // Restarted on the same log: the position was kept, nothing is re-sent.
    let received = collector.records().len();
    let agent = AgentProcess::start(&args);
    assert!(
        agent.wait_for_log(&["exporting alerts as OTLP logs", &format!("after={}", 2 * READS)], TIMEOUT),
        "{}",
        agent.stderr()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(collector.records().len(), received, "no alert exported twice after a restart");
    // And new alerts still go out, numbered on.
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(got(&collector, 2 * READS + 1), "{}", agent.stderr());
    assert_eq!(collector.sequences().last(), Some(&(2 * READS + 1)));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(stopped.status.success(), "{}", stopped.stderr);
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn the_exporter_speaks_mutual_tls_and_an_untrusted_exporter_delivers_nothing() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, pem: &str| support::pki::write_pem(dir.path(), name, pem);
    let (ours, theirs) = (support::pki::Pki::new("collector CA"), support::pki::Pki::new("another CA"));
    let (server_cert, server_key) = ours.server(&["127.0.0.1"]);
    let collector = Collector::start_tls(&server_cert, &server_key, Some(&ours.ca_pem));
    let ca = write("ca.pem", &ours.ca_pem);
    let cgroup = TestCgroup::create("otlp-tls");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let run = |cert: (String, String), tag: &str| {
        let (cert, key) = (write(&format!("{tag}.crt"), &cert.0), write(&format!("{tag}.key"), &cert.1));
        AgentProcess::start(
            &[
                "--standalone",
                "--dedup-window-seconds",
                "0",
                "--otlp-endpoint",
                &collector.endpoint(),
                "--otlp-ca",
                &ca,
                "--otlp-cert",
                &cert,
                "--otlp-key",
                &key,
            ]
            .map(str::to_owned),
        )
    };

    let trusted = run(ours.client("tokenwatch"), "trusted");
    actor.must(&format!("open {SA_DIR}/token"));
    let delivered = support::wait_for(TIMEOUT, || (!collector.records().is_empty()).then_some(()));
    let stopped = trusted.stop(Signal::SIGTERM);
    assert!(delivered.is_some(), "nothing reached the collector over mTLS:\n{}", stopped.stderr);
    assert_eq!(collector.records().len(), 1);

    let untrusted = run(theirs.client("intruder"), "untrusted");
    actor.must(&format!("open {SA_DIR}/token"));
    assert!(untrusted.wait_for_log(&["attempt=2"], TIMEOUT), "the refused exporter retries:\n{}", untrusted.stderr());
    let stopped = untrusted.stop(Signal::SIGTERM);
    assert_eq!(
        collector.records().len(),
        1,
        "a client certificate from another CA delivers nothing:\n{}",
        stopped.stderr
    );
    drop(actor);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_collector_down_for_two_minutes_gets_everything_soon_after_it_returns_and_the_agent_stays_flat() {
    let _serial = support::serialise();
    let mut collector = Collector::start();
    let cgroup = TestCgroup::create("otlp-long");
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&[
        "--standalone".into(),
        "--dedup-window-seconds".into(),
        "0".into(),
        "--otlp-endpoint".into(),
        collector.endpoint(),
    ]);
    assert!(agent.wait_for_log(&["exporting alerts as OTLP logs"], TIMEOUT), "{}", agent.stderr());
    collector.stop();
    let (rss_before, fds_before) = (support::rss_kib(agent.pid()), support::fd_count(agent.pid()));
    // Two minutes down, alerts coming all along.
    let mut written = 0;
    for _ in 0..12 {
        actor.must(&format!("open-many {SA_DIR}/token {READS}"));
        written += READS;
        std::thread::sleep(Duration::from_secs(10));
    }
    let (rss_after, fds_after) = (support::rss_kib(agent.pid()), support::fd_count(agent.pid()));
    assert!(agent.wait_for_alerts(TIMEOUT, |a| a.len() as u64 >= written), "{}", agent.stderr());
    assert!(collector.sequences().is_empty(), "nothing arrives while the collector is down");
    collector.restart();
    // The backoff is capped at 30 s: everything arrives within a minute.
    let delivered =
        wait_for(Duration::from_secs(60), || (collector.sequences().len() as u64 >= written).then_some(())).is_some();
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(
        delivered,
        "after the outage the collector has {} of {written}:\n{}",
        collector.sequences().len(),
        stopped.stderr
    );
    assert!(rss_after < rss_before + 16 * 1024, "RSS grew from {rss_before} to {rss_after} KiB while retrying");
    assert!(fds_after <= fds_before + 2, "fds grew from {fds_before} to {fds_after} while retrying");
    drop(actor);
}
