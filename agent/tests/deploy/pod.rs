//! The image, run by containerd through CRI with the DaemonSet's container
//! as rendered: its arguments, environment, security context (capabilities,
//! read-only root, no privilege escalation, RuntimeDefault seccomp) and
//! every mount. The test changes only what a test must: the API server is
//! the in-test one on loopback (a kubeconfig, since in-cluster config needs
//! HTTPS), the listeners are on loopback ports, and the pod shares the
//! node's network (the harness has no CNI).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_cri::v1::Mount;
use serde_json::Value;

use super::{agent_of, config_map_name};
use crate::support::{
    self,
    cri::{image::import_archive, Containerd, CustomContainer, PodSpec, Qos},
    manifests::{documents, object, render, strings, workspace_root},
    pki::Pki,
};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The image's name in the test's containerd.
const IMAGE: &str = "localhost/tokenwatch:test";

/// Builds the image from the binary under test, as `cargo xtask image`
/// builds it from the release one.
fn build_image(dir: &Path) -> PathBuf {
    let archive = dir.join("tokenwatch.oci.tar");
    let status = std::process::Command::new(workspace_root().join("deploy/image/build.sh"))
        .arg(env!("CARGO_BIN_EXE_tokenwatch"))
        .arg(IMAGE)
        .arg(&archive)
        .status()
        .expect("running deploy/image/build.sh");
    assert!(status.success(), "deploy/image/build.sh failed");
    archive
}

/// A free loopback port.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The agent's stdout lines from its CRI log (`TIME STREAM TAG LINE`,
/// partial lines joined).
fn stdout_lines(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let (mut lines, mut partial) = (Vec::new(), String::new());
    for line in text.lines() {
        let mut fields = line.splitn(4, ' ');
        let (_, stream, tag, body) = (fields.next(), fields.next(), fields.next(), fields.next().unwrap_or(""));
        if stream != Some("stdout") {
            continue;
        }
        partial.push_str(body);
        if tag == Some("F") {
            lines.push(std::mem::take(&mut partial));
        }
    }
    lines
}

/// Where each of the DaemonSet's volumes comes from in the test: host paths
/// as they are (the CRI socket and the state directory swapped for the
/// test's), the ConfigMap, the TLS Secret and the projected token written
/// into `dir`.
fn volume_source(volume: &Value, docs: &[Value], dir: &Path, containerd: &Containerd) -> PathBuf {
    let name = volume["name"].as_str().expect("a volume name");
    if let Some(path) = volume["hostPath"]["path"].as_str() {
        return match path {
            "/run/containerd/containerd.sock" => containerd.socket().to_owned(),
            "/var/lib/tokenwatch" => dir.join("state"),
            other => PathBuf::from(other),
        };
    }
    let out = dir.join(name);
    std::fs::create_dir_all(&out).expect("a volume directory");
    if volume["configMap"].is_object() {
        let data = &object(docs, "ConfigMap", config_map_name(docs))["data"];
        for (file, text) in data.as_object().expect("ConfigMap data") {
            std::fs::write(out.join(file), text.as_str().expect("text")).expect("write a ConfigMap file");
        }
    } else if volume["secret"].is_object() {
        let pki = Pki::new("tokenwatch-test-ca");
        let (cert, key) = pki.server(&["localhost", "127.0.0.1"]);
        for (file, pem) in [("tls.crt", &cert), ("tls.key", &key), ("ca.crt", &pki.ca_pem)] {
            std::fs::write(out.join(file), pem).expect("write a TLS file");
        }
    } else if volume["projected"].is_object() {
        std::fs::write(out.join("token"), "agent-own-projected-token").expect("write the agent's token");
        std::fs::write(out.join("ca.crt"), "").expect("write ca.crt");
        std::fs::write(out.join("namespace"), "tokenwatch").expect("write namespace");
    } else {
        panic!("the test does not know how to provide volume {volume}");
    }
    out
}

