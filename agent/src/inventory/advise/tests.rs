//! The advice decisions, the window check and the shape of what is emitted.

use std::time::Duration;

use serde_json::Value;
use tokenwatch_proto::v1::{Inventory, TokenMount, TokenMountKind, Usage, Workload, WorkloadInventory};

use super::decide::{allowlist, decide};
use super::*;

const T0: i64 = 1_800_000_000;
const DAY: i64 = 86_400;

fn ts(seconds: i64) -> pbjson_types::Timestamp {
    pbjson_types::Timestamp { seconds, nanos: 0 }
}

fn used(count: u64) -> Option<Usage> {
    (count > 0).then(|| Usage {
        count,
        binaries: vec!["/bin/app".into()],
        first_seen: Some(ts(T0)),
        last_seen: Some(ts(T0)),
    })
}

fn mount(kind: TokenMountKind) -> TokenMount {
    TokenMount {
        kind: kind.into(),
        mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
        secret_name: if kind == TokenMountKind::LegacySecret { "app-token-abcde".into() } else { String::new() },
        containers: vec!["main".into()],
        ..TokenMount::default()
    }
}

fn workload(name: &str, sa: &str, mounts: &[TokenMountKind], reads: u64, connects: u64) -> WorkloadInventory {
    WorkloadInventory {
        namespace: "shop".into(),
        workload: Some(Workload { kind: "Deployment".into(), name: name.into() }),
        service_account: sa.into(),
        token_mounted: !mounts.is_empty(),
        token_mounts: mounts.iter().map(|k| mount(*k)).collect(),
        token_reads: used(reads),
        api_server_connects: used(connects),
        observed_since: Some(ts(T0)),
        pods_seen: 1,
        selector_labels: [("app".to_owned(), name.to_owned())].into(),
        ..WorkloadInventory::default()
    }
}

fn inventory(workloads: Vec<WorkloadInventory>, observed: i64) -> Inventory {
    Inventory {
        nodes: vec!["node-a".into()],
        observed_since: Some(ts(T0)),
        generated_at: Some(ts(T0 + observed)),
        workloads,
    }
}

const AUTO: TokenMountKind = TokenMountKind::DefaultAutomount;
const LEGACY: TokenMountKind = TokenMountKind::LegacySecret;

#[test]
fn each_kind_of_evidence_gets_its_advice() {
    let all = inventory(
        vec![
            workload("web", "default", &[AUTO], 0, 0),
            workload("worker", "worker", &[AUTO], 0, 0),
            workload("reader", "reader", &[AUTO], 4, 0),
            workload("ctl", "ctl", &[LEGACY], 2, 2),
            workload("sdk", "sdk", &[AUTO], 1, 9),
            workload("static", "default", &[], 0, 0),
        ],
        2 * DAY,
    );
    let options = AdviseOptions::default();
    let decision = |name: &str| {
        let w = all.workloads.iter().find(|w| w.workload.as_ref().is_some_and(|o| o.name == name)).expect(name);
        decide(w, &all, &options)
    };
    let web = decision("web");
    let off = web.disable_automount.expect("never read: off");
    assert_eq!((off.new_service_account.as_deref(), off.service_account_off), (Some("web-sa"), false));
    assert_eq!(web.deny_api_egress, Some(Ok(())));
    assert!(!web.needs_token && web.project_legacy.is_empty());

    let worker = decision("worker").disable_automount.expect("never read: off");
    assert_eq!(
        (worker.new_service_account, worker.service_account_off),
        (None, true),
        "its own SA, unused: off there too"
    );

    let reader = decision("reader");
    assert_eq!(reader.disable_automount, None, "reads its token: keeps it");
    assert_eq!(reader.deny_api_egress, Some(Ok(())), "but never dialled the API server");
    assert!(reader.needs_token);

    let ctl = decision("ctl");
    assert_eq!(ctl.project_legacy, [mount(LEGACY)], "legacy Secret token used against the API: projected instead");
    assert_eq!((ctl.disable_automount, ctl.deny_api_egress), (None, None));

    let sdk = decision("sdk");
    assert!(sdk.project_legacy.is_empty(), "already projected");
    assert_eq!(sdk.deny_api_egress, None);

    let plain = decision("static");
    assert_eq!(plain.disable_automount, None, "no token to take away");
    assert_eq!(plain.deny_api_egress, Some(Ok(())));

    let allowed: Vec<String> = allowlist(&all, &options).into_iter().map(|(ns, _)| ns).collect();
    assert_eq!(allowed, ["kube-system", "shop"]);
}

#[test]
fn a_serviceaccount_shared_with_a_reader_is_left_on_and_connects_without_reads_keep_the_token() {
    let all = inventory(
        vec![
            workload("a", "shared", &[AUTO], 0, 0),
            workload("b", "shared", &[AUTO], 3, 0),
            workload("c", "c", &[AUTO], 0, 1),
        ],
        2 * DAY,
    );
    let options = AdviseOptions::default();
    let a = decide(&all.workloads[0], &all, &options).disable_automount.expect("a never read");
    assert!(!a.service_account_off, "b on the same ServiceAccount reads its token");
    // A process may have read its token before the agent watched, and dials with it.
    assert_eq!(decide(&all.workloads[2], &all, &options).disable_automount, None);
}

