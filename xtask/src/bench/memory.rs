//! The agent's resident memory, idle (issue 8: "RSS under 64 MiB idle with
//! 1,000 pods cached"): once standalone, once with `pods` pods of its node
//! listed from an API server and held in its pod store.
//!
//! No kube-apiserver can be installed on the build machines, so the API is
//! the tests' stand-in (`agent/tests/support/fake_apiserver/`), included
//! here as is: it speaks the real list/watch protocol, so the agent's kube-rs
//! client and watcher do exactly what they do against a cluster (list, then
//! watch; one GET per ReplicaSet to name the Deployment; the
//! `default/kubernetes` Service and EndpointSlices for the API's addresses).
//! The pods look like what the API serves after admission and kubelet's
//! first status update, so the bytes the agent parses and keeps per pod are
//! realistic.

#[path = "../../../agent/tests/support/fake_apiserver/mod.rs"]
mod fake_apiserver;

use std::{
    fs,
    path::{Path, PathBuf},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use fake_apiserver::{FakeApiServer, Resource};

use super::agent::Agent;

/// The node the agent believes it runs on; every pod is scheduled there.
const NODE: &str = "bench-node";
/// Pods per Deployment (so per ReplicaSet): 1,000 pods are 100 workloads.
const REPLICAS: usize = 10;
/// Namespaces the workloads are spread over.
const NAMESPACES: usize = 10;
/// How long the agent may take to load its programs (and list the pods).
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The release agent's resident memory, idle: the figure
/// (`idle_with_pods_kib`) next to the standalone agent's, so the cost of the
/// pod cache itself is visible, with the proof that the pods were cached.
#[derive(Clone, Debug)]
pub struct MemoryFigures {
    /// VmRSS of the idle agent run `--standalone` (no Kubernetes API): the
    /// floor the programs, maps, runtime and gRPC server cost.
    pub idle_standalone_kib: u64,
    /// VmRSS of the idle agent after listing `pods` pods of its node (and
    /// resolving their owners): the target is under 64 MiB.
    pub idle_with_pods_kib: u64,
    /// VmHWM (peak RSS) of that agent: what the initial list costs at its
    /// height, which a memory limit must allow even if the idle RSS is lower.
    pub peak_with_pods_kib: u64,
    /// Pods the API server held for the agent's node.
    pub pods: usize,
    /// Pods the agent says it listed (`pod list complete` log line,
    /// `pods=N`): there is no metric of the pod store's size, and this line
    /// is written once every listed pod is in the store.
    pub pods_seen_by_agent: usize,
    /// ReplicaSet GETs the agent made to name each pod's Deployment (one per
    /// ReplicaSet when its owner cache works): proof the pods were processed,
    /// not only parsed.
    pub owner_lookups: usize,
    /// Wall time of the whole measurement (both agents).
    pub took: Duration,
}

/// Measures the idle RSS of `binary` (a release `tokenwatch`) standalone,
/// then against an in-process API server holding `pods` pods of its node.
/// `work` receives each run's spool, state, socket, kubeconfig and log
/// (`memory-standalone/`, `memory-pods/`). Needs root, as the agent does.
pub fn measure(binary: &Path, work: &Path, pods: usize) -> Result<MemoryFigures> {
    let started = Instant::now();

    let dir = scratch(work, "memory-standalone")?;
    let agent = Agent::start(binary, &dir, &["--standalone"])?;
    agent.wait_for_log("hooks attached", START_TIMEOUT)?;
    let standalone = agent.idle_rss();
    agent.stop()?;
    let standalone = standalone?;

    // The API server's tasks run on this runtime's worker while this thread
    // waits on the agent.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the fake API server's runtime")?;
    let api = runtime.block_on(FakeApiServer::start());
    populate(&api, pods)?;
    let dir = scratch(work, "memory-pods")?;
    let kubeconfig = write_kubeconfig(&dir, api.url())?;
    let kubeconfig = kubeconfig.to_str().context("the scratch directory's path is not UTF-8")?;
    let agent = Agent::start(binary, &dir, &["--kubeconfig", kubeconfig, "--node-name", NODE])?;
    let measured = (|| {
        agent.wait_for_log("hooks attached", START_TIMEOUT)?;
        let line = agent.wait_for_log("pod list complete", START_TIMEOUT)?;
        let seen = field(&line, "pods").with_context(|| format!("no `pods=N` in the log line `{line}`"))?;
        if seen != pods {
            bail!("the agent listed {seen} pods, the API server holds {pods}: {line}");
        }
        // The API's own addresses come from the Service and EndpointSlices.
        wait(START_TIMEOUT, || api.list_requests_of(Resource::EndpointSlices) > 0)
            .context("the agent did not list the API server's EndpointSlices")?;
        let rss = agent.idle_rss()?;
        Ok((seen, rss, agent.peak_rss()?))
    })();
    let owner_lookups = api.get_requests();
    agent.stop()?;
    drop(api);
    runtime.shutdown_timeout(Duration::from_secs(1));
    let (pods_seen_by_agent, idle_with_pods_kib, peak_with_pods_kib) = measured?;

    Ok(MemoryFigures {
        idle_standalone_kib: standalone,
        idle_with_pods_kib,
        peak_with_pods_kib,
        pods,
        pods_seen_by_agent,
        owner_lookups,
        took: started.elapsed(),
    })
}

/// An empty directory `name` under `work`.
fn scratch(work: &Path, name: &str) -> Result<PathBuf> {
    let dir = work.join(name);
    if dir.exists() {
        fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A kubeconfig for `server` with no credentials, as the tests write it.
fn write_kubeconfig(dir: &Path, server: &str) -> Result<PathBuf> {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: nobody, user: {{}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: nobody}}}}]\n\
         current-context: fake\n"
    );
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `default/kubernetes` (Service and EndpointSlice, as kube-apiserver keeps
/// them), then `pods` pods on [`NODE`]: Deployments of [`REPLICAS`] pods
/// spread over [`NAMESPACES`] namespaces, each ReplicaSet readable by GET.
fn populate(api: &FakeApiServer, pods: usize) -> Result<()> {
    api.add_service(from_json(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": "default", "name": "kubernetes",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"], "ipFamilies": ["IPv4"],
                 "ports": [{"name": "https", "protocol": "TCP", "port": 443, "targetPort": 6443}]},
    }))?);
    api.add_endpointslice(from_json(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": "kubernetes", "labels": {"kubernetes.io/service-name": "kubernetes"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["192.168.1.10"], "conditions": {"ready": true, "serving": true}}],
        "ports": [{"name": "https", "protocol": "TCP", "port": 6443}],
    }))?);
    for index in 0..pods {
        let workload = index / REPLICAS;
        let namespace = format!("team-{}", workload % NAMESPACES);
        let deployment = format!("service-{workload:03}");
        let replicaset = format!("{deployment}-{}", token(workload as u64, 10));
        if index % REPLICAS == 0 {
            api.add_replicaset(from_json(replicaset_json(&namespace, &replicaset, &deployment))?);
        }
        api.add_pod(from_json(pod_json(index, &namespace, &deployment, &replicaset))?);
    }
    Ok(())
}

