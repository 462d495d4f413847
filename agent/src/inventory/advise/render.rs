//! The advice as text: a header with the rollout order, a summary of every
//! workload's evidence and verdict, then the objects step by step, each with
//! its evidence in comments just above it.

use std::fmt::Write as _;

use serde_json::Value;
use tokenwatch_proto::v1::{Inventory, TokenMount, TokenMountKind, Usage, WorkloadInventory};

use super::decide::{self, Decision};
use super::objects::{self, STEP_ADMISSION, STEP_LABEL, STEP_NETWORK, STEP_SERVICE_ACCOUNTS, STEP_WORKLOADS};
use super::{human, AdviseOptions};
use crate::{inventory::rfc3339, printable::printable};

/// One YAML document with the comments above it.
struct Document {
    comments: Vec<String>,
    object: Value,
}

/// The whole advice.
pub(super) fn render(inventory: &Inventory, options: &AdviseOptions) -> String {
    let mut out = header(inventory, options);
    let mut steps: [Vec<Document>; 3] = Default::default();
    out.push_str("#\n# Workloads, their evidence and the advice:\n");
    for workload in &inventory.workloads {
        let decision = decide::decide(workload, inventory, options);
        let name = full_name(workload);
        let evidence = evidence(workload, inventory);
        let advice = verdicts(workload, &decision, options);
        comment(&mut out, &format!("  {name}"));
        comment(&mut out, &format!("    evidence: {evidence}"));
        for line in &advice {
            comment(&mut out, &format!("    advice: {line}"));
        }
        let beside = |why: &str| vec![format!("{name}: {why}"), format!("evidence: {evidence}")];
        if let Some(off) = &decision.disable_automount {
            if let Some(account) = &off.new_service_account {
                let why = "never read its token, runs as `default`: a ServiceAccount of its own, without the token";
                steps[0].push(Document {
                    comments: beside(why),
                    object: objects::service_account(&workload.namespace, account),
                });
            }
            if off.service_account_off {
                let why = "no workload on this ServiceAccount read its token: automount off on the ServiceAccount \
                           (restarts nothing; new pods come without the token)";
                let object = objects::service_account(&workload.namespace, &workload.service_account);
                if !steps[0].iter().any(|d| d.object == object) {
                    steps[0].push(Document { comments: beside(why), object });
                }
            }
            let spec = objects::automount_off(off.new_service_account.as_deref());
            if let Some(object) = objects::template_patch(workload, spec) {
                steps[1].push(Document {
                    comments: beside("never read its token: automountServiceAccountToken: false"),
                    object,
                });
            }
        }
        if !decision.project_legacy.is_empty() {
            let spec =
                objects::projected_token(&decision.project_legacy, &options.audience, options.token_expiration_seconds);
            if let Some(object) = objects::template_patch(workload, spec) {
                let why = "uses the API with a legacy Secret token that never expires: a projected token \
                           (audience, short expiry) at the same path. The mount there changes volume, a field \
                           another manager owns: apply this one with --force-conflicts, then drop the unmounted \
                           Secret volume from the manifests";
                steps[1].push(Document { comments: beside(why), object });
            }
        }
        if let Some(Ok(())) = decision.deny_api_egress {
            let why = "never dialled the API server: egress to kube-dns only";
            steps[2].push(Document { comments: beside(why), object: objects::deny_api_egress(workload) });
        }
    }
    let titles = [
        (STEP_SERVICE_ACCOUNTS, "ServiceAccounts (restart nothing)"),
        (STEP_WORKLOADS, "pod-template patches (roll the pods; server-side apply configurations)"),
        (STEP_NETWORK, "NetworkPolicies"),
    ];
    for ((step, title), documents) in titles.iter().zip(steps) {
        let _ = writeln!(out, "#\n# Step {step}: {title}: {} object(s)", documents.len());
        for document in documents {
            push_document(&mut out, &document);
        }
    }
    let allow = decide::allowlist(inventory, options);
    let mut comments = vec![
        format!("Step {STEP_ADMISSION}: refuse pods that keep the token outside the namespaces that need it."),
        "Allowed namespaces and the evidence that put them there:".to_owned(),
    ];
    comments.extend(allow.iter().map(|(ns, why)| format!("  {ns}: {}", why.join(", "))));
    comments.push("Add the namespace tokenwatch itself runs in: the agent reads its own token.".to_owned());
    let allowed: Vec<String> = allow.into_iter().map(|(ns, _)| ns).collect();
    push_document(&mut out, &Document { comments, object: objects::cluster_policy(&allowed, true) });
    out
}

