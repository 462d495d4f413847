//! Alerts about the agent itself (rule `agent-degraded`): events the kernel
//! had to drop, or a delivery log that cannot be written. They travel like
//! any other alert, so the SIEM learns that it may be blind, when, and
//! where, without reading the agent's logs.

use std::{collections::HashMap, time::SystemTime};

use tokenwatch_proto::v1::{alert::Evidence, AgentHealth, Alert};

use super::rules::AGENT_DEGRADED;

/// What went wrong, as the alert's `problem` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Matched events dropped in the kernel over `[since, until]`, by hook.
    EventsLost {
        /// Losses per hook name, non-zero only.
        by_hook: Vec<(&'static str, u64)>,
        /// Start of the window.
        since: SystemTime,
        /// End of the window.
        until: SystemTime,
    },
    /// The delivery log refused an append.
    DeliveryLogFailing {
        /// The error, as the spool reported it.
        error: String,
    },
}

/// Numbers health alerts for this run, distinct from the judge's ids.
#[derive(Debug)]
pub struct HealthAlerts {
    node: String,
    run_id: String,
    sequence: u64,
}

impl HealthAlerts {
    /// Alerts for `node`; `run_id` makes their ids unique.
    pub fn new(node: String, run_id: String) -> Self {
        HealthAlerts { node, run_id, sequence: 0 }
    }

    /// The alert for `problem`, dated now.
    pub fn alert(&mut self, problem: &Problem) -> Alert {
        self.sequence += 1;
        let now = timestamp(SystemTime::now());
        let (summary, health) = match problem {
            Problem::EventsLost { by_hook, since, until } => {
                let total: u64 = by_hook.iter().map(|(_, n)| n).sum();
                let hooks: Vec<String> = by_hook.iter().map(|(hook, n)| format!("{hook}: {n}")).collect();
                let summary = format!(
                    "{total} matched events lost in the kernel (ring buffer full; {}): token reads or API-server \
                     connects in that window went unseen",
                    hooks.join(", ")
                );
                let health = AgentHealth {
                    problem: "events-lost".to_owned(),
                    events_lost: total,
                    events_lost_by_hook: by_hook
                        .iter()
                        .map(|(hook, n)| ((*hook).to_owned(), *n))
                        .collect::<HashMap<_, _>>(),
                    window_start: Some(timestamp(*since)),
                    window_end: Some(timestamp(*until)),
                    error: String::new(),
                };
                (summary, health)
            }
            Problem::DeliveryLogFailing { error } => (
                format!(
                    "the delivery log cannot be written ({error}): alerts go to stdout only; subscribers and the \
                     collector miss them until it recovers"
                ),
                AgentHealth { problem: "delivery-log-failing".to_owned(), error: error.clone(), ..Default::default() },
            ),
        };
        Alert {
            id: format!("{}-health-{}", self.run_id, self.sequence),
            time: Some(now),
            node: self.node.clone(),
            severity: AGENT_DEGRADED.severity.into(),
            rule: AGENT_DEGRADED.id.to_owned(),
            rule_name: AGENT_DEGRADED.name.to_owned(),
            mitre_techniques: AGENT_DEGRADED.mitre.iter().map(|t| (*t).to_owned()).collect(),
            summary,
            evidence: Some(Evidence::AgentHealth(health)),
            count: 1,
            first_seen: Some(now),
            last_seen: Some(now),
            ..Alert::default()
        }
    }
}

/// A wall-clock time as a protobuf timestamp.
fn timestamp(time: SystemTime) -> pbjson_types::Timestamp {
    let since_epoch = time.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp {
        seconds: i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since_epoch.subsec_nanos()).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loss_alert_says_how_many_which_hooks_and_when() {
        let mut alerts = HealthAlerts::new("n1".into(), "run".into());
        let since = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100);
        let until = since + std::time::Duration::from_secs(5);
        let alert = alerts.alert(&Problem::EventsLost { by_hook: vec![("openat", 7), ("connect", 2)], since, until });
        assert_eq!((alert.rule.as_str(), alert.id.as_str()), ("agent-degraded", "run-health-1"));
        assert!(alert.summary.starts_with("9 matched events lost"), "{}", alert.summary);
        let Some(Evidence::AgentHealth(health)) = alert.evidence else { panic!("health evidence") };
        assert_eq!((health.problem.as_str(), health.events_lost), ("events-lost", 9));
        assert_eq!(health.events_lost_by_hook.get("openat"), Some(&7));
        assert_eq!(health.window_start.map(|t| t.seconds), Some(100));
        assert_eq!(health.window_end.map(|t| t.seconds), Some(105));
        let second = alerts.alert(&Problem::DeliveryLogFailing { error: "No space left on device".into() });
        assert_eq!(second.id, "run-health-2");
        assert!(second.summary.contains("No space left on device"), "{}", second.summary);
    }
}