/// A ReplicaSet owned by its Deployment, as the pod watcher GETs it.
fn replicaset_json(namespace: &str, name: &str, deployment: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"namespace": namespace, "name": name, "uid": uuid(fnv(name)),
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment,
                                 "uid": uuid(fnv(deployment)), "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": deployment}}},
    })
}

/// Pod `index` of `replicaset` as the API serves it once admitted, scheduled
/// and running: labels and annotations, the owner reference, the
/// `kube-api-access-*` projected volume admission adds (token, CA, namespace)
/// mounted in each container, one container or (every third pod) two, and
/// kubelet's status with container IDs.
fn pod_json(index: usize, namespace: &str, deployment: &str, replicaset: &str) -> Value {
    let seed = index as u64;
    let name = format!("{replicaset}-{}", token(seed ^ 0x5eed, 5));
    let access = format!("kube-api-access-{}", token(seed ^ 0xacce55, 5));
    let image = format!("registry.example.com/{namespace}/{deployment}:1.{}.0", index % 7);
    let mut names = vec!["app"];
    if index.is_multiple_of(3) {
        names.push("envoy");
    }
    let containers: Vec<Value> = names
        .iter()
        .map(|container| {
            let image = if *container == "app" { image.clone() } else { "docker.io/envoyproxy/envoy:v1.31.2".into() };
            json!({
                "name": container, "image": image, "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                        {"name": "LOG_LEVEL", "value": "info"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": access, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                                  "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
            })
        })
        .collect();
    let statuses: Vec<Value> = names
        .iter()
        .zip(&containers)
        .enumerate()
        .map(|(i, (container, spec))| {
            json!({
                "name": container, "image": spec["image"], "imageID": format!("sha256:{}", hex(seed * 2 + i as u64)),
                "containerID": format!("containerd://{}", hex(seed * 2 + i as u64 + 1_000_000)),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2025-11-20T08:00:05Z"}},
            })
        })
        .collect();
    let conditions = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        .map(|kind| json!({"type": kind, "status": "True", "lastTransitionTime": "2025-11-20T08:00:06Z"}));
    let pod_ip = format!("10.244.{}.{}", index / 250, index % 250 + 2);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "namespace": namespace, "name": name, "generateName": format!("{replicaset}-"), "uid": uuid(seed),
            "creationTimestamp": "2025-11-20T08:00:00Z",
            "labels": {"app": deployment, "app.kubernetes.io/name": deployment, "app.kubernetes.io/part-of": namespace,
                       "pod-template-hash": replicaset.rsplit('-').next()},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-11-20T07:59:00Z",
                            "prometheus.io/scrape": "true"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                                 "uid": uuid(fnv(replicaset)), "controller": true,
                                 "blockOwnerDeletion": true}],
        },
        "spec": {
            "nodeName": NODE, "serviceAccountName": deployment, "serviceAccount": deployment,
            "containers": containers,
            "volumes": [{"name": access, "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
            ]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler", "securityContext": {}, "enableServiceLinks": true,
            "priority": 0, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [
                {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            ],
        },
        "status": {
            "phase": "Running", "qosClass": "Burstable", "hostIP": "192.168.1.21", "hostIPs": [{"ip": "192.168.1.21"}],
            "podIP": pod_ip, "podIPs": [{"ip": pod_ip}], "startTime": "2025-11-20T08:00:01Z",
            "conditions": conditions,
            "containerStatuses": statuses,
        },
    })
}

