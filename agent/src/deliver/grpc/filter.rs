//! Which alerts a subscriber asked for.

use tokenwatch_proto::v1::{Alert, Severity, SubscribeRequest};

/// Whether `alert` passes the request's filters. Empty lists pass
/// everything; a namespace or pod filter excludes alerts without a pod.
pub fn matches(request: &SubscribeRequest, alert: &Alert) -> bool {
    let k8s = alert.kubernetes.as_ref();
    let rule_ok = request.rules.is_empty() || request.rules.contains(&alert.rule);
    let severity_ok =
        request.min_severity == i32::from(Severity::Unspecified) || alert.severity >= request.min_severity;
    let namespace_ok = request.namespaces.is_empty() || k8s.is_some_and(|k| request.namespaces.contains(&k.namespace));
    let pod_ok = request.pods.is_empty() || k8s.is_some_and(|k| request.pods.contains(&k.pod));
    rule_ok && severity_ok && namespace_ok && pod_ok
}

#[cfg(test)]
mod tests {
    use tokenwatch_proto::v1::KubernetesContext;

    use super::*;

    fn alert(rule: &str, severity: Severity, namespace: &str, pod: &str) -> Alert {
        Alert {
            rule: rule.into(),
            severity: severity.into(),
            kubernetes: Some(KubernetesContext { namespace: namespace.into(), pod: pod.into(), ..Default::default() }),
            ..Alert::default()
        }
    }

    #[test]
    fn each_filter_narrows_and_empty_passes_all() {
        let all = SubscribeRequest::default();
        let read = alert("token-read", Severity::Medium, "shop", "checkout");
        assert!(matches(&all, &read));
        let rules = SubscribeRequest { rules: vec!["apiserver-connect".into()], ..Default::default() };
        assert!(!matches(&rules, &read));
        let severe = SubscribeRequest { min_severity: Severity::High.into(), ..Default::default() };
        assert!(!matches(&severe, &read));
        assert!(matches(&severe, &alert("token-read", Severity::Critical, "shop", "checkout")));
        let namespaces = SubscribeRequest { namespaces: vec!["shop".into()], ..Default::default() };
        assert!(matches(&namespaces, &read));
        assert!(!matches(&namespaces, &alert("token-read", Severity::Medium, "", "")));
        let pods = SubscribeRequest { pods: vec!["cart".into()], ..Default::default() };
        assert!(!matches(&pods, &read));
    }
}
