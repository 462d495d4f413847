//! The detect stage: turns a kernel event and what the metadata stage
//! learnt into alerts: which rule fired, how severe, and the chain.

pub mod chain;
pub mod context;
pub mod dedup;
pub mod describe;
pub mod evidence;
pub mod health;
pub mod origin;
pub mod policy;
pub mod rules;

use std::time::Instant;

use tokenwatch_common::EnforceAction;
use tokenwatch_proto::v1::{Alert, Enforcement, EnforcementAction, ProcessOrigin};

use self::{chain::ChainTracker, policy::BlockNames, rules::Rule};
use crate::{
    kernel::{clock::BootClock, Enforced, KernelEvent},
    metadata::enrich::Enrichment,
};

/// Builds alerts, numbering them for this run, and tracks chains.
#[derive(Debug)]
pub struct Judge {
    node: String,
    run_id: String,
    clock: BootClock,
    sequence: u64,
    chains: ChainTracker,
    blocks: BlockNames,
}

impl Judge {
    /// A judge for alerts from `node`; `run_id` makes alert ids unique;
    /// `chain_window` is how long a token read waits for its connect.
    pub fn new(node: String, run_id: String, clock: BootClock, chain_window: std::time::Duration) -> Self {
        Judge {
            node,
            run_id,
            clock,
            sequence: 0,
            chains: ChainTracker::new(chain_window),
            blocks: BlockNames::default(),
        }
    }

    /// Names the policy's block entries in alerts by the enforcer's numbers.
    pub fn naming_blocks(mut self, blocks: BlockNames) -> Self {
        self.blocks = blocks;
        self
    }

    /// The alerts for one event: one, or two when a connect completes a
    /// theft-then-use chain.
    pub fn judge(&mut self, event: &KernelEvent, enrichment: &Enrichment) -> Vec<Alert> {
        let now = Instant::now();
        let container = container_key(event, enrichment);
        match event {
            KernelEvent::Open(open) => {
                // A write-only open cannot read the token: kubelet's atomic
                // writer creates every rotated token that way. Unless the
                // kernel acted on it (it sees openat2's flags only through
                // `struct open_how`, so it may kill such an open): an action
                // taken is always reported.
                let write_only = open.flags & libc::O_ACCMODE as u64 == libc::O_WRONLY as u64;
                let acted = open.enforced.action != EnforceAction::None;
                if (write_only || is_kubelet(enrichment)) && !acted {
                    return Vec::new();
                }
                let rule = if is_node_harvest(enrichment) { rules::NODE_TOKEN_HARVEST } else { rules::TOKEN_READ };
                let evidence = evidence::token_read(open, enrichment);
                let summary = evidence::summary(rule.id, Some(open), None, enrichment);
                let alert = self.alert(&rule, event, enrichment, summary, evidence);
                self.chains.read(&container, &alert.id, now);
                vec![alert]
            }
            KernelEvent::Connect(connect) => {
                let evidence = evidence::api_server_connect(connect);
                let summary = evidence::summary(rules::API_SERVER_CONNECT.id, None, Some(connect), enrichment);
                let alert = self.alert(&rules::API_SERVER_CONNECT, event, enrichment, summary, evidence.clone());
                let Some(read_id) = self.chains.connect(&container, now) else { return vec![alert] };
                let summary = evidence::summary(rules::TOKEN_THEFT_CHAIN.id, None, Some(connect), enrichment);
                let mut chain = self.alert(&rules::TOKEN_THEFT_CHAIN, event, enrichment, summary, evidence);
                chain.related_alert_ids = vec![read_id, alert.id.clone()];
                vec![alert, chain]
            }
        }
    }

    fn alert(
        &mut self,
        rule: &Rule,
        event: &KernelEvent,
        enrichment: &Enrichment,
        summary: String,
        evidence: tokenwatch_proto::v1::alert::Evidence,
    ) -> Alert {
        self.sequence += 1;
        let identity = event.identity();
        let (seconds, nanos) = self.clock.wall(identity.boot_time_ns);
        let time = Some(pbjson_types::Timestamp { seconds, nanos });
        let process = context::process(identity, &enrichment.process, enrichment.container.as_ref(), self.clock);
        let origin = ProcessOrigin::try_from(process.origin).unwrap_or(ProcessOrigin::Unspecified);
        let (severity, severity_reasons) = rules::raise(rule, origin, &process.exe, &process.comm);
        let enforcement = enforcement(event.enforced(), &self.blocks);
        let summary = match &enforcement {
            Some(done) => format!("{summary}; {}", describe_enforcement(done)),
            None => summary,
        };
        Alert {
            id: format!("{}-{}", self.run_id, self.sequence),
            time,
            node: self.node.clone(),
            severity: severity.into(),
            rule: rule.id.to_owned(),
            rule_name: rule.name.to_owned(),
            mitre_techniques: rule.mitre.iter().map(|t| (*t).to_owned()).collect(),
            summary,
            kubernetes: Some(context::kubernetes(
                &enrichment.cgroup,
                enrichment.container.as_ref(),
                enrichment.pod.as_ref(),
            )),
            container: Some(context::container(identity, &enrichment.cgroup)),
            process: Some(process),
            evidence: Some(evidence),
            missing: enrichment.missing.clone(),
            count: 1,
            first_seen: time,
            last_seen: time,
            severity_reasons,
            related_alert_ids: Vec::new(),
            // Set by the delivery log when the alert is written to it.
            sequence: 0,
            boot_id: String::new(),
            enforcement,
            // Filled by the deduplicator when it folds repeats in.
            folded_processes: Vec::new(),
            folded_processes_more: 0,
        }
    }
}

