//! deploy/ as a platform team installs it: every kustomization renders and
//! passes the Kubernetes schema validator, the rendered manifests ask only
//! for what the agent needs, and the image built here runs as a pod with
//! exactly the DaemonSet's security context and mounts and still sees a
//! token read in another pod (root only). No kube-apiserver can run here:
//! the pod's API server is the in-test one, on loopback.

mod support;

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;
use support::manifests::{all, documented_capabilities, documents, object, render, strings, KUSTOMIZATIONS};

#[test]
fn every_kustomization_renders_and_passes_the_kubernetes_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    for kustomization in KUSTOMIZATIONS {
        let file = dir.path().join(format!("{}.yaml", kustomization.replace('/', "_")));
        std::fs::write(&file, render(kustomization)).expect("write the rendered manifests");
        let output = Command::new("kubernetes-validate")
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("running kubernetes-validate (cargo xtask setup installs it)");
        assert!(
            output.status.success(),
            "{kustomization} does not validate:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The agent container of a rendered DaemonSet, and the pod spec.
fn agent_of(docs: &[Value]) -> (&Value, &Value) {
    let pod = &object(docs, "DaemonSet", "tokenwatch")["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container: the agent");
    (pod, &containers[0])
}

/// The value of environment variable `name` in `container`.
fn env<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array()?.iter().find(|e| e["name"] == name)
}

#[test]
fn the_manifests_ask_only_for_what_the_agent_needs() {
    let documented: BTreeSet<String> = documented_capabilities().into_iter().collect();
    assert!(!documented.is_empty(), "deploy/README.md documents the capabilities");
    for kustomization in KUSTOMIZATIONS {
        let docs = documents(&render(kustomization));
        let (pod, agent) = agent_of(&docs);
        let context = format!("{kustomization}: {agent:#}");
        for host in ["hostNetwork", "hostPID", "hostIPC"] {
            assert!(pod[host].is_null() || pod[host] == false, "{host} is on; {context}");
        }
        assert_eq!(pod["automountServiceAccountToken"], false, "{context}");
        assert_eq!(pod["priorityClassName"], "system-node-critical", "{context}");
        assert!(
            pod["tolerations"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["operator"] == "Exists" && t["key"].is_null())),
            "it tolerates every taint; {context}"
        );
        let security = &agent["securityContext"];
        assert_eq!(security["privileged"], false, "{context}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{context}");
        assert_eq!(security["readOnlyRootFilesystem"], true, "{context}");
        assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"], "{context}");
        let added: BTreeSet<String> = strings(&security["capabilities"]["add"]).into_iter().collect();
        assert_eq!(added, documented, "capabilities are exactly deploy/README.md's list; {context}");
        for resource in ["cpu", "memory"] {
            assert!(!agent["resources"]["requests"][resource].is_null(), "{resource} request; {context}");
            assert!(!agent["resources"]["limits"][resource].is_null(), "{resource} limit; {context}");
        }
        assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz", "{context}");
        assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz", "{context}");
        assert!(agent["ports"].as_array().is_some_and(|p| p.iter().any(|p| p["name"] == "metrics")), "{context}");
        let node = env(agent, "NODE_NAME").expect("NODE_NAME");
        assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{context}");

        // Host paths are read-only, but for the state directory.
        let mounts = agent["volumeMounts"].as_array().expect("volumeMounts");
        for volume in pod["volumes"].as_array().expect("volumes") {
            let name = volume["name"].as_str().expect("a name");
            let mount = mounts.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name} is unmounted"));
            if let Some(path) = volume["hostPath"]["path"].as_str() {
                let writable = path == "/var/lib/tokenwatch";
                assert_eq!(mount["readOnly"] == true, !writable, "hostPath {path}: read-only unless the state dir");
            }
            if let Some(sources) = volume["projected"]["sources"].as_array() {
                for token in sources.iter().map(|s| &s["serviceAccountToken"]).filter(|t| !t.is_null()) {
                    assert!(token["audience"].as_str().is_some_and(|a| !a.is_empty()), "an audience: {token}");
                    let expiry = token["expirationSeconds"].as_u64().expect("an expiry");
                    assert!(expiry <= 3600, "a short-lived token, not {expiry} s");
                }
            }
        }
        assert_eq!(object(&docs, "ServiceAccount", "tokenwatch")["automountServiceAccountToken"], false);

        // RBAC: read-only verbs, named resources, no secrets.
        for role in all(&docs, "ClusterRole").chain(all(&docs, "Role")) {
            for rule in role["rules"].as_array().expect("rules") {
                let verbs = strings(&rule["verbs"]);
                assert!(verbs.iter().all(|v| ["get", "list", "watch"].contains(&v.as_str())), "{rule}");
                let resources = strings(&rule["resources"]);
                assert!(!resources.is_empty() && !resources.iter().any(|r| r == "*" || r == "secrets"), "{rule}");
                assert!(!strings(&rule["apiGroups"]).iter().any(|g| g == "*"), "{rule}");
            }
        }

        // NetworkPolicy: in from the SIEM's namespace only; out to DNS, the
        // API server and (OTLP overlay) the collector only.
        let policies: Vec<&Value> = all(&docs, "NetworkPolicy").collect();
        assert!(!policies.is_empty(), "{kustomization} has a NetworkPolicy");
        let mut egress_ports = BTreeSet::new();
        for policy in &policies {
            for rule in policy["spec"]["ingress"].as_array().into_iter().flatten() {
                let from = rule["from"].as_array().expect("ingress names its peers");
                let namespace =
                    |peer: &Value| peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].clone();
                let ports: Vec<String> =
                    rule["ports"].as_array().into_iter().flatten().map(|p| p["port"].to_string()).collect();
                let scrape = kustomization.ends_with("prometheus-operator") && ports == ["\"metrics\""];
                assert!(
                    from.iter().all(|peer| namespace(peer) == "siem" || (scrape && namespace(peer) == "monitoring")),
                    "ingress only from the SIEM's namespace (and Prometheus's, to the metrics port only): {rule}"
                );
            }
            for rule in policy["spec"]["egress"].as_array().into_iter().flatten() {
                assert!(rule["to"].as_array().is_some_and(|to| !to.is_empty()), "egress names its peers: {rule}");
                egress_ports.extend(
                    rule["ports"].as_array().expect("egress names ports").iter().map(|p| p["port"].to_string()),
                );
            }
        }
        let mut expected = BTreeSet::from(["53".to_owned(), "443".to_owned(), "6443".to_owned()]);
        if kustomization.ends_with("otlp") {
            expected.insert("4317".to_owned());
        }
        assert_eq!(egress_ports, expected, "{kustomization}: out only to DNS, the API server, the collector");
    }
}