/// `value` as a typed k8s-openapi object (what the fake server's controls take).
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_json::from_value(value).context("a generated Kubernetes object does not deserialise")
}

/// A deterministic pseudo-random 64-bit value (splitmix64) from `seed`.
fn mix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a of `text`: a stable seed from a name.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// `len` characters of the alphabet Kubernetes uses for generated names.
fn token(seed: u64, len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut state = mix(seed);
    (0..len)
        .map(|_| {
            state = mix(state);
            char::from(ALPHABET[(state % ALPHABET.len() as u64) as usize])
        })
        .collect()
}

/// A UUID-shaped UID from `seed`.
fn uuid(seed: u64) -> String {
    let (a, b) = (mix(seed), mix(!seed));
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

/// 64 hex digits (a container ID or an image digest) from `seed`.
fn hex(seed: u64) -> String {
    (0..4).map(|i| format!("{:016x}", mix(seed.wrapping_mul(4).wrapping_add(i)))).collect()
}

/// The value of `name=N` in a log line.
fn field(line: &str, name: &str) -> Option<usize> {
    let prefix = format!("{name}=");
    line.split_whitespace().find_map(|word| word.strip_prefix(&prefix)?.parse().ok())
}

/// Polls `done` every 100 ms until it holds or `timeout` passes.
fn wait(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_objects_deserialise_and_log_fields_parse() {
        let pod: k8s_openapi::api::core::v1::Pod =
            from_json(pod_json(3, "team-0", "service-000", "service-000-abcde12345")).expect("a Pod");
        let spec = pod.spec.expect("a spec");
        assert_eq!(spec.containers.len(), 2);
        assert_eq!(pod.status.and_then(|s| s.container_statuses).map(|s| s.len()), Some(2));
        assert_eq!(token(7, 10).len(), 10);
        assert_eq!(uuid(1).len(), 36);
        assert_eq!(hex(1).len(), 64);
        let line = "2025-11-29T13:00:00Z  INFO tokenwatch_agent::metadata::kube::watch: pod list complete \
                    pods=1000 deleted_while_unwatched=0";
        assert_eq!(field(line, "pods"), Some(1000));
    }
}
