//! Matching and judging: each matcher alone matches exactly what it names,
//! fields combine with AND, rule settings and counts.

use std::path::Path;

use tokenwatch_proto::v1::{Alert, ContainerContext, KubernetesContext, ProcessContext, ProcessOrigin, Severity};

use super::{Glob, Policy, Verdict};

/// An Argo CD controller's token read, entrypoint process.
pub(super) fn argocd_alert() -> Alert {
    Alert {
        id: "run-1".to_owned(),
        rule: "token-read".to_owned(),
        severity: Severity::Medium.into(),
        kubernetes: Some(KubernetesContext {
            namespace: "argocd".to_owned(),
            pod: "argocd-application-controller-0".to_owned(),
            service_account: "argocd-application-controller".to_owned(),
            image: "quay.io/argoproj/argocd:v2.11.3".to_owned(),
            labels: [("app.kubernetes.io/name", "argocd-application-controller"), ("tier", "")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..Default::default()
        }),
        container: Some(ContainerContext { id: "c0ffee".to_owned(), cgroup_id: 42, ..Default::default() }),
        process: Some(ProcessContext {
            comm: "argocd-applicat".to_owned(),
            exe: "/usr/local/bin/argocd".to_owned(),
            origin: ProcessOrigin::Entrypoint.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn policy(exception_fields: &str) -> Policy {
    let text = format!("exceptions:\n  - id: x\n    reason: test\n{exception_fields}");
    Policy::parse(Path::new("p.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn suppressed(policy: &Policy, alert: &Alert) -> bool {
    matches!(policy.judge(alert), Verdict::Suppressed { .. })
}

/// A named change to the base alert.
type Change = (&'static str, fn(&mut Alert));

/// `fields` alone suppresses the base alert, and no longer does once any
/// one of `changes` is applied to it.
fn matches_only(fields: &str, changes: &[Change]) {
    let policy = policy(fields);
    assert!(suppressed(&policy, &argocd_alert()), "{fields} should match the base alert");
    for (what, change) in changes {
        let mut alert = argocd_alert();
        change(&mut alert);
        assert!(!suppressed(&policy, &alert), "{fields} should not match {what}");
    }
}

fn kube(alert: &mut Alert) -> &mut KubernetesContext {
    alert.kubernetes.get_or_insert_with(Default::default)
}

fn process(alert: &mut Alert) -> &mut ProcessContext {
    alert.process.get_or_insert_with(Default::default)
}

#[test]
fn namespace_matches_exactly() {
    matches_only(
        "    namespaces: [other, argocd]\n",
        &[
            ("another namespace", |a| kube(a).namespace = "argocd-evil".to_owned()),
            ("a prefix", |a| kube(a).namespace = "argo".to_owned()),
            ("an unknown namespace", |a| kube(a).namespace.clear()),
            ("no kubernetes context", |a| a.kubernetes = None),
        ],
    );
}

#[test]
fn service_account_matches_exactly() {
    matches_only(
        "    service_accounts: [argocd-application-controller]\n",
        &[
            ("another SA", |a| kube(a).service_account = "default".to_owned()),
            ("an unknown SA", |a| kube(a).service_account.clear()),
        ],
    );
}

#[test]
fn selector_needs_every_pair() {
    matches_only(
        "    pod_selector: { app.kubernetes.io/name: argocd-application-controller, tier: \"\" }\n",
        &[
            ("another value", |a| {
                kube(a).labels.insert("app.kubernetes.io/name".to_owned(), "evil".to_owned());
            }),
            ("a missing label", |a| {
                kube(a).labels.remove("tier");
            }),
            ("no labels", |a| kube(a).labels.clear()),
        ],
    );
}

#[test]
fn image_glob_matches_whole_image() {
    matches_only(
        "    images: [\"quay.io/argoproj/argocd:v2.*\"]\n",
        &[
            ("another tag", |a| kube(a).image = "quay.io/argoproj/argocd:v3.0.0".to_owned()),
            ("another repository", |a| kube(a).image = "quay.io/evil/argocd:v2.1".to_owned()),
            ("a suffix", |a| kube(a).image = "quay.io/argoproj/argocd:v2.1/x".to_owned()),
            ("an unknown image", |a| kube(a).image.clear()),
        ],
    );
}

#[test]
fn binary_glob_matches_exe_only() {
    matches_only(
        "    binaries: [\"/usr/local/bin/argo?d\"]\n",
        &[
            ("another binary", |a| process(a).exe = "/bin/sh".to_owned()),
            ("a binary in a subdirectory", |a| process(a).exe = "/usr/local/bin/argocd/sh".to_owned()),
            ("an exited process (comm is not used)", |a| process(a).exe.clear()),
            ("no process", |a| a.process = None),
        ],
    );
}

#[test]
fn exec_true_and_false_split_origins() {
    let exec_true = policy("    exec: true\n");
    let exec_false = policy("    exec: false\n");
    for (origin, want_true, want_false) in [
        (ProcessOrigin::Exec, true, false),
        (ProcessOrigin::Entrypoint, false, true),
        (ProcessOrigin::Host, false, true),
        (ProcessOrigin::Unspecified, false, false),
    ] {
        let mut alert = argocd_alert();
        process(&mut alert).origin = origin.into();
        assert_eq!(suppressed(&exec_true, &alert), want_true, "exec: true, {origin:?}");
        assert_eq!(suppressed(&exec_false, &alert), want_false, "exec: false, {origin:?}");
    }
}

#[test]
fn fields_combine_with_and() {
    matches_only(
        "    namespaces: [argocd]\n    service_accounts: [argocd-application-controller]\n    \
         binaries: [/usr/local/bin/argocd]\n    exec: false\n",
        &[
            ("the right SA in another namespace", |a| kube(a).namespace = "default".to_owned()),
            ("another SA in the namespace", |a| kube(a).service_account = "default".to_owned()),
            ("a shell in the pod", |a| process(a).exe = "/bin/sh".to_owned()),
            ("kubectl exec of the same binary", |a| process(a).origin = ProcessOrigin::Exec.into()),
        ],
    );
}

#[test]
fn rules_list_restricts_the_exception() {
    let policy = policy("    rules: [apiserver-connect]\n    namespaces: [argocd]\n");
    assert!(!suppressed(&policy, &argocd_alert()));
    let mut connect = argocd_alert();
    connect.rule = "apiserver-connect".to_owned();
    assert!(suppressed(&policy, &connect));
}

#[test]
fn glob_semantics() {
    let cases = [
        ("*", "abc", true),
        ("*", "a/b", false),
        ("*/*", "a/b", true),
        ("a*c", "ac", true),
        ("a*c", "abbbc", true),
        ("a*c", "abcd", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("a?c", "a/c", false),
        ("*.*.*", "a.b.c", true),
        ("*a*b", "xaab", true),
        ("x", "", false),
        ("*", "", false),
        ("ünï*", "ünïcode", true),
        // globset's classes, alternations and escapes.
        ("/usr/bin/python3.[0-9]", "/usr/bin/python3.9", true),
        ("/usr/bin/python3.[0-9]", "/usr/bin/python3.x", false),
        ("/usr/bin/[!k]*", "/usr/bin/kubectl", false),
        ("/usr/bin/[!k]*", "/usr/bin/curl", true),
        ("/usr/bin/{curl,wget}", "/usr/bin/wget", true),
        ("/usr/bin/{curl,wget}", "/usr/bin/kubectl", false),
        ("/app/\\*", "/app/*", true),
        ("/app/\\*", "/app/x", false),
        ("{a,b}*", "b/c", false),
    ];
    for (pattern, text, want) in cases {
        let glob = Glob::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        assert_eq!(glob.matches(text), want, "{pattern} on {text:?}");
    }
}

#[test]
fn globs_that_would_cross_a_directory_are_refused() {
    for (pattern, why) in [
        ("/usr/**/kubectl", "`**` is not supported"),
        ("**", "`**` is not supported"),
        ("/usr/{bin,local/bin}/kubectl", "may not span `/`"),
        ("/usr/[a/b]in", "may not span `/`"),
        ("/usr/bin/[a-", "is not a valid pattern"),
    ] {
        let error = Glob::new(pattern).expect_err(pattern);
        assert!(error.contains(why), "{pattern}: {error}");
    }
    assert!(Glob::is_literal("/usr/bin/kubectl"));
    assert!(!Glob::is_literal("/usr/bin/kube\\ctl"), "an escape is read by the glob, not as written");
}

#[test]
fn disabled_rule_wins_and_counts_nothing() {
    let text =
        "rules:\n  token-read: { enabled: false }\nexceptions:\n  - id: x\n    reason: r\n    namespaces: [argocd]\n";
    let policy = Policy::parse(Path::new("p.yaml"), text).expect("valid policy");
    assert_eq!(policy.judge(&argocd_alert()), Verdict::Disabled { rule: "token-read".to_owned() });
    assert_eq!(policy.suppression_counts(), vec![("x".to_owned(), "r".to_owned(), 0)]);
    assert!(!policy.rule_enabled("token-read") && policy.rule_enabled("apiserver-connect"));
}

#[test]
fn severity_override_replaces_base_and_keeps_raises() {
    let text = "rules:\n  token-read: { severity: low }\n  apiserver-connect: { enabled: true }\n";
    let policy = Policy::parse(Path::new("p.yaml"), text).expect("valid policy");
    assert_eq!(policy.judge(&argocd_alert()), Verdict::Alert { severity: Severity::Low });
    let mut raised = argocd_alert();
    raised.severity = Severity::Critical.into();
    raised.severity_reasons = vec!["exec'd".to_owned(), "a network tool (curl)".to_owned()];
    assert_eq!(policy.judge(&raised), Verdict::Alert { severity: Severity::High });
    raised.severity_reasons.extend(["x".to_owned(), "y".to_owned()]);
    assert_eq!(policy.judge(&raised), Verdict::Alert { severity: Severity::Critical });
    let mut connect = argocd_alert();
    connect.rule = "apiserver-connect".to_owned();
    connect.severity = Severity::Medium.into();
    assert_eq!(policy.judge(&connect), Verdict::Alert { severity: Severity::Medium }, "no override: own severity");
    assert_eq!(policy.rule_severity("token-read"), Some(Severity::Low));
}

#[test]
fn first_matching_exception_counts() {
    let text = "exceptions:\n  - id: by-namespace\n    reason: one\n    namespaces: [argocd]\n  \
                - id: by-binary\n    reason: two\n    binaries: ['/bin/*']\n  - id: never\n    reason: three\n    \
                exec: true\n";
    let policy = Policy::parse(Path::new("p.yaml"), text).expect("valid policy");
    let mut shell = argocd_alert();
    kube(&mut shell).namespace = "default".to_owned();
    process(&mut shell).exe = "/bin/sh".to_owned();
    let verdicts: Vec<Verdict> = [argocd_alert(), argocd_alert(), shell].iter().map(|a| policy.judge(a)).collect();
    assert_eq!(verdicts[0], Verdict::Suppressed { exception: "by-namespace".to_owned(), reason: "one".to_owned() });
    assert_eq!(verdicts[2], Verdict::Suppressed { exception: "by-binary".to_owned(), reason: "two".to_owned() });
    let counts: Vec<(String, u64)> = policy.suppression_counts().into_iter().map(|(id, _, n)| (id, n)).collect();
    assert_eq!(counts, [("by-namespace".to_owned(), 2), ("by-binary".to_owned(), 1), ("never".to_owned(), 0)]);
}

#[test]
fn counts_are_shared_across_threads() {
    let policy = policy("    namespaces: [argocd]\n");
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| (0..250).for_each(|_| assert!(suppressed(&policy, &argocd_alert()))));
        }
    });
    assert_eq!(policy.suppression_counts()[0].2, 1000);
}

#[test]
fn an_empty_policy_alerts_on_everything() {
    for text in ["", "# nothing\n", "rules:\nexceptions:\n"] {
        let policy = Policy::parse(Path::new("p.yaml"), text).expect("empty policy");
        assert_eq!(policy.judge(&argocd_alert()), Verdict::Alert { severity: Severity::Medium }, "{text:?}");
    }
}