#[test]
fn the_base_serves_mutual_tls_only_on_a_pinned_image_and_the_overlay_adds_the_otlp_push() {
    let base = documents(&render("deploy"));
    let otlp = documents(&render("deploy/overlays/otlp"));
    let image = agent_of(&base).1["image"].as_str().expect("an image").to_owned();
    let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
    assert!(!tag.is_empty() && tag != "latest", "a pinned tag, never a moving one: {image}");
    assert_eq!(tag, env!("CARGO_PKG_VERSION"), "the agent's own version");
    let endpoint = env(agent_of(&otlp).1, "TOKENWATCH_OTLP_ENDPOINT").expect("the OTLP overlay sets an endpoint");
    assert!(endpoint["value"].as_str().is_some_and(|e| e.starts_with("https://")), "TLS to the collector: {endpoint}");
    let config = &object(&base, "ConfigMap", config_map_name(&base))["data"]["config.yaml"];
    let config = config.as_str().expect("config.yaml");
    assert!(config.contains("grpc-tls-cert:") && config.contains("host-proc: /host/proc"), "{config}");
    // Mutual TLS by default: the agent refuses a remote listener without it.
    assert!(config.contains("grpc-tls-client-ca: /etc/tokenwatch/tls/ca.crt"), "{config}");
    assert!(config.contains("grpc-listen: 0.0.0.0:50051"), "{config}");
}

#[test]
fn the_prometheus_operator_overlay_scrapes_every_agent_and_keeps_the_agents_labels() {
    let docs = documents(&render("deploy/overlays/prometheus-operator"));
    let monitor = object(&docs, "PodMonitor", "tokenwatch");
    let daemonset = object(&docs, "DaemonSet", "tokenwatch");
    assert_eq!(monitor["metadata"]["namespace"], daemonset["metadata"]["namespace"]);
    assert_eq!(
        strings(&monitor["spec"]["namespaceSelector"]["matchNames"]),
        [daemonset["metadata"]["namespace"].as_str().unwrap_or("")]
    );
    // It selects the agent's pods, by labels the pod template carries.
    let pod_labels = &daemonset["spec"]["template"]["metadata"]["labels"];
    let selector = monitor["spec"]["selector"]["matchLabels"].as_object().expect("matchLabels");
    assert!(!selector.is_empty() && selector.iter().all(|(k, v)| &pod_labels[k] == v), "{selector:?} vs {pod_labels}");
    // On the container's metrics port, keeping the agent's namespace and node labels.
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let (_, agent) = agent_of(&docs);
    let port = agent["ports"].as_array().into_iter().flatten().find(|p| p["name"] == endpoint["port"]);
    assert!(port.is_some(), "{endpoint} names a port of the agent");
    assert_eq!((&endpoint["path"], &endpoint["honorLabels"]), (&Value::from("/metrics"), &Value::from(true)));
    assert!(all(&docs, "NetworkPolicy").any(|p| p["metadata"]["name"] == "tokenwatch-prometheus"));
    let exported = env(agent, "TOKENWATCH_METRICS_INVENTORY").expect("the overlay turns the inventory's metrics on");
    assert_eq!(exported["value"], "true");
    let base = documents(&render("deploy"));
    assert!(env(agent_of(&base).1, "TOKENWATCH_METRICS_INVENTORY").is_none(), "off in the base");
}

/// The generated ConfigMap's name (kustomize appends a hash).
fn config_map_name(docs: &[Value]) -> &str {
    all(docs, "ConfigMap")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .find(|n| n.starts_with("tokenwatch-config"))
        .expect("the generated ConfigMap")
}

#[path = "deploy/pod.rs"]
mod pod;