fn header(inventory: &Inventory, options: &AdviseOptions) -> String {
    let since = inventory.observed_since.map(|t| rfc3339(&t)).unwrap_or_default();
    let at = inventory.generated_at.map(|t| rfc3339(&t)).unwrap_or_default();
    let observed = decide::span(
        inventory.observed_since.map_or(0, |t| t.seconds),
        inventory.generated_at.map_or(0, |t| t.seconds),
    );
    let short =
        if observed < options.window { " (SHORTER than the window: accepted with --accept-short-window)" } else { "" };
    format!(
        "# tokenwatch advise: ServiceAccount token hardening from runtime evidence.\n\
         # Evidence: nodes {nodes}; observed {observed} ({since} .. {at}); window {window}{short}.\n\
         #\n\
         # Apply one step at a time, in this order (a ServiceAccount change restarts no pod: running pods keep\n\
         # the token they have until they restart, so nothing breaks before step 2):\n\
         #   kubectl apply --server-side --field-manager=tokenwatch-advise -f advice.yaml -l {STEP_LABEL}=STEP\n\
         #  1. {STEP_SERVICE_ACCOUNTS}: create the dedicated ServiceAccounts, turn automount off on those nobody uses.\n\
         #  2. Canary: where a ServiceAccount now has automount off, restart ONE pod of each of its workloads\n\
         #     (kubectl -n NS delete pod POD) and watch it: readiness, logs (\"unable to load in-cluster configuration\",\n\
         #     \"no configuration has been provided\" mean it needs the token), `tokenwatch alerts --rule token-read`.\n\
         #  3. {STEP_WORKLOADS}: the pod-template patches (which also move workloads off `default`) roll the rest\n\
         #     one pod at a time: the first new pod is the canary of the others (kubectl rollout status; kubectl\n\
         #     rollout undo to go back). Each sets only the fields shown; fold them into the manifests your CD applies.\n\
         #  4. {STEP_NETWORK}: after the token change holds, namespace by namespace. They allow DNS only: tokenwatch\n\
         #     sees API-server connects, not other egress, so add the workload's other destinations first.\n\
         #  5. {STEP_ADMISSION}: the Kyverno ClusterPolicy, last (set validationFailureAction: Audit to try it first).\n",
        nodes = printable(&inventory.nodes.join(", ")),
        observed = human(observed),
        window = human(options.window),
    )
}

/// One `# line` of comment. What it says comes from the inventory, so from
/// the nodes (executable paths, names): a line end in it would end the
/// comment and start YAML the operator applies, so it is escaped.
fn comment(out: &mut String, line: &str) {
    let _ = writeln!(out, "# {}", printable(line));
}

fn push_document(out: &mut String, document: &Document) {
    out.push_str("---\n");
    for line in &document.comments {
        comment(out, line);
    }
    match yaml_serde::to_string(&document.object) {
        Ok(yaml) => out.push_str(&yaml),
        Err(error) => {
            let _ = writeln!(out, "# (could not render this object: {error})");
        }
    }
}

/// `namespace/Kind/name (ServiceAccount sa)`.
pub fn full_name(workload: &WorkloadInventory) -> String {
    let (kind, name) = workload.workload.as_ref().map_or(("?", "?"), |w| (w.kind.as_str(), w.name.as_str()));
    format!("{}/{kind}/{name} (ServiceAccount {})", workload.namespace, workload.service_account)
}

