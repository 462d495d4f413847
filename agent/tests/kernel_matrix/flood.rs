//! A flood the ring buffer cannot hold: every matched event is either sent
//! or counted as dropped, the drops are an `agent-degraded` alert while the
//! agent runs, and the `kernel counters` line at shutdown says the same.
//! Nothing is lost silently.

use tokenwatch_proto::v1::{alert::Evidence, Alert};

use super::{
    pod::{describe, stop, token, KubePod},
    support, ALERT_TIMEOUT,
};

/// Reads in the burst; a 4 KiB ring buffer holds two events.
const READS: u64 = 2000;

/// A counter's value from the agent's `kernel counters` log line.
fn counter(stderr: &str, name: &str) -> u64 {
    let line = stderr.lines().rfind(|l| l.contains("kernel counters")).expect("a kernel counters line");
    let needle = format!(" {name}=");
    let start = line.find(&needle).unwrap_or_else(|| panic!("no {name} in `{line}`")) + needle.len();
    line[start..].chars().take_while(char::is_ascii_digit).collect::<String>().parse().expect("a number")
}

/// `tokenwatch_kernel_events_total` at `stage`, summed over the hooks.
fn kernel_events(metrics: &str, stage: &str) -> u64 {
    let label = format!("stage=\"{stage}\"}}");
    metrics
        .lines()
        .filter(|line| line.starts_with("tokenwatch_kernel_events_total{") && line.contains(&label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Events the `agent-degraded` alerts report lost, by hook, summed.
fn reported_lost(alerts: &[Alert]) -> u64 {
    alerts
        .iter()
        .filter(|a| a.rule == "agent-degraded")
        .map(|alert| match &alert.evidence {
            Some(Evidence::AgentHealth(health)) => {
                assert_eq!(health.problem, "events-lost", "{alert:?}");
                assert_eq!(health.events_lost, health.events_lost_by_hook.values().sum::<u64>(), "{alert:?}");
                assert!(health.events_lost_by_hook.keys().all(|hook| hook.starts_with("open")), "{alert:?}");
                health.events_lost
            }
            _ => panic!("agent-degraded carries health evidence: {alert:?}"),
        })
        .sum()
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn flood_drops_are_counted_and_reported() {
    let _serial = support::serialise();
    let mut pod = KubePod::start();
    let agent = pod.agent(&["--ring-buffer-kib", "4", "--metrics-listen", "127.0.0.1:0"]);
    assert!(agent.wait_for_log(&["metrics and health endpoints listening"], ALERT_TIMEOUT), "{}", agent.stderr());
    let metrics_addr = support::metrics_addr(&agent.stderr()).expect("the metrics address");
    pod.actor.must(&format!("open-many {} {READS}", token()));

    // Done when the kernel has matched every read, some were dropped, the
    // loss alerts account for every drop, and every event sent was
    // delivered: all observable while the agent runs.
    let mut last = (0, 0, 0, 0, 0);
    let settled = support::wait_for(ALERT_TIMEOUT, || {
        let metrics = support::http_get(&metrics_addr, "/metrics").1;
        let alerts = agent.alerts();
        let delivered = pod.alerts(&alerts).iter().filter(|a| a.rule == "token-read").count() as u64;
        let now = (
            kernel_events(&metrics, "matched"),
            kernel_events(&metrics, "sent"),
            kernel_events(&metrics, "dropped"),
            reported_lost(&alerts),
            delivered,
        );
        last = now;
        let (matched, sent, dropped, lost, delivered) = now;
        (matched == READS && dropped > 0 && lost == dropped && delivered == sent).then_some(())
    });
    let stopped = stop(agent);
    let (matched, sent, dropped, lost, delivered) = last;
    assert!(
        settled.is_some(),
        "matched {matched} of {READS}, sent {sent}, dropped {dropped}, reported lost {lost}, delivered {delivered}:\n\
         {}\nlog:\n{}",
        describe(&pod.alerts(&stopped.alerts)),
        stopped.stderr
    );
    assert_eq!(sent + dropped, matched, "each match is sent or counted as dropped");

    // The shutdown line agrees, and nothing more went missing since.
    let (matched, sent, dropped) = (
        counter(&stopped.stderr, "opens_matched"),
        counter(&stopped.stderr, "events_sent"),
        counter(&stopped.stderr, "events_dropped"),
    );
    assert_eq!(matched, READS, "every read matched in the kernel:\n{}", stopped.stderr);
    assert_eq!(sent + dropped, matched, "{}", stopped.stderr);
    assert_eq!(reported_lost(&stopped.alerts), dropped, "the loss alerts account for every drop");
    let delivered = pod.alerts(&stopped.alerts).iter().filter(|a| a.rule == "token-read").count() as u64;
    assert_eq!(delivered, sent, "everything sent reached stdout");
    for alert in pod.alerts(&stopped.alerts) {
        pod.assert_placed(alert);
    }
}