#[test]
fn workloads_without_labels_or_seen_too_briefly_get_no_objects() {
    let mut bare = workload("lonely", "default", &[AUTO], 0, 0);
    bare.selector_labels.clear();
    let mut late = workload("late", "default", &[AUTO], 0, 0);
    late.observed_since = Some(ts(T0 + 2 * DAY - 60));
    let all = inventory(vec![bare, late], 2 * DAY);
    let options = AdviseOptions::default();
    assert!(matches!(decide(&all.workloads[0], &all, &options).deny_api_egress, Some(Err(_))));
    let late = decide(&all.workloads[1], &all, &options);
    assert!(late.too_new && late.disable_automount.is_none() && late.deny_api_egress.is_none());
    let accepted = AdviseOptions { accept_short_window: true, ..options };
    assert!(decide(&all.workloads[1], &all, &accepted).disable_automount.is_some());
}

#[test]
fn a_window_shorter_than_asked_is_refused_and_says_why() {
    let short = inventory(vec![workload("web", "default", &[AUTO], 0, 0)], 3600);
    let error = advise(&short, &AdviseOptions::default()).expect_err("1 h of 24 h");
    let text = error.to_string();
    assert!(text.contains("only 1h 0m of observation"), "{text}");
    assert!(text.contains("1d 0h 0m window"), "{text}");
    assert!(text.contains("--accept-short-window"), "{text}");
    let options = AdviseOptions { window: Duration::from_secs(3600), ..AdviseOptions::default() };
    assert!(advise(&short, &options).is_ok(), "a window it covers");
    let options = AdviseOptions { accept_short_window: true, ..AdviseOptions::default() };
    assert!(advise(&short, &options).expect("accepted").contains("SHORTER than the window"));
    let no_time = Inventory { observed_since: None, ..short };
    assert!(matches!(advise(&no_time, &AdviseOptions::default()), Err(AdviseError::NoObservation)));
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
    assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
    assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
    assert!(parse_duration("24x").is_err() && parse_duration("h").is_err() && parse_duration("5h3").is_err());
    assert_eq!(human(Duration::from_secs(93_780)), "1d 2h 3m");
    assert_eq!(human(Duration::from_secs(65)), "1m 5s");
}

/// Every YAML document of the advice, parsed.
pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n").filter_map(|doc| yaml_serde::from_str::<Value>(doc).ok()).filter(|v| v.is_object()).collect()
}

#[test]
fn the_advice_is_yaml_with_evidence_beside_every_object_and_a_complete_kyverno_policy() {
    let all =
        inventory(vec![workload("web", "default", &[AUTO], 0, 0), workload("ctl", "ctl", &[LEGACY], 2, 2)], 2 * DAY);
    let yaml = advise(&all, &AdviseOptions::default()).expect("advice");
    for chunk in yaml.split("\n---\n").skip(1) {
        assert!(chunk.starts_with("# "), "every object has its evidence above it:\n{chunk}");
    }
    let docs = documents(&yaml);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "Deployment", "Deployment", "NetworkPolicy", "ClusterPolicy"]);
    let policy = docs.last().expect("policy");
    assert_kyverno_policy(policy);
    assert_eq!(
        policy["spec"]["rules"][0]["exclude"]["any"][0]["resources"]["namespaces"],
        serde_json::json!(["kube-system", "shop"])
    );
    let projected =
        &docs[2]["spec"]["template"]["spec"]["volumes"][0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(projected["expirationSeconds"], 3600);
    assert_eq!(projected["audience"], DEFAULT_AUDIENCE);
}

/// What Kyverno requires of a validating ClusterPolicy.
pub(crate) fn assert_kyverno_policy(policy: &Value) {
    assert_eq!(policy["apiVersion"], "kyverno.io/v1");
    assert_eq!(policy["kind"], "ClusterPolicy");
    assert!(policy["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    let action = policy["spec"]["validationFailureAction"].as_str().expect("validationFailureAction");
    assert!(["Enforce", "Audit"].contains(&action), "{action}");
    let rules = policy["spec"]["rules"].as_array().expect("rules");
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(rule["name"].as_str().is_some_and(|n| !n.is_empty() && n.len() <= 63), "{rule}");
        let kinds = rule["match"]["any"][0]["resources"]["kinds"].as_array().expect("match.any[].resources.kinds");
        assert!(kinds.contains(&Value::from("Pod")));
        let validate = &rule["validate"];
        assert!(validate["message"].as_str().is_some_and(|m| !m.is_empty()), "validate.message");
        assert!(validate["pattern"].is_object() || validate["deny"].is_object(), "validate.pattern or deny");
        assert_eq!(validate["pattern"]["spec"]["automountServiceAccountToken"], "false");
    }
}

#[test]
fn an_executable_path_from_a_node_cannot_add_yaml_to_the_advice() {
    // A file name is the attacker's choice: a newline, `---` and an object.
    let injected = "/tmp/x\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: planted}\n# ";
    let mut reader = workload("ctl", "ctl", &[LEGACY], 2, 2);
    for usage in [&mut reader.token_reads, &mut reader.api_server_connects] {
        usage.as_mut().expect("usage").binaries = vec![injected.into(), "/bin/\u{202e}gpj.exe\r".into()];
    }
    let yaml =
        advise(&inventory(vec![workload("web", "default", &[AUTO], 0, 0), reader], 2 * DAY), &Default::default())
            .expect("advice");
    let kinds: Vec<String> = documents(&yaml).iter().filter_map(|d| d["kind"].as_str().map(str::to_owned)).collect();
    assert_eq!(kinds, ["ServiceAccount", "Deployment", "Deployment", "NetworkPolicy", "ClusterPolicy"], "{yaml}");
    assert!(yaml.contains("/tmp/x\\n---\\napiVersion: v1\\nkind: Secret"), "the path is shown, escaped:\n{yaml}");
    for line in yaml.lines() {
        assert!(!line.starts_with("kind: Secret") && !line.contains('\r') && !line.contains('\u{202e}'), "{line:?}");
    }
}