/// The evidence in one line.
pub fn evidence(workload: &WorkloadInventory, inventory: &Inventory) -> String {
    let token = if workload.token_mounts.is_empty() {
        if workload.token_mounted {
            "token mounted".to_owned()
        } else {
            "no token mounted".to_owned()
        }
    } else {
        format!("token: {}", workload.token_mounts.iter().map(mount).collect::<Vec<_>>().join(", "))
    };
    format!(
        "{token}; token reads: {}; API-server connects: {}; observed {} on {}; pods seen {}, running {}",
        usage(workload.token_reads.as_ref()),
        usage(workload.api_server_connects.as_ref()),
        human(decide::observed_for(workload, inventory)),
        if workload.nodes.is_empty() { "-".to_owned() } else { workload.nodes.join(", ") },
        workload.pods_seen,
        workload.pods_running,
    )
}

fn mount(m: &TokenMount) -> String {
    let containers = m.containers.join(",");
    match TokenMountKind::try_from(m.kind).unwrap_or(TokenMountKind::Unspecified) {
        TokenMountKind::DefaultAutomount => format!("default automount at {} ({containers})", m.mount_path),
        TokenMountKind::Projected => {
            let audience = if m.audience.is_empty() { "API server" } else { m.audience.as_str() };
            let expiry = if m.expiration_seconds == 0 { 3600 } else { m.expiration_seconds };
            format!("projected (audience {audience}, {expiry}s) at {} ({containers})", m.mount_path)
        }
        TokenMountKind::LegacySecret => {
            format!("legacy Secret {} (never expires) at {} ({containers})", m.secret_name, m.mount_path)
        }
        TokenMountKind::Unspecified => format!("unknown at {}", m.mount_path),
    }
}

fn usage(usage: Option<&Usage>) -> String {
    match usage.filter(|u| u.count > 0) {
        None => "none".to_owned(),
        Some(u) => format!(
            "{} by {} ({} .. {})",
            u.count,
            u.binaries.join(", "),
            u.first_seen.map(to_the_second).unwrap_or_default(),
            u.last_seen.map(to_the_second).unwrap_or_default()
        ),
    }
}

/// A time as RFC 3339 to the second: what a reader of the advice needs,
/// and all a metrics store keeps (`advise --prometheus` says the same).
fn to_the_second(time: pbjson_types::Timestamp) -> String {
    rfc3339(&pbjson_types::Timestamp { nanos: 0, ..time })
}

/// The advice in words, including what is not advised and why.
fn verdicts(workload: &WorkloadInventory, decision: &Decision, options: &AdviseOptions) -> Vec<String> {
    if decision.too_new {
        return vec![format!("none yet: observed for less than the {} window", human(options.window))];
    }
    let kind = workload.workload.as_ref().map_or("", |w| w.kind.as_str());
    let patchable = objects::template_path(kind).is_some();
    let mut lines = Vec::new();
    match &decision.disable_automount {
        Some(off) => {
            let mut line = "never read its token: automountServiceAccountToken: false".to_owned();
            if let Some(account) = &off.new_service_account {
                let _ = write!(line, ", and its own ServiceAccount {account} instead of `default`");
            }
            if off.service_account_off {
                let _ = write!(line, ", and off on ServiceAccount {}", workload.service_account);
            }
            lines.push(line);
        }
        None if decision.needs_token => lines.push("needs its token (reads it or dials the API): keeps it".to_owned()),
        None => lines.push("no token mounted: nothing to take away".to_owned()),
    }
    if !decision.project_legacy.is_empty() {
        lines.push(format!(
            "dials the API with a legacy Secret token: projected token (audience {}, {}s) instead",
            options.audience, options.token_expiration_seconds
        ));
    }
    let template_change = decision.disable_automount.is_some() || !decision.project_legacy.is_empty();
    if template_change && !patchable {
        lines.push(format!(
            "a {kind}'s pod template cannot be patched here: make the change in its manifest and recreate it"
        ));
    }
    match &decision.deny_api_egress {
        Some(Ok(())) => lines.push("never dialled the API server: NetworkPolicy allowing DNS egress only".to_owned()),
        Some(Err(why)) => lines.push(format!("never dialled the API server, but no NetworkPolicy: {why}")),
        None => lines.push("dials the API server: no egress fence".to_owned()),
    }
    lines
}
