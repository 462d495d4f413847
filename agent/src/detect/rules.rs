//! The rules: a stable id each (policy files and SIEM searches name it), a
//! human name, a base severity and the MITRE ATT&CK techniques it evidences.
//! Severity rises for what makes an event more suspicious.

use tokenwatch_proto::v1::{ProcessOrigin, Severity};

/// One detection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Stable id.
    pub id: &'static str,
    /// Human name.
    pub name: &'static str,
    /// Severity before raises and policy.
    pub severity: Severity,
    /// MITRE ATT&CK technique ids.
    pub mitre: &'static [&'static str],
}

/// A process reads a ServiceAccount token: the credential-theft step. Every
/// in-cluster client does it too, hence medium; policy names the expected
/// readers.
pub const TOKEN_READ: Rule = Rule {
    id: "token-read",
    name: "ServiceAccount token read",
    severity: Severity::Medium,
    mitre: &["T1528", "T1552"],
};

/// A process dials the API server: discovery or use of a credential.
pub const API_SERVER_CONNECT: Rule = Rule {
    id: "apiserver-connect",
    name: "Connection to the Kubernetes API server",
    severity: Severity::Low,
    mitre: &["T1613"],
};

/// A token read, then an API-server connect from the same container within
/// the window: the lateral-movement chain, raised once per chain.
pub const TOKEN_THEFT_CHAIN: Rule = Rule {
    id: "token-theft-chain",
    name: "ServiceAccount token read, then used against the API server",
    severity: Severity::High,
    mitre: &["T1528", "T1552", "T1613"],
};

/// A process on the node itself, outside any container, reads a pod's token
/// (harvesting tokens after a node compromise). Kubelet is excepted.
pub const NODE_TOKEN_HARVEST: Rule = Rule {
    id: "node-token-harvest",
    name: "Pod token read from the node, outside any container",
    severity: Severity::High,
    mitre: &["T1528", "T1552"],
};

/// The agent lost matched events (a full ring buffer) or cannot write its
/// delivery log: flooding or filling the node to blind the monitor is
/// itself an attack on defences.
pub const AGENT_DEGRADED: Rule = Rule {
    id: "agent-degraded",
    name: "The agent lost events or cannot store alerts",
    severity: Severity::High,
    mitre: &["T1562"],
};

/// Every rule, for validation of policy files.
pub const ALL: [Rule; 5] = [TOKEN_READ, API_SERVER_CONNECT, TOKEN_THEFT_CHAIN, NODE_TOKEN_HARVEST, AGENT_DEGRADED];

/// Interactive shells, by executable name.
const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "fish"];
/// Multi-call binaries whose applet name is in `comm`, not in the exe.
const MULTI_CALL: &[&str] = &["busybox", "toybox"];
/// Tools that speak to the network or the API by hand.
const NETWORK_TOOLS: &[&str] =
    &["curl", "wget", "nc", "ncat", "netcat", "socat", "telnet", "kubectl", "openssl", "httpie", "http"];

/// The severity after raises, and why it was raised.
pub fn raise(rule: &Rule, origin: ProcessOrigin, exe: &str, comm: &str) -> (Severity, Vec<String>) {
    let mut steps = 0;
    let mut reasons = Vec::new();
    if origin == ProcessOrigin::Exec {
        steps += 1;
        reasons.push("exec'd into the container (kubectl exec, nsenter)".to_owned());
    }
    // comm is recorded in the kernel at the event, so it does not depend on
    // the process still being there; it names busybox's applet too.
    let exe_name = exe.rsplit('/').next().filter(|n| !n.is_empty() && !MULTI_CALL.contains(n));
    let names = [Some(comm), exe_name];
    if let Some(name) = names.iter().flatten().find(|n| SHELLS.contains(n)) {
        steps += 1;
        reasons.push(format!("a shell ({name})"));
    } else if let Some(name) = names.iter().flatten().find(|n| NETWORK_TOOLS.contains(n)) {
        steps += 1;
        reasons.push(format!("a network tool ({name})"));
    }
    (step_up(rule.severity, steps), reasons)
}

fn step_up(severity: Severity, steps: u32) -> Severity {
    let ladder = [Severity::Low, Severity::Medium, Severity::High, Severity::Critical];
    let at = ladder.iter().position(|s| *s == severity).unwrap_or(0);
    let to = usize::try_from(steps).map_or(ladder.len() - 1, |steps| (at + steps).min(ladder.len() - 1));
    ladder[to]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_and_tools_raise_severity_up_to_critical() {
        let (base, reasons) = raise(&TOKEN_READ, ProcessOrigin::Entrypoint, "/app/server", "server");
        assert_eq!((base, reasons.len()), (Severity::Medium, 0));
        let (exec, reasons) = raise(&TOKEN_READ, ProcessOrigin::Exec, "/usr/bin/python3", "python3");
        assert_eq!((exec, reasons.len()), (Severity::High, 1));
        let (both, reasons) = raise(&TOKEN_READ, ProcessOrigin::Exec, "/bin/busybox", "cat");
        assert_eq!(both, Severity::High, "busybox's applet is cat, no shell: {reasons:?}");
        let (both, reasons) = raise(&TOKEN_READ, ProcessOrigin::Exec, "/bin/busybox", "sh");
        assert_eq!((both, reasons[1].as_str()), (Severity::Critical, "a shell (sh)"));
        let (renamed, _) = raise(&TOKEN_READ, ProcessOrigin::Entrypoint, "/usr/bin/curl", "innocent");
        assert_eq!(renamed, Severity::High, "a renamed comm still runs curl");
        let (both, reasons) = raise(&TOKEN_READ, ProcessOrigin::Exec, "", "curl");
        assert_eq!((both, reasons[1].as_str()), (Severity::Critical, "a network tool (curl)"));
        let (capped, _) = raise(&TOKEN_THEFT_CHAIN, ProcessOrigin::Exec, "/bin/bash", "bash");
        assert_eq!(capped, Severity::Critical);
        let (low, _) = raise(&API_SERVER_CONNECT, ProcessOrigin::Host, "/usr/bin/wget", "wget");
        assert_eq!(low, Severity::Medium);
    }

    #[test]
    fn the_policy_knows_every_rule() {
        let ids: Vec<&str> = ALL.iter().map(|r| r.id).collect();
        assert_eq!(ids, crate::detect::policy::RULE_IDS);
    }

    #[test]
    fn ids_are_unique() {
        for (i, rule) in ALL.iter().enumerate() {
            assert!(ALL[i + 1..].iter().all(|other| other.id != rule.id), "{}", rule.id);
        }
    }
}
