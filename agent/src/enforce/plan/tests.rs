//! Which cgroups a policy's blocks cover, with which slots, and where the
//! connect fences go.

use std::path::Path;

use tokenwatch_common::{
    BinaryKey, EnforceSlot, BINARIES_ANY, BINARIES_LISTED, EXEC_ANY, EXEC_NEVER, EXEC_ONLY, MODE_DRY_RUN, MODE_ENFORCE,
};

use super::*;
use crate::detect::policy::Policy;

fn policy(text: &str) -> Policy {
    Policy::parse(Path::new("policy.yaml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn kube(namespace: &str, service_account: &str, image: &str) -> KubernetesContext {
    KubernetesContext {
        namespace: namespace.to_owned(),
        pod: format!("{namespace}-pod"),
        service_account: service_account.to_owned(),
        image: image.to_owned(),
        labels: [("app".to_owned(), namespace.to_owned())].into(),
        ..KubernetesContext::default()
    }
}

/// A pod with cgroup id `n`, its one container `n + 1` (init pid `n + 2`).
fn pod(n: u64, namespace: &str, service_account: &str, image: &str) -> Target {
    let container = kube(namespace, service_account, image);
    Target {
        cgroup: n,
        dir: PathBuf::from(format!("/cg/pod{n}")),
        kubernetes: KubernetesContext { image: String::new(), ..container.clone() },
        containers: vec![ContainerTarget {
            cgroup: n + 1,
            kubernetes: container,
            init_pid: Some(n as u32 + 2),
            root_pid: Some(n as u32 + 2),
        }],
    }
}

fn planned(text: &str, targets: &[Target]) -> Plan {
    plan(&policy(text).blocks(), &BlockNames::default(), targets)
}

fn slot(block: u32, mode: u32, exec: u32) -> EnforceSlot {
    EnforceSlot { block, mode, exec, binaries: BINARIES_ANY }
}

#[test]
fn a_namespace_block_covers_that_pod_only_and_fences_it_for_connects() {
    let text =
        "blocks:\n  - id: shop\n    reason: r\n    actions: [apiserver-connect, token-read]\n    namespaces: [shop]\n";
    let plan = planned(text, &[pod(10, "shop", "default", "img"), pod(20, "other", "default", "img")]);
    assert_eq!(plan.entries.keys().copied().collect::<Vec<_>>(), vec![10], "the pod's cgroup, not its container's");
    let entry = plan.entries[&10];
    assert_eq!(entry.connect[0], slot(1, MODE_ENFORCE, EXEC_ANY));
    assert_eq!(entry.token_read[0], slot(1, MODE_ENFORCE, EXEC_ANY));
    assert_eq!(plan.fences.iter().collect::<Vec<_>>(), vec![Path::new("/cg/pod10")]);
    assert_eq!(plan.inits.iter().map(|(c, p)| (*c, *p)).collect::<Vec<_>>(), vec![(11, 12)]);
    assert_eq!(plan.covered.iter().collect::<Vec<_>>(), vec![&("shop/shop-pod".to_owned(), "shop".to_owned())]);
}

#[test]
fn a_token_read_block_needs_no_fence() {
    let text = "blocks:\n  - id: r\n    reason: r\n    actions: [token-read]\n    service_accounts: [ci]\n";
    let plan = planned(text, &[pod(10, "shop", "ci", "img")]);
    assert!(plan.fences.is_empty());
    assert_eq!(plan.entries[&10].token_read[0], slot(1, MODE_ENFORCE, EXEC_ANY));
    assert!(plan.entries[&10].connect.iter().all(|s| s.mode == 0));
}

#[test]
fn an_image_block_covers_the_matching_container_and_fences_its_pod() {
    let text = "blocks:\n  - id: curl\n    reason: r\n    actions: [apiserver-connect]\n    images: [\"*/curl:*\"]\n";
    let plan = planned(text, &[pod(10, "shop", "default", "docker.io/curl:8"), pod(20, "shop", "default", "app:1")]);
    assert_eq!(plan.entries.keys().copied().collect::<Vec<_>>(), vec![11], "the container's cgroup only");
    assert_eq!(plan.fences.iter().collect::<Vec<_>>(), vec![Path::new("/cg/pod10")]);
}

#[test]
fn unknown_pods_are_not_covered() {
    let text = "blocks:\n  - id: shop\n    reason: r\n    actions: [apiserver-connect]\n    namespaces: [shop]\n";
    let unknown = Target { cgroup: 5, dir: PathBuf::from("/cg/x"), ..Target::default() };
    assert!(planned(text, &[unknown]).is_empty());
}

#[test]
fn refusing_entries_come_first_and_exec_filters_are_kept() {
    let entry = |id: &str, extra: &str| {
        format!("  - id: {id}\n    reason: r\n    actions: [apiserver-connect]\n    namespaces: [shop]\n{extra}")
    };
    let text = [
        "blocks:\n".to_owned(),
        entry("watch", "    dry_run: true\n"),
        entry("exec", "    exec: true\n"),
        entry("again", "    exec: true\n"),
        entry("app", "    exec: false\n    dry_run: true\n"),
    ]
    .concat();
    let plan = planned(&text, &[pod(10, "shop", "d", "i")]);
    let connect = plan.entries[&10].connect;
    assert_eq!(
        connect[..3],
        [slot(2, MODE_ENFORCE, EXEC_ONLY), slot(1, MODE_DRY_RUN, EXEC_ANY), slot(4, MODE_DRY_RUN, EXEC_NEVER)],
        "`again` adds nothing: `exec` decides for the same processes first"
    );
    assert_eq!(connect[3].mode, 0);
}

#[test]
fn global_dry_run_and_off() {
    let blocks = "blocks:\n  - id: shop\n    reason: r\n    actions: [apiserver-connect]\n    namespaces: [shop]\n";
    let dry = planned(&format!("enforcement: {{ mode: dry-run }}\n{blocks}"), &[pod(10, "shop", "d", "i")]);
    assert_eq!(dry.entries[&10].connect[0], slot(1, MODE_DRY_RUN, EXEC_ANY));
    assert_eq!(dry.fences.len(), 1, "a dry run still needs the fence to see the connect");
    assert!(planned(&format!("enforcement: {{ mode: off }}\n{blocks}"), &[pod(10, "shop", "d", "i")]).is_empty());
}

#[test]
fn block_numbers_are_stable_across_plans() {
    let names = BlockNames::default();
    let first = policy("blocks:\n  - id: a\n    reason: r\n    actions: [token-read]\n    namespaces: [x]\n");
    let second = policy("blocks:\n  - id: b\n    reason: r\n    actions: [token-read]\n    namespaces: [x]\n  - id: a\n    reason: r\n    actions: [token-read]\n    namespaces: [x]\n");
    plan(&first.blocks(), &names, &[]);
    plan(&second.blocks(), &names, &[]);
    assert_eq!((names.id(1).as_deref(), names.id(2).as_deref(), names.id(3)), (Some("a"), Some("b"), None));
}

#[test]
fn entries_listing_binaries_share_their_slot_and_each_brings_its_files() {
    let entry = |id: &str, actions: &str, extra: &str| {
        format!("  - id: {id}\n    reason: r\n    actions: [{actions}]\n    namespaces: [shop]\n{extra}")
    };
    let text = [
        "blocks:\n".to_owned(),
        entry("kubectl", "token-read, apiserver-connect", "    binaries: [/usr/bin/kubectl]\n"),
        entry("curl", "token-read", "    binaries: [\"/usr/bin/curl*\"]\n"),
        entry("watch", "token-read", "    dry_run: true\n"),
    ]
    .concat();
    let mut target = pod(10, "shop", "d", "i");
    let second = ContainerTarget { cgroup: 12, root_pid: Some(40), init_pid: None, ..target.containers[0].clone() };
    target.containers.push(second);
    let plan = planned(&text, &[target]);
    let entry = plan.entries[&10];
    let listed = EnforceSlot { binaries: BINARIES_LISTED, ..slot(1, MODE_ENFORCE, EXEC_ANY) };
    assert_eq!(entry.token_read[..2], [listed, slot(3, MODE_DRY_RUN, EXEC_ANY)], "one slot for both lists");
    assert_eq!(entry.connect[0], listed);
    type Scope = (u64, u32, u32, Vec<String>, Vec<u32>);
    let scopes: Vec<Scope> = plan
        .scopes
        .iter()
        .map(|s| (s.cgroup, s.slot, s.block, s.globs.iter().map(|g| g.as_string()).collect(), s.roots.clone()))
        .collect();
    let connect0 = BinaryKey::CONNECT_SLOTS;
    assert_eq!(
        scopes,
        vec![
            (10, 0, 1, vec!["/usr/bin/kubectl".to_owned()], vec![12, 40]),
            (10, connect0, 1, vec!["/usr/bin/kubectl".to_owned()], vec![12, 40]),
            (10, 0, 2, vec!["/usr/bin/curl*".to_owned()], vec![12, 40]),
        ],
        "every container of the pod, each action's slot numbered apart"
    );
}

#[test]
fn an_entry_for_every_executable_takes_over_a_listing_slot() {
    let text = "blocks:\n  - id: kubectl\n    reason: r\n    actions: [token-read]\n    namespaces: [shop]\n    \
                binaries: [/usr/bin/kubectl]\n  - id: all\n    reason: r\n    actions: [token-read]\n    \
                namespaces: [shop]\n";
    let plan = planned(text, &[pod(10, "shop", "d", "i")]);
    assert_eq!(plan.entries[&10].token_read[0], slot(2, MODE_ENFORCE, EXEC_ANY), "`all` covers kubectl too");
    assert!(plan.scopes.is_empty(), "so nothing is left to look up");
}

#[test]
fn an_image_entry_listing_other_files_in_the_pods_slot_gets_its_own_entry() {
    // `pod` lists /a for the whole pod; `image` lists /b for one image, in
    // the same (mode, exec) slot: the slots are equal, the files are not.
    let text = "blocks:\n  - id: pod\n    reason: r\n    actions: [token-read]\n    namespaces: [shop]\n    \
                binaries: [/a]\n  - id: image\n    reason: r\n    actions: [token-read]\n    images: [\"img\"]\n    \
                binaries: [/b]\n";
    let plan = planned(text, &[pod(10, "shop", "d", "img")]);
    assert_eq!(plan.entries.keys().copied().collect::<Vec<_>>(), vec![10, 11], "the container's own entry too");
    assert_eq!(plan.entries[&10], plan.entries[&11]);
    let scopes: Vec<(u64, u32, String)> =
        plan.scopes.iter().flat_map(|s| s.globs.iter().map(move |g| (s.cgroup, s.block, g.as_string()))).collect();
    assert_eq!(
        scopes,
        vec![(10, 1, "/a".to_owned()), (11, 1, "/a".to_owned()), (11, 2, "/b".to_owned())],
        "the container's entry is the deepest: it holds both lists"
    );
}

#[test]
fn pods_the_api_put_on_the_node_are_covered_by_uid_unless_the_entry_needs_the_container() {
    let text = "blocks:\n  - id: shop\n    reason: r\n    actions: [token-read]\n    namespaces: [shop]\n    \
                exec: false\n  - id: by-image\n    reason: r\n    actions: [token-read]\n    images: ['evil/*']\n";
    let scheduled = |namespace: &str, uid: &str| KubernetesContext {
        pod_uid: uid.to_owned(),
        image: String::new(),
        ..kube(namespace, "default", "")
    };
    let pods = [scheduled("shop", "u-shop"), scheduled("other", "u-other"), scheduled("shop", "")];
    let entries = pod_entries(&policy(text).blocks(), &BlockNames::default(), &pods);
    assert_eq!(entries.keys().collect::<Vec<_>>(), ["u-shop"], "a uid-less pod cannot be matched by name");
    assert_eq!(entries["u-shop"].token_read[0], slot(1, MODE_ENFORCE, EXEC_NEVER));
    assert_eq!(entries["u-shop"].token_read[1].mode, MODE_NONE, "the image entry waits for the container");
}

#[test]
fn only_a_plan_that_blocks_reads_turns_the_kernels_read_walk_on() {
    let targets = [pod(10, "shop", "default", "img")];
    let block = |actions: &str, mode: &str| {
        format!("{mode}blocks:\n  - id: b\n    reason: r\n    actions: [{actions}]\n    namespaces: [shop]\n")
    };
    assert!(!Plan::default().blocks_reads(), "no policy, no walk");
    assert!(!planned(&block("apiserver-connect", ""), &targets).blocks_reads(), "connects are the fences' job");
    assert!(planned(&block("token-read", ""), &targets).blocks_reads());
    assert!(
        planned(&block("token-read", "enforcement: { mode: dry-run }\n"), &targets).blocks_reads(),
        "dry run reports"
    );
    assert!(!planned(&block("token-read", "enforcement: { mode: off }\n"), &targets).blocks_reads());
    assert!(!planned(&block("token-read", ""), &[pod(20, "other", "default", "img")]).blocks_reads(), "no pod covered");
}
