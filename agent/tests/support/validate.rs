//! Checks of what `tokenwatch advise` emits: every core Kubernetes object
//! through `kubernetes-validate --strict` (PyPI's schema validator, which
//! `cargo xtask setup` installs), the Kyverno policy against what Kyverno
//! requires, and a YAML stream split into its objects.
//!
//! The pod-template patches are server-side apply configurations: partial
//! objects that the API server merges into the live one and only then
//! validates. They are checked the same way: merged (by the list keys
//! server-side apply uses: `name`, and `mountPath` for volume mounts) into
//! a complete object of the workload, and the result validated strictly,
//! so a misspelt or mistyped field fails as it would on a real server.

use std::process::Command;

use serde_json::Value;

/// Every object of a multi-document YAML stream.
pub fn documents(yaml: &str) -> Vec<Value> {
    yaml.split("\n---\n").filter_map(|doc| yaml_serde::from_str::<Value>(doc).ok()).filter(Value::is_object).collect()
}

/// The object of `kind` named `name`, if any.
pub fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// Whether an API version is Kubernetes' own (core or a built-in group).
pub fn is_core(object: &Value) -> bool {
    let version = object["apiVersion"].as_str().unwrap_or_default();
    version == "v1" || version.ends_with(".k8s.io/v1") || ["apps/v1", "batch/v1"].contains(&version)
}

/// Merges a server-side apply configuration into `base` as the API server
/// would for these fields: maps field by field, lists of objects by key.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                match base.get_mut(key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Array(base), Value::Array(patch)) if patch.iter().all(|item| list_key(item).is_some()) => {
            for item in patch {
                let key = list_key(item);
                match base.iter_mut().find(|b| list_key(b) == key) {
                    Some(existing) => merge(existing, item),
                    None => base.push(item.clone()),
                }
            }
        }
        (base, patch) => *base = patch.clone(),
    }
}

fn list_key(item: &Value) -> Option<(&'static str, String)> {
    if let Some(path) = item["mountPath"].as_str() {
        return Some(("mountPath", path.to_owned()));
    }
    item["name"].as_str().map(|name| ("name", name.to_owned()))
}

/// Runs `kubernetes-validate --strict` on each object (as its own file, so
/// a failure names it); panics with the validator's words on any failure.
pub fn kubernetes_validate(objects: &[Value]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:02}-{}.yaml", object["kind"].as_str().unwrap_or("object")));
        std::fs::write(&path, yaml_serde::to_string(object).expect("yaml")).expect("write object");
        files.push(path);
    }
    let output = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict"])
        .args(&files)
        .output()
        .expect("python3 (cargo xtask setup installs kubernetes-validate from PyPI)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(
        !text.contains("No module named kubernetes_validate"),
        "kubernetes-validate is missing: run cargo xtask setup (pip install kubernetes-validate)\n{text}"
    );
    assert!(output.status.success(), "kubernetes-validate --strict refused an object:\n{text}");
    let passed = text.lines().filter(|l| l.starts_with("INFO") && l.contains(" passed ")).count();
    assert_eq!(passed, objects.len(), "every object passed, none skipped:\n{text}");
}

/// What Kyverno requires of a validating ClusterPolicy, and the rule
/// tokenwatch writes: pods must set `automountServiceAccountToken: false`.
pub fn assert_kyverno_policy(policy: &Value) {
    assert_eq!(policy["apiVersion"], "kyverno.io/v1", "{policy}");
    assert_eq!(policy["kind"], "ClusterPolicy");
    assert!(policy["metadata"]["name"].as_str().is_some_and(|n| !n.is_empty()));
    let action = policy["spec"]["validationFailureAction"].as_str().expect("spec.validationFailureAction");
    assert!(["Enforce", "Audit"].contains(&action), "{action}");
    let rules = policy["spec"]["rules"].as_array().expect("spec.rules");
    assert!(!rules.is_empty());
    for rule in rules {
        assert!(rule["name"].as_str().is_some_and(|n| !n.is_empty() && n.len() <= 63), "rules[].name: {rule}");
        let kinds =
            rule["match"]["any"][0]["resources"]["kinds"].as_array().expect("rules[].match.any[].resources.kinds");
        assert!(kinds.contains(&Value::from("Pod")));
        let validate = &rule["validate"];
        assert!(validate["message"].as_str().is_some_and(|m| !m.is_empty()), "rules[].validate.message");
        assert!(validate["pattern"].is_object() || validate["deny"].is_object(), "validate.pattern or validate.deny");
        assert_eq!(validate["pattern"]["spec"]["automountServiceAccountToken"], "false");
    }
}
