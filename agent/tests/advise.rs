//! `tokenwatch advise` as a user runs it, from a saved inventory (no root,
//! no agent): it refuses a window shorter than asked and says why, and every
//! core Kubernetes object it emits passes `kubernetes-validate --strict`
//! (the pod-template patches once merged into their workload, as the API
//! server merges a server-side apply), the Kyverno policy has what Kyverno
//! requires.

mod support;

use std::process::{Command, Output};

use serde_json::{json, Value};
use support::validate::{assert_kyverno_policy, documents, find, is_core, kubernetes_validate, merge};

const DAY: i64 = 86_400;
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn time(seconds: i64) -> String {
    let value: pbjson_types::Timestamp = pbjson_types::Timestamp { seconds, nanos: 0 };
    serde_json::to_value(value).expect("timestamp").as_str().expect("a string").to_owned()
}

/// A workload as `tokenwatch inventory -o json` prints it.
fn workload(kind: &str, name: &str, sa: &str, mount: &str, reads: u64, connects: u64) -> Value {
    let usage = |count: u64| {
        json!({"count": count.to_string(), "binaries": ["/usr/bin/kubectl"], "firstSeen": time(1_800_000_100),
               "lastSeen": time(1_800_000_200)})
    };
    let mut mounts = json!([{"kind": mount, "mountPath": SA_DIR, "containers": ["main"]}]);
    if mount == "TOKEN_MOUNT_KIND_LEGACY_SECRET" {
        mounts[0]["secretName"] = json!(format!("{sa}-token-abcde"));
    }
    let mut w = json!({
        "namespace": "shop", "workload": {"kind": kind, "name": name}, "serviceAccount": sa, "tokenMounted": true,
        "tokenMounts": mounts, "observedSince": time(1_800_000_000), "podsSeen": "2", "podsRunning": "1",
        "selectorLabels": {"app": name}, "nodes": ["node-a", "node-b"],
    });
    if reads > 0 {
        w["tokenReads"] = usage(reads);
    }
    if connects > 0 {
        w["apiServerConnects"] = usage(connects);
    }
    w
}

fn inventory_file(dir: &std::path::Path, observed: i64) -> String {
    let inventory = json!({
        "nodes": ["node-a", "node-b"], "observedSince": time(1_800_000_000), "generatedAt": time(1_800_000_000 + observed),
        "workloads": [
            workload("Deployment", "web", "default", "TOKEN_MOUNT_KIND_DEFAULT_AUTOMOUNT", 0, 0),
            workload("StatefulSet", "db", "db", "TOKEN_MOUNT_KIND_DEFAULT_AUTOMOUNT", 0, 0),
            workload("CronJob", "report", "default", "TOKEN_MOUNT_KIND_DEFAULT_AUTOMOUNT", 0, 0),
            workload("DaemonSet", "agent", "agent", "TOKEN_MOUNT_KIND_LEGACY_SECRET", 12, 40),
            workload("Deployment", "reader", "reader", "TOKEN_MOUNT_KIND_DEFAULT_AUTOMOUNT", 3, 0),
        ],
    });
    let path = dir.join("inventory.json");
    std::fs::write(&path, inventory.to_string()).expect("write inventory");
    path.display().to_string()
}

fn advise(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tokenwatch")).arg("advise").args(args).output().expect("run tokenwatch advise")
}

/// The live object a patch of `kind`/`name` is applied to: what a cluster
/// would hold (legacy token volume for the DaemonSet, as its inventory says).
fn live(kind: &str, name: &str) -> Value {
    let mut pod_spec = json!({"containers": [{"name": "main", "image": "registry.example/app:1"}]});
    if kind == "DaemonSet" {
        pod_spec["containers"][0]["volumeMounts"] = json!([{"name": "legacy", "mountPath": SA_DIR, "readOnly": true}]);
        pod_spec["volumes"] = json!([{"name": "legacy", "secret": {"secretName": "agent-token-abcde"}}]);
    }
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec});
    let (api_version, spec) = match kind {
        "CronJob" => {
            let mut job_pod = template.clone();
            job_pod["spec"]["restartPolicy"] = json!("OnFailure");
            ("batch/v1", json!({"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": job_pod}}}))
        }
        "StatefulSet" => {
            ("apps/v1", json!({"serviceName": name, "selector": {"matchLabels": {"app": name}}, "template": template}))
        }
        _ => ("apps/v1", json!({"selector": {"matchLabels": {"app": name}}, "template": template})),
    };
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec})
}