/// The alert's account of what the kernel did, naming the block entry.
fn enforcement(enforced: Enforced, blocks: &BlockNames) -> Option<Enforcement> {
    let action = match enforced.action {
        EnforceAction::None => return None,
        EnforceAction::Blocked => EnforcementAction::Blocked,
        EnforceAction::WouldBlock => EnforcementAction::WouldBlock,
        EnforceAction::Killed => EnforcementAction::Killed,
        EnforceAction::WouldKill => EnforcementAction::WouldKill,
        EnforceAction::KillFailed => EnforcementAction::KillFailed,
    };
    let block_id = blocks.id(enforced.block).unwrap_or_else(|| format!("#{}", enforced.block));
    Some(Enforcement { action: action.into(), block_id })
}

/// One clause for the summary.
fn describe_enforcement(done: &Enforcement) -> String {
    let what = match EnforcementAction::try_from(done.action).unwrap_or_default() {
        EnforcementAction::Blocked => "refused (EPERM)",
        EnforcementAction::WouldBlock => "would have been refused (dry run)",
        EnforcementAction::Killed => "process killed before it could read",
        EnforcementAction::WouldKill => "process would have been killed (dry run)",
        EnforcementAction::KillFailed => "process NOT killed: the kernel refused the signal (it may have read)",
        EnforcementAction::Unspecified => "nothing done",
    };
    format!("{what} by block `{}`", done.block_id)
}

/// The container an event came from: its id, else its cgroup (a process in
/// a cgroup of its own, as outside Kubernetes).
fn container_key(event: &KernelEvent, enrichment: &Enrichment) -> String {
    enrichment.cgroup.container_id.clone().unwrap_or_else(|| format!("cgroup:{}", event.identity().cgroup_id))
}

/// A process outside any container reading a pod's token.
fn is_node_harvest(enrichment: &Enrichment) -> bool {
    let owned_by_pod = enrichment.watched.as_ref().is_some_and(|w| w.pod_uid.is_some());
    owned_by_pod && enrichment.cgroup.container_id.is_none()
}

/// kubelet on the node writes and refreshes every token: not an event.
fn is_kubelet(enrichment: &Enrichment) -> bool {
    enrichment.cgroup.container_id.is_none() && enrichment.process.exe.rsplit('/').next() == Some("kubelet")
}

#[cfg(test)]
mod tests {
    use tokenwatch_common::OpenSyscall;

    use super::*;
    use crate::kernel::{Identity, OpenRecord};

    fn write_only_open(enforced: Enforced) -> KernelEvent {
        KernelEvent::Open(OpenRecord {
            identity: Identity {
                boot_time_ns: 0,
                pid: 7,
                tid: 7,
                uid: 0,
                gid: 0,
                cgroup_id: 1,
                process_start_ns: 0,
                exec_id: 0,
                comm: "w".into(),
                cgroup_names: Default::default(),
                ns_pid: 7,
                ns_level: 1,
                ancestors: Vec::new(),
                executable: Default::default(),
            },
            syscall: OpenSyscall::Openat2,
            dirfd: -100,
            flags: libc::O_WRONLY as u64,
            fd: 3,
            dev: 1,
            ino: 2,
            requested_path: "token".into(),
            resolved_path: "/token".into(),
            resolved_path_truncated: false,
            enforced,
        })
    }

    /// A write-only open is no read, unless the kernel killed for it: then
    /// the alert says so, with the block entry's id.
    #[test]
    fn a_write_only_open_alerts_only_when_the_kernel_acted_on_it() {
        let names = BlockNames::default();
        let block = names.number("no-reads");
        let mut judge = Judge::new("n".into(), "run".into(), BootClock::measure(), std::time::Duration::from_secs(60))
            .naming_blocks(names);
        let enrichment = Enrichment::default();
        assert!(judge.judge(&write_only_open(Enforced::default()), &enrichment).is_empty());
        let killed = Enforced { action: EnforceAction::Killed, block };
        let alerts = judge.judge(&write_only_open(killed), &enrichment);
        let done = alerts.first().and_then(|a| a.enforcement.clone()).expect("an alert saying what was done");
        assert_eq!((done.action, done.block_id.as_str()), (EnforcementAction::Killed as i32, "no-reads"));
        assert!(alerts[0].summary.ends_with("process killed before it could read by block `no-reads`"));
        // The kernel refused the signal: the alert says the process lives.
        let failed = Enforced { action: EnforceAction::KillFailed, block };
        let alerts = judge.judge(&write_only_open(failed), &enrichment);
        let done = alerts.first().and_then(|a| a.enforcement.clone()).expect("an alert saying what failed");
        assert_eq!(done.action, EnforcementAction::KillFailed as i32);
        assert!(alerts[0].summary.contains("process NOT killed"), "{}", alerts[0].summary);
    }
}