/// The DaemonSet's container as CRI config, plus the test's overrides.
fn agent_container(
    docs: &[Value],
    dir: &Path,
    containerd: &Containerd,
    overrides: &[(&str, String)],
) -> CustomContainer {
    let (pod, agent) = agent_of(docs);
    let security = &agent["securityContext"];
    let mut mounts = Vec::new();
    for mount in agent["volumeMounts"].as_array().expect("volumeMounts") {
        let volume =
            pod["volumes"].as_array().expect("volumes").iter().find(|v| v["name"] == mount["name"]).expect("a volume");
        let host = volume_source(volume, docs, dir, containerd);
        if volume["hostPath"]["type"] == "DirectoryOrCreate" {
            std::fs::create_dir_all(&host).expect("the state directory");
        }
        mounts.push(Mount {
            container_path: mount["mountPath"].as_str().expect("mountPath").to_owned(),
            host_path: host.display().to_string(),
            readonly: mount["readOnly"] == true,
            ..Default::default()
        });
    }
    let node = "test-node".to_owned();
    let mut envs: Vec<(String, String)> = agent["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| {
            let name = e["name"].as_str().expect("a name").to_owned();
            let value = if name == "NODE_NAME" {
                node.clone()
            } else {
                e["value"].as_str().unwrap_or("").replace("$(NODE_NAME)", &node)
            };
            (name, value)
        })
        .collect();
    envs.extend(overrides.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    CustomContainer {
        image: IMAGE.to_owned(),
        args: strings(&agent["args"]),
        envs,
        mounts,
        add_capabilities: strings(&security["capabilities"]["add"]),
        drop_capabilities: strings(&security["capabilities"]["drop"]),
        readonly_rootfs: security["readOnlyRootFilesystem"] == true,
        no_new_privs: security["allowPrivilegeEscalation"] == false,
        run_as_user: security["runAsUser"].as_i64(),
        runtime_default_seccomp: security["seccompProfile"]["type"] == "RuntimeDefault",
        automount_token: pod["automountServiceAccountToken"] != false,
    }
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn the_image_runs_with_the_daemonsets_privileges_and_sees_a_token_read_in_another_pod() {
    let _serial = support::serialise();
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = build_image(dir.path());
    let containerd = Containerd::start();
    import_archive(&containerd, &archive, IMAGE);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let api = runtime.block_on(support::fake_apiserver::FakeApiServer::start());
    let api_addr = api.url().trim_start_matches("http://").to_owned();

    // The agent reads its projected token to call the API server: both are
    // watched (the token path is the default one, the address an
    // endpoint), and neither may alert.
    let test_dir = dir.path().join("test-config");
    std::fs::create_dir_all(&test_dir).expect("test config dir");
    support::kubeconfig_with_user(
        &test_dir,
        api.url(),
        "{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}",
    );
    let metrics_port = free_port();
    let docs = documents(&render("deploy"));
    let mut container = agent_container(
        &docs,
        dir.path(),
        &containerd,
        &[
            ("TOKENWATCH_KUBECONFIG", "/etc/tokenwatch/test/kubeconfig".to_owned()),
            ("TOKENWATCH_API_SERVERS", api_addr),
            ("TOKENWATCH_GRPC_LISTEN", format!("127.0.0.1:{}", free_port())),
            ("TOKENWATCH_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}")),
            ("TOKENWATCH_RESCAN_INTERVAL_SECONDS", "1".to_owned()),
        ],
    );
    container.mounts.push(Mount {
        container_path: "/etc/tokenwatch/test".to_owned(),
        host_path: test_dir.display().to_string(),
        readonly: true,
        ..Default::default()
    });
    let mut spec = PodSpec::new("tokenwatch-agent");
    spec.namespace = "tokenwatch".to_owned();
    spec.service_account = "tokenwatch".to_owned();
    spec.container_name = "agent".to_owned();
    spec.qos = Qos::Burstable;
    spec.custom = Some(container);
    let agent = containerd.run_pod(&spec);
    let log = agent.log_path();
    let logged = |needle: &str| std::fs::read_to_string(&log).is_ok_and(|text| text.contains(needle));
    let attached = support::wait_for(TIMEOUT, || logged("hooks attached").then_some(()));
    assert!(
        attached.is_some(),
        "the agent did not attach its hooks:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );

    let victim = containerd.run_pod(&PodSpec::new("victim"));
    let watching = support::mount_ns_of(victim.pid());
    let watched = support::wait_for(TIMEOUT, || logged(&watching).then_some(()));
    assert!(
        watched.is_some(),
        "the victim's token is not watched:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (code, _, stderr) = victim.exec(&["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"]);
    assert_eq!(code, 0, "{stderr}");

    let alert = support::wait_for(TIMEOUT, || {
        stdout_lines(&log)
            .into_iter()
            .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
            .find(|alert| alert["kubernetes"]["pod"] == "victim" && alert["rule"] == "token-read")
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let alert = alert.unwrap_or_else(|| panic!("no alert for the victim's read; the agent's log:\n{text}"));
    assert_eq!(alert["container"]["id"], victim.container_id(), "{alert:#}");
    assert_eq!(alert["node"], "test-node", "NODE_NAME from the downward API: {alert:#}");

    let (status, _) = readyz(metrics_port);
    assert_eq!(status, 200, "the readiness probe's endpoint answers from inside the pod");
    let own: Vec<Value> = stdout_lines(&log)
        .into_iter()
        .filter_map(|line| serde_json::from_str::<Value>(&line).ok())
        .filter(|alert| alert["kubernetes"]["pod"] == "tokenwatch-agent" || alert["process"]["pid"] == agent.pid())
        .collect();
    assert!(own.is_empty(), "the agent alerted on its own token or API calls: {own:?}");
    drop(victim);
    drop(agent);
}

/// `GET /readyz` on the agent's metrics port.
fn readyz(port: u16) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    write!(stream, "GET /readyz HTTP/1.1\r\nHost: tokenwatch\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, response)
}
