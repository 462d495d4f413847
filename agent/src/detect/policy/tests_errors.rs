//! Bad policies are refused with file:line:column, the YAML path, and the
//! exception's id; the shipped default and its examples parse.

use std::path::Path;

use tokenwatch_proto::v1::{ProcessOrigin, Severity};

use super::{tests::argocd_alert, Policy, PolicyError, Verdict, DEFAULT_POLICY_YAML};

/// The whole error message for `text`, which must be refused.
fn error(text: &str) -> String {
    match Policy::parse(Path::new("policy.yaml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

/// A valid exception `a` first, so errors in the second are located below it.
const FIRST: &str = "exceptions:\n  - id: a\n    reason: first\n    namespaces: [x]\n";

#[test]
fn schema_errors_name_file_line_column_and_path() {
    let cases = [
        ("rulez: {}\n", "policy.yaml:1:1: unknown field `rulez`, expected one of `rules`, `exceptions`, `enforcement`, `blocks`"),
        ("rules:\n  token-read: { enabled: true, sev: low }\n", "policy.yaml:2:32: rules.token-read: unknown field `sev`"),
        ("rules:\n  token-read: { severity: urgent }\n", "policy.yaml:2:27: rules.token-read.severity: unknown variant `urgent`, expected one of `low`, `medium`, `high`, `critical`"),
        ("rules:\n  token-read: {}\n  token-reed: {}\n", "policy.yaml:3:3: rules: unknown rule `token-reed`; the rules are token-read, apiserver-connect, token-theft-chain, node-token-harvest"),
        ("rules:\n  token-read: {}\n  token-read: {}\n", "policy.yaml:3:3: rules: rule `token-read` is given twice"),
        ("rules: [token-read]\n", "policy.yaml:1:8: rules: invalid type: sequence, expected a map of rule ids to settings"),
        ("exceptions:\n  id: a\n", "policy.yaml:2:3: exceptions: invalid type: map, expected a list of exceptions"),
        ("rules: {\n", "policy.yaml:2:1: did not find expected node content"),
    ];
    for (text, want) in cases {
        let got = error(text);
        assert!(got.starts_with(want), "{text:?}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn exception_errors_name_the_exception_and_field() {
    let cases = [
        ("  - id: b\n    reason: \"\"\n    namespaces: [x]\n", "policy.yaml:6:13: exceptions[1].reason (exception `b`): must not be empty"),
        ("  - id: b\n    namespaces: [x]\n", "policy.yaml:5:5: exceptions[1] (exception `b`): missing field `reason`"),
        ("  - reason: r\n    namespaces: [x]\n", "policy.yaml:5:5: exceptions[1]: missing field `id`"),
        ("  - id: a\n    reason: r\n    namespaces: [y]\n", "policy.yaml:5:5: exceptions[1] (exception `a`): id `a` is already used by exceptions[0]; ids must be unique"),
        ("  - id: b\n    reason: r\n", "policy.yaml:5:5: exceptions[1] (exception `b`): has no match fields, so it would silence every alert of every rule; give at least one of namespaces, service_accounts, pod_selector, images, binaries, exec"),
        ("  - id: b\n    reason: r\n    rules: [token-read]\n", "policy.yaml:5:5: exceptions[1] (exception `b`): has no match fields, so it would silence every alert of token-read;"),
        ("  - id: b\n    reason: r\n    rules: [token-read, tokenread]\n    exec: true\n", "policy.yaml:7:25: exceptions[1].rules[1] (exception `b`): unknown rule `tokenread`"),
        ("  - id: b\n    reason: r\n    namespace: [x]\n", "policy.yaml:7:5: exceptions[1] (exception `b`): unknown field `namespace`, expected one of `id`, `reason`, `rules`, `namespaces`,"),
        ("  - id: b\n    reason: r\n    namespaces: []\n", "policy.yaml:7:17: exceptions[1].namespaces (exception `b`): must list at least one entry (an empty list would match nothing)"),
        ("  - id: b\n    reason: r\n    namespaces:\n    exec: true\n", "policy.yaml:7:16: exceptions[1].namespaces (exception `b`): must list at least one entry"),
        ("  - id: b\n    reason: r\n    namespaces: argocd\n", "policy.yaml:7:17: exceptions[1].namespaces (exception `b`): invalid type: string \"argocd\", expected a non-empty list"),
        ("  - id: b\n    reason: r\n    service_accounts: [x, \"\"]\n", "policy.yaml:7:27: exceptions[1].service_accounts[1] (exception `b`): must not be empty"),
        ("  - id: b\n    reason: r\n    pod_selector: {}\n", "policy.yaml:7:19: exceptions[1].pod_selector (exception `b`): must name at least one label (an empty selector matches every pod)"),
        ("  - id: b\n    reason: r\n    pod_selector:\n      app: x\n      app: y\n", "policy.yaml:9:7: exceptions[1].pod_selector (exception `b`): label `app` is given twice"),
        ("  - id: b\n    reason: r\n    pod_selector: { \"\": x }\n", "policy.yaml:7:21: exceptions[1].pod_selector (exception `b`): a label name must not be empty"),
        ("  - id: b\n    reason: r\n    pod_selector: [app]\n", "policy.yaml:7:19: exceptions[1].pod_selector (exception `b`): invalid type: sequence, expected a map of label names to values"),
        ("  - id: b\n    reason: r\n    exec: yes\n", "policy.yaml:7:11: exceptions[1].exec (exception `b`): invalid type: string \"yes\", expected a boolean"),
        ("  - id: b\n    reason: r\n    exec:\n", "policy.yaml:7:10: exceptions[1].exec (exception `b`): invalid type: unit value, expected a boolean"),
        ("  - id: b\n    reason: r\n    images: [\" \"]\n", "policy.yaml:7:14: exceptions[1].images[0] (exception `b`): must not be empty"),
        ("  - { id: 7, reason: r, binaries: [] }\n", "policy.yaml:5:35: exceptions[1].binaries (exception `7`): must list at least one entry"),
        ("  - id: b\n    reason: r\n    images: [\"ghcr.io/**\"]\n", "policy.yaml:7:14: exceptions[1].images[0] (exception `b`): `ghcr.io/**`: `**` is not supported"),
        ("  - id: b\n    reason: r\n    binaries: [\"/bin/[ab\"]\n", "policy.yaml:7:16: exceptions[1].binaries[0] (exception `b`): `/bin/[ab` is not a valid pattern: unclosed character class"),
    ];
    for (second, want) in cases {
        let text = format!("{FIRST}{second}");
        let got = error(&text);
        assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
    }
}

#[test]
fn errors_are_structured() {
    let Err(PolicyError::Invalid { path, line, column, message }) =
        Policy::parse(Path::new("/etc/tokenwatch/policy.yaml"), "exceptions:\n  - id: \"\"\n")
    else {
        panic!("accepted an empty id");
    };
    assert_eq!((path.to_str(), line, column), (Some("/etc/tokenwatch/policy.yaml"), 2, 9));
    assert_eq!(message, "exceptions[0].id (exception ``): must not be empty");
}

#[test]
fn load_reads_the_file_and_names_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("policy.yaml");
    std::fs::write(&path, FIRST).expect("write policy");
    let policy = Policy::load(&path).expect("valid policy");
    assert_eq!(policy.suppression_counts(), vec![("a".to_owned(), "first".to_owned(), 0)]);
    std::fs::write(&path, "exceptions: 3\n").expect("write policy");
    let error = Policy::load(&path).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.starts_with(&format!("{}:1:13: exceptions: invalid type", path.display())), "{error}");
    let missing = dir.path().join("missing.yaml");
    let error = Policy::load(&missing).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.starts_with(&format!("cannot read policy file {}: ", missing.display())), "{error}");
}

#[test]
fn default_policy_parses_and_alerts_on_everything() {
    let policy = Policy::parse(Path::new("default.yaml"), DEFAULT_POLICY_YAML).expect("the default policy parses");
    assert!(policy.suppression_counts().is_empty(), "the default excepts nobody");
    for rule in super::RULE_IDS {
        assert!(policy.rule_enabled(rule) && policy.rule_severity(rule).is_none(), "{rule}");
        let mut alert = argocd_alert();
        alert.rule = (*rule).to_owned();
        assert_eq!(policy.judge(&alert), Verdict::Alert { severity: Severity::Medium }, "{rule}");
    }
    assert!(Policy::default_policy().suppression_counts().is_empty());
}

/// The commented-out examples in the default policy are valid once
/// uncommented, and the Argo CD one is as narrow as it claims.
#[test]
fn default_policy_examples_parse_when_uncommented() {
    let uncommented: String = DEFAULT_POLICY_YAML
        .lines()
        .map(|line| match line.strip_prefix("  # ") {
            Some(rest) if rest.starts_with("- ") || rest.starts_with("  ") => format!("  {rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let policy = Policy::parse(Path::new("examples.yaml"), &uncommented).unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<String> = policy.suppression_counts().into_iter().map(|(id, _, _)| id).collect();
    let want = [
        "shop-inventory-operator",
        "coredns",
        "kube-proxy",
        "metrics-server",
        "prometheus",
        "cert-manager",
        "argocd",
        "flux",
    ];
    assert_eq!(ids, want);
    assert!(matches!(policy.judge(&argocd_alert()), Verdict::Suppressed { exception, .. } if exception == "argocd"));
    let mut exec = argocd_alert();
    exec.process.get_or_insert_with(Default::default).origin = ProcessOrigin::Exec.into();
    assert!(matches!(policy.judge(&exec), Verdict::Alert { .. }), "kubectl exec into Argo CD still alerts");
}