#[test]
fn advise_refuses_a_window_shorter_than_asked_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory_file(dir.path(), 3 * 3600);
    let refused = advise(&["--from", &file]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(refused.stdout.is_empty(), "no advice at all");
    assert!(stderr.contains("covers only 3h 0m of observation"), "{stderr}");
    assert!(stderr.contains("less than the 1d 0h 0m window"), "{stderr}");
    assert!(stderr.contains("--accept-short-window"), "{stderr}");
    let refused = advise(&["--from", &file, "--window", "4h"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(advise(&["--from", &file, "--window", "3h"]).status.success(), "a window the evidence covers");
    let accepted = advise(&["--from", &file, "--accept-short-window"]);
    assert!(accepted.status.success(), "{}", String::from_utf8_lossy(&accepted.stderr));
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("SHORTER than the window"));
}

#[test]
fn every_core_object_advise_emits_passes_kubernetes_validate_and_the_kyverno_policy_is_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = inventory_file(dir.path(), 2 * DAY);
    let output = advise(&["--from", &file]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let yaml = String::from_utf8(output.stdout).expect("utf-8");
    let objects = documents(&yaml);
    let names: Vec<String> = objects
        .iter()
        .map(|o| format!("{}/{}", o["kind"].as_str().unwrap_or("?"), o["metadata"]["name"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(
        names,
        [
            "ServiceAccount/web-sa",
            "ServiceAccount/db",
            "ServiceAccount/report-sa",
            "Deployment/web",
            "StatefulSet/db",
            "CronJob/report",
            "DaemonSet/agent",
            "NetworkPolicy/web-deny-api-access",
            "NetworkPolicy/db-deny-api-access",
            "NetworkPolicy/report-deny-api-access",
            "NetworkPolicy/reader-deny-api-access",
            "ClusterPolicy/tokenwatch-restrict-token-automount",
        ],
        "{yaml}"
    );
    let mut validated = Vec::new();
    for object in objects.iter().filter(|o| is_core(o)) {
        let kind = object["kind"].as_str().unwrap_or_default();
        if ["ServiceAccount", "NetworkPolicy"].contains(&kind) {
            validated.push(object.clone());
        } else {
            let mut applied = live(kind, object["metadata"]["name"].as_str().unwrap_or_default());
            merge(&mut applied, object);
            validated.push(applied);
        }
    }
    assert_eq!(validated.len(), objects.len() - 1, "everything but the Kyverno policy is a core object");
    kubernetes_validate(&validated);

    let policy = find(&objects, "ClusterPolicy", "tokenwatch-restrict-token-automount").expect("policy");
    assert_kyverno_policy(policy);
    assert_eq!(
        policy["spec"]["rules"][0]["exclude"]["any"][0]["resources"]["namespaces"],
        json!(["kube-system", "shop"])
    );
    // The DaemonSet's legacy token is now a projected one at the same path.
    let agent = find(&validated, "DaemonSet", "agent").expect("merged DaemonSet");
    let pod = &agent["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "tokenwatch-projected-token", "mountPath": SA_DIR, "readOnly": true}])
    );
    let sources = &pod["volumes"][1]["projected"]["sources"];
    assert_eq!(sources[0]["serviceAccountToken"]["expirationSeconds"], 3600);
    assert_eq!(sources[0]["serviceAccountToken"]["audience"], "https://kubernetes.default.svc.cluster.local");
    let report = find(&validated, "CronJob", "report").expect("merged CronJob");
    let report_pod = &report["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(
        (&report_pod["automountServiceAccountToken"], &report_pod["serviceAccountName"]),
        (&json!(false), &json!("report-sa"))
    );
}
