//! `blocks:` and `enforcement:`: what parses, what is refused (with
//! file:line:column, the YAML path and the entry's id), and the modes.

use std::path::Path;

use super::{EnforcementMode, Policy};

fn error(text: &str) -> String {
    match Policy::parse(Path::new("policy.yaml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(error) => error.to_string(),
    }
}

/// A valid entry `a` first, so errors in the second are located below it.
const FIRST: &str = "blocks:\n  - id: a\n    reason: first\n    actions: [token-read]\n    namespaces: [x]\n";

#[test]
fn block_errors_name_file_line_column_and_the_entry() {
    let cases = [
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    binaries: [\"/bin/sh\", bin/kubectl]\n", "policy.yaml:9:27: blocks[1].binaries[1] (block `b`): `bin/kubectl` is not an absolute path to a file"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    binaries: [/usr/bin/]\n", "policy.yaml:9:16: blocks[1].binaries[0] (block `b`): `/usr/bin/` is not an absolute path to a file"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    binaries: [\"/usr/{bin,local/bin}/kubectl\"]\n", "policy.yaml:9:16: blocks[1].binaries[0] (block `b`): `/usr/{bin,local/bin}/kubectl`: a `[...]` class or `{...}` alternation may not span `/`"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    binaries: []\n", "policy.yaml:9:15: blocks[1].binaries (block `b`): must list at least one entry"),
        ("  - id: b\n    reason: r\n    actions: [token-reed]\n    namespaces: [x]\n", "policy.yaml:8:15: blocks[1].actions[0] (block `b`): unknown variant `token-reed`, expected `token-read` or `apiserver-connect`"),
        ("  - id: b\n    reason: r\n    actions: []\n    namespaces: [x]\n", "policy.yaml:8:14: blocks[1].actions (block `b`): must list at least one entry"),
        ("  - id: b\n    reason: r\n    namespaces: [x]\n", "policy.yaml:6:5: blocks[1] (block `b`): missing field `actions`"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n", "policy.yaml:6:5: blocks[1] (block `b`): has no match fields, so it would refuse in every pod on the node"),
        ("  - id: a\n    reason: r\n    actions: [token-read]\n    exec: true\n", "policy.yaml:6:5: blocks[1] (block `a`): id `a` is already used by blocks[0]; ids must be unique"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    namespaces: [x]\n    rules: [token-read]\n", "policy.yaml:10:5: blocks[1] (block `b`): unknown field `rules`"),
        ("  - id: b\n    reason: r\n    actions: [token-read]\n    namespaces: [x]\n    dry_run: maybe\n", "policy.yaml:10:14: blocks[1].dry_run (block `b`): invalid type: string \"maybe\", expected a boolean"),
    ];
    for (second, want) in cases {
        let text = format!("{FIRST}{second}");
        let got = error(&text);
        assert!(got.starts_with(want), "{text}\n got: {got}\nwant: {want}");
    }
    let got = error("enforcement: { mode: block }\n");
    assert!(
        got.starts_with(
            "policy.yaml:1:22: enforcement.mode: unknown variant `block`, expected one of `off`, `dry-run`, `enforce`"
        ),
        "{got}"
    );
}

#[test]
fn modes_decide_what_each_entry_does() {
    let entries = "blocks:\n  - id: a\n    reason: r\n    actions: [apiserver-connect]\n    namespaces: [x]\n  \
                   - id: b\n    reason: r\n    actions: [token-read]\n    exec: true\n    dry_run: true\n";
    let modes = |text: &str| -> Vec<(String, bool)> {
        let policy = Policy::parse(Path::new("p"), text).unwrap_or_else(|e| panic!("{e}"));
        policy.blocks().iter().map(|(b, enforce)| (b.id.clone(), *enforce)).collect()
    };
    assert_eq!(modes(entries), vec![("a".to_owned(), true), ("b".to_owned(), false)], "enforce is the default");
    assert_eq!(
        modes(&format!("enforcement: {{ mode: dry-run }}\n{entries}")),
        vec![("a".to_owned(), false), ("b".to_owned(), false)]
    );
    assert!(modes(&format!("enforcement: {{ mode: off }}\n{entries}")).is_empty());
    let parsed = Policy::parse(Path::new("p"), entries).expect("valid");
    let (a, _) = parsed.blocks()[0];
    assert!(a.actions.apiserver_connect && !a.actions.token_read);
    assert_eq!(parsed.enforcement_mode(), EnforcementMode::Enforce);
}

#[test]
fn the_default_policy_blocks_nothing() {
    assert!(Policy::default_policy().blocks().is_empty());
}

/// The default policy's commented-out block examples parse once
/// uncommented, and the dry-run one stays a dry run.
#[test]
fn the_default_policys_block_examples_parse_when_uncommented() {
    let text = super::DEFAULT_POLICY_YAML;
    let start = text.find("# enforcement:").expect("the block examples");
    let uncommented: String =
        text[start..].lines().map(|line| format!("{}\n", line.strip_prefix("# ").unwrap_or(line))).collect();
    let policy = Policy::parse(Path::new("examples.yaml"), &uncommented).unwrap_or_else(|e| panic!("{e}"));
    let blocks: Vec<(&str, bool)> = policy.blocks().iter().map(|(b, enforce)| (b.id.as_str(), *enforce)).collect();
    assert_eq!(blocks, vec![("no-exec-token-reads-in-shop", true), ("no-api-from-shop-web", false)]);
}

#[test]
fn binaries_are_absolute_path_globs() {
    let text = "blocks:\n  - id: k\n    reason: r\n    actions: [token-read]\n    \
                binaries: [/usr/local/bin/kubectl, \"/tmp/*\"]\n";
    let policy = Policy::parse(Path::new("p"), text).unwrap_or_else(|e| panic!("{e}"));
    let (block, _) = policy.blocks()[0];
    let globs: Vec<String> = block.matcher.binaries.iter().flatten().map(|g| g.as_string()).collect();
    assert_eq!(globs, ["/usr/local/bin/kubectl", "/tmp/*"], "binaries alone select: every pod, those executables");
}
