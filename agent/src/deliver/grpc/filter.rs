//! Which alerts a subscriber asked for, and whether it asked sensibly.

use tokenwatch_proto::v1::{Alert, Severity, SubscribeRequest};

/// Entries a filter list may hold: a real subscriber names a handful; a
/// request with more is a mistake or an attack on the feeder's CPU.
pub const MAX_FILTER_ENTRIES: usize = 256;

/// Refuses a request whose filters could never match as meant: an unknown
/// rule id or severity, a namespace or pod name Kubernetes would not
/// accept, or an absurdly long list. The message names the field and the
/// value, so the client's author can fix it.
pub fn validate(request: &SubscribeRequest) -> Result<(), String> {
    if Severity::try_from(request.min_severity).is_err() {
        return Err(format!("min_severity: {} is not a Severity", request.min_severity));
    }
    for (field, values) in [("rules", &request.rules), ("namespaces", &request.namespaces), ("pods", &request.pods)] {
        if values.len() > MAX_FILTER_ENTRIES {
            return Err(format!("{field}: {} entries, at most {MAX_FILTER_ENTRIES}", values.len()));
        }
    }
    let known: Vec<&str> = crate::detect::rules::ALL.iter().map(|rule| rule.id).collect();
    if let Some(rule) = request.rules.iter().find(|rule| !known.contains(&rule.as_str())) {
        return Err(format!("rules: `{}` is not a rule id (known: {})", printable(rule), known.join(", ")));
    }
    if let Some(namespace) = request.namespaces.iter().find(|n| !is_dns_name(n, 63, false)) {
        return Err(format!("namespaces: `{}` is not a namespace name (RFC 1123 label)", printable(namespace)));
    }
    if let Some(pod) = request.pods.iter().find(|p| !is_dns_name(p, 253, true)) {
        return Err(format!("pods: `{}` is not a pod name (RFC 1123 subdomain)", printable(pod)));
    }
    Ok(())
}

/// Lowercase alphanumerics and `-` (and `.` when `dots`), starting and
/// ending alphanumeric, at most `max` long.
fn is_dns_name(name: &str, max: usize, dots: bool) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= max
        && name.chars().all(ok)
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A value as it may be echoed in an error: at most 64 characters, control
/// characters escaped.
fn printable(value: &str) -> String {
    value.chars().take(64).flat_map(char::escape_default).collect()
}

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

    #[test]
    fn bad_filters_are_refused_naming_the_field_and_value() {
        let ok = SubscribeRequest {
            rules: vec!["token-read".into()],
            namespaces: vec!["kube-system".into()],
            pods: vec!["web-7d4b9.x".into()],
            min_severity: Severity::High.into(),
            ..Default::default()
        };
        assert_eq!(validate(&ok), Ok(()));
        let cases = [
            (SubscribeRequest { min_severity: 99, ..ok.clone() }, "min_severity: 99"),
            (
                SubscribeRequest { rules: vec!["token-reed".into()], ..ok.clone() },
                "rules: `token-reed` is not a rule id",
            ),
            (SubscribeRequest { namespaces: vec!["Kube_System".into()], ..ok.clone() }, "namespaces: `Kube_System`"),
            (SubscribeRequest { pods: vec!["-x".into()], ..ok.clone() }, "pods: `-x`"),
            (SubscribeRequest { pods: vec!["a\n".into()], ..ok.clone() }, "pods: `a\\n`"),
            (SubscribeRequest { pods: vec!["p".into(); 257], ..ok.clone() }, "pods: 257 entries, at most 256"),
        ];
        for (request, expected) in cases {
            let error = validate(&request).expect_err(expected);
            assert!(error.starts_with(expected), "{error} (expected {expected})");
        }
    }

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
