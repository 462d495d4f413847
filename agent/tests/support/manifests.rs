//! The deploy/ manifests as a user installs them: rendered by `kubectl
//! kustomize` (kubectl's built-in kustomize, as `kubectl apply -k` uses) and
//! read back as JSON values.

use std::{path::PathBuf, process::Command};

use serde::Deserialize;
use serde_json::Value;

/// The kustomizations a user can apply: the base and each overlay.
pub const KUSTOMIZATIONS: [&str; 3] = ["deploy", "deploy/overlays/otlp", "deploy/overlays/prometheus-operator"];

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("the agent crate is in the workspace").to_owned()
}

/// `kubectl kustomize <dir>`'s output; panics with kubectl's error.
pub fn render(dir: &str) -> String {
    let path = workspace_root().join(dir);
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize (cargo xtask setup checks for kubectl): {e}"));
    assert!(output.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 YAML")
}

/// Every document of a multi-document YAML stream.
pub fn documents(yaml: &str) -> Vec<Value> {
    yaml_serde::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("a YAML document"))
        .filter(|doc| !doc.is_null())
        .collect()
}

/// The one object of `kind` named `name`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"] == kind && d["metadata"]["name"] == name);
    let first = found.next().unwrap_or_else(|| panic!("no {kind} {name}"));
    assert!(found.next().is_none(), "two {kind}s named {name}");
    first
}

/// Every object of `kind`.
pub fn all<'a>(docs: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    docs.iter().filter(move |d| d["kind"] == kind)
}

/// The strings of a JSON array (empty for anything else).
pub fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// The capabilities deploy/README.md documents, in its table's order: the
/// first backquoted word of each row under `## Capabilities`.
pub fn documented_capabilities() -> Vec<String> {
    let readme = std::fs::read_to_string(workspace_root().join("deploy/README.md")).expect("deploy/README.md");
    let section = readme.split("## Capabilities").nth(1).expect("a Capabilities section in deploy/README.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split('`').nth(1).map(str::to_owned))
        .collect()
}
