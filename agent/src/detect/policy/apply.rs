//! The policy's verdict applied to an alert on its way out.

use tokenwatch_proto::v1::Alert;

use super::{Policy, Verdict};

impl Policy {
    /// The alert at the severity the policy gives it, or nothing. What the
    /// node itself did (a refused connect, a killed process, or a dry run's
    /// report of them) is always delivered: a disabled rule or an exception
    /// must not hide an action taken.
    pub fn apply(&self, mut alert: Alert) -> Option<Alert> {
        let enforced = alert.enforcement.is_some();
        match self.judge(&alert) {
            Verdict::Alert { severity } => {
                alert.severity = severity.into();
                Some(alert)
            }
            Verdict::Disabled { .. } | Verdict::Suppressed { .. } if enforced => Some(alert),
            Verdict::Disabled { rule } => {
                tracing::trace!(%rule, "rule disabled by policy");
                None
            }
            Verdict::Suppressed { exception, reason } => {
                tracing::debug!(alert = %alert.id, %exception, %reason, "suppressed by policy");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use tokenwatch_proto::v1::{Enforcement, EnforcementAction, KubernetesContext};

    use super::*;

    /// An exception or a disabled rule drops an alert, but never one that
    /// says the node refused something: the operator must see every action.
    #[test]
    fn what_the_node_did_is_delivered_even_when_the_policy_would_drop_it() {
        let text = "rules:\n  apiserver-connect: { enabled: false }\n\
                    exceptions:\n  - id: shop\n    reason: r\n    namespaces: [shop]\n";
        let policy = Policy::parse(Path::new("p"), text).expect("valid");
        let kubernetes = Some(KubernetesContext { namespace: "shop".into(), ..KubernetesContext::default() });
        let read = Alert { rule: "token-read".into(), kubernetes, ..Alert::default() };
        let connect = Alert { rule: "apiserver-connect".into(), ..read.clone() };
        assert_eq!(policy.apply(read.clone()), None, "excepted");
        assert_eq!(policy.apply(connect.clone()), None, "disabled");
        let killed = Enforcement { action: EnforcementAction::Killed.into(), block_id: "b".into() };
        for alert in [read, connect] {
            let acted = Alert { enforcement: Some(killed.clone()), ..alert };
            assert_eq!(policy.apply(acted.clone()), Some(acted));
        }
    }
}
