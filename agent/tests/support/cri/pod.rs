//! Pods as kubelet runs them, through CRI: RunPodSandbox, CreateContainer,
//! StartContainer, with kubelet's labels, its cgroup parents
//! (`/kubepods[/<qos>]/pod<uid>`, cgroupfs style) and the ServiceAccount
//! token volume mounted read-only at
//! `/var/run/secrets/kubernetes.io/serviceaccount`. Pods use the node's
//! network (`NamespaceMode::Node`), so no CNI is involved.
//!
//! Two ways to make a pod read its token:
//! * [`Pod::exec`]: CRI ExecSync, a new process in the container, as
//!   `kubectl exec` makes;
//! * [`Pod::trigger`]: the container's entrypoint itself (a child of it)
//!   reads the token, when the pod runs [`reader_command`] (the default of
//!   [`PodSpec::new`]). That command loops: when `/tmp/go` exists it removes
//!   it, runs `cat <token> >/dev/null` (busybox `sh` forks a `cat` child for
//!   it) and appends a line to `/tmp/reads`. `trigger` creates `/tmp/go`
//!   through `/proc/<init pid>/root` and waits until `/tmp/reads` grows.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, ContainerStatusResponse, CreateContainerRequest,
    ExecSyncRequest, ImageSpec, LinuxContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext,
    LinuxPodSandboxConfig, LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata, PodSandboxStatusRequest, PodSandboxStatusResponse, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StopContainerRequest, StopPodSandboxRequest,
};

use super::super::wait_for;

mod sibling;
use super::{cleanup, custom::CustomContainer, daemon::Containerd, token::TokenVolume, IMAGE, SA_MOUNT};
pub use sibling::Sibling;

/// How long [`Pod::trigger`] waits for the entrypoint to read the token.
const TRIGGER_TIMEOUT: Duration = Duration::from_secs(10);
/// ExecSync's own timeout, in seconds.
const EXEC_TIMEOUT_SECONDS: i64 = 20;

/// A pod's QoS class, which decides its cgroup parent as kubelet's cgroupfs
/// driver names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// `/kubepods/pod<uid>`.
    Guaranteed,
    /// `/kubepods/burstable/pod<uid>`.
    Burstable,
    /// `/kubepods/besteffort/pod<uid>`.
    BestEffort,
}

impl Qos {
    /// The pod's cgroup parent.
    pub fn cgroup_parent(self, uid: &str) -> String {
        match self {
            Qos::Guaranteed => format!("/kubepods/pod{uid}"),
            Qos::Burstable => format!("/kubepods/burstable/pod{uid}"),
            Qos::BestEffort => format!("/kubepods/besteffort/pod{uid}"),
        }
    }

    /// The `oom_score_adj` kubelet gives the class's containers (burstable's
    /// depends on the request; this is its top).
    fn oom_score_adj(self) -> i64 {
        match self {
            Qos::Guaranteed => -997,
            Qos::Burstable => 999,
            Qos::BestEffort => 1000,
        }
    }
}

/// What to run: one pod with one container.
#[derive(Clone, Debug)]
pub struct PodSpec {
    /// The pod's name.
    pub name: String,
    /// The pod's Kubernetes namespace.
    pub namespace: String,
    /// The pod's uid (a UUID).
    pub uid: String,
    /// The ServiceAccount; it is in the token's claims only (CRI carries it
    /// nowhere, as with kubelet).
    pub service_account: String,
    /// The container's name.
    pub container_name: String,
    /// A projected `serviceAccountToken` volume of its own besides the
    /// default one: (mountPath, file name), e.g.
    /// ("/var/run/secrets/tokens", "vault-token").
    pub projected: Option<(String, String)>,
    /// The container's command (its entrypoint, replacing the image's).
    pub command: Vec<String>,
    /// The QoS class (the cgroup parent).
    pub qos: Qos,
    /// More read-only bind mounts for the container: (host path, container
    /// path), e.g. a test helper binary and the host's libraries it needs.
    pub extra_mounts: Vec<(String, String)>,
    /// `shareProcessNamespace: true`: the pod's containers share one pid
    /// namespace (the sandbox's).
    pub share_process_namespace: bool,
    /// Another image, arguments, environment, mounts and security context
    /// for the container (e.g. the agent's own, as its DaemonSet asks).
    pub custom: Option<CustomContainer>,
}

impl PodSpec {
    /// Pod `name` in namespace `default` with a fresh uid, ServiceAccount
    /// `default`, container `main` running [`reader_command`], best effort.
    pub fn new(name: &str) -> PodSpec {
        PodSpec {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            uid: fresh_uid(),
            service_account: "default".to_owned(),
            container_name: "main".to_owned(),
            projected: None,
            command: reader_command(),
            qos: Qos::BestEffort,
            extra_mounts: Vec::new(),
            share_process_namespace: false,
            custom: None,
        }
    }
}

/// A fresh random UUID, from the kernel.
pub fn fresh_uid() -> String {
    fs::read_to_string("/proc/sys/kernel/random/uuid").expect("reading /proc/sys/kernel/random/uuid").trim().to_owned()
}

/// The entrypoint that reads the token when [`Pod::trigger`] asks.
pub fn reader_command() -> Vec<String> {
    let script = format!(
        "while :; do if [ -e /tmp/go ]; then rm -f /tmp/go; cat {SA_MOUNT}/token >/dev/null && echo read >>/tmp/reads; \
         fi; sleep 0.05; done"
    );
    vec!["sh".to_owned(), "-c".to_owned(), script]
}

/// A running pod; dropping it stops and removes it (best effort, no panic).
pub struct Pod<'c> {
    containerd: &'c Containerd,
    /// What the sandbox was run with; a sibling container needs it.
    sandbox_config: PodSandboxConfig,
    spec: PodSpec,
    sandbox_id: String,
    container_id: String,
    pid: u32,
    volume: TokenVolume,
    projected: Option<TokenVolume>,
    removed: bool,
}

/// kubelet's pod labels.
fn pod_labels(spec: &PodSpec) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".to_owned(), spec.name.clone()),
        ("io.kubernetes.pod.namespace".to_owned(), spec.namespace.clone()),
        ("io.kubernetes.pod.uid".to_owned(), spec.uid.clone()),
    ])
}

/// The node's network, the pod's IPC, the container's own PID namespace (as
/// kubelet sets them for a `hostNetwork` pod).
fn namespaces(spec: &PodSpec) -> NamespaceOption {
    let pid = if spec.share_process_namespace { NamespaceMode::Pod } else { NamespaceMode::Container };
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: pid as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Containerd {
    /// Runs `spec` as kubelet would and waits until its container runs.
    pub fn run_pod(&self, spec: &PodSpec) -> Pod<'_> {
        self.pod_uids.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(spec.uid.clone());
        let volume = TokenVolume::create(
            &self.dir().join("pods"),
            &spec.uid,
            &spec.namespace,
            &spec.name,
            &spec.service_account,
        );
        let projected = spec.projected.as_ref().map(|(_, file)| {
            TokenVolume::create_projected(&self.dir().join("pods"), &spec.uid, "vault-token", file, &volume.token)
        });
        let mut mounts = vec![Mount {
            container_path: SA_MOUNT.to_owned(),
            host_path: volume.dir.display().to_string(),
            readonly: true,
            ..Default::default()
        }];
        if let (Some((path, _)), Some(extra)) = (&spec.projected, &projected) {
            let host_path = extra.dir.display().to_string();
            mounts.push(Mount { container_path: path.clone(), host_path, readonly: true, ..Default::default() });
        }
        for (host_path, container_path) in &spec.extra_mounts {
            mounts.push(Mount {
                container_path: container_path.clone(),
                host_path: host_path.clone(),
                readonly: true,
                ..Default::default()
            });
        }
        let log_dir = self.dir().join("logs").join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid));
        let sandbox_config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: spec.name.clone(),
                uid: spec.uid.clone(),
                namespace: spec.namespace.clone(),
                attempt: 0,
            }),
            log_directory: log_dir.display().to_string(),
            labels: pod_labels(spec),
            annotations: HashMap::from([("kubernetes.io/config.source".to_owned(), "api".to_owned())]),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: spec.qos.cgroup_parent(&spec.uid),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces(spec)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.client();
        let request = RunPodSandboxRequest { config: Some(sandbox_config.clone()), runtime_handler: String::new() };
        let sandbox_id = self.call("RunPodSandbox", c.run_pod_sandbox(request)).pod_sandbox_id;

        let mut labels = pod_labels(spec);
        labels.insert("io.kubernetes.container.name".to_owned(), spec.container_name.clone());
        let mut config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: spec.container_name.clone(), attempt: 0 }),
            image: Some(ImageSpec { image: IMAGE.to_owned(), ..Default::default() }),
            command: spec.command.clone(),
            mounts,
            labels,
            annotations: HashMap::from([("io.kubernetes.container.restartCount".to_owned(), "0".to_owned())]),
            log_path: format!("{}/0.log", spec.container_name),
            linux: Some(LinuxContainerConfig {
                resources: Some(LinuxContainerResources {
                    cpu_shares: 2,
                    oom_score_adj: spec.qos.oom_score_adj(),
                    ..Default::default()
                }),
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(spec)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        if let Some(custom) = &spec.custom {
            custom.apply(&mut config);
        }
        let request = CreateContainerRequest {
            pod_sandbox_id: sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(sandbox_config.clone()),
        };
        let container_id = self.call("CreateContainer", c.create_container(request)).container_id;
        self.call("StartContainer", c.start_container(StartContainerRequest { container_id: container_id.clone() }));

        let mut pod = Pod {
            sandbox_config,
            containerd: self,
            spec: spec.clone(),
            sandbox_id,
            container_id,
            pid: 0,
            volume,
            projected,
            removed: false,
        };
        let status = pod.container_status();
        pod.pid = info_pid(&status.info)
            .unwrap_or_else(|| panic!("ContainerStatus (verbose) gives no pid: {:?}", status.info));
        pod
    }
}

/// The `pid` in a verbose status's `info` JSON.
fn info_pid(info: &HashMap<String, String>) -> Option<u32> {
    let value: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    value.get("pid")?.as_u64().and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0)
}

impl Pod<'_> {
    /// What the pod was made from.
    pub fn spec(&self) -> &PodSpec {
        &self.spec
    }

    /// The pod sandbox's id.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The container's id (64 hex digits).
    pub fn container_id(&self) -> &str {
        &self.container_id
    }

    /// The host pid of the container's init process (its entrypoint).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The container's log file (CRI format: time, stream, tag, line).
    pub fn log_path(&self) -> PathBuf {
        let spec = &self.spec;
        self.containerd
            .dir()
            .join("logs")
            .join(format!("{}_{}_{}", spec.namespace, spec.name, spec.uid))
            .join(&spec.container_name)
            .join("0.log")
    }

    /// The host pid of the sandbox's (pause) process.
    pub fn sandbox_pid(&self) -> u32 {
        let status = self.sandbox_status();
        info_pid(&status.info).unwrap_or_else(|| panic!("PodSandboxStatus (verbose) gives no pid: {:?}", status.info))
    }

    /// The token volume's directory on the host (the tmpfs).
    pub fn token_dir(&self) -> &Path {
        &self.volume.dir
    }

    /// The token volume.
    pub fn volume(&self) -> &TokenVolume {
        &self.volume
    }

    /// Rotates the default token volume as kubelet does; returns the new
    /// timestamped directory's name.
    pub fn rotate(&mut self) -> String {
        self.volume.rotate()
    }

    /// Rotates the projected token volume; panics if the pod has none.
    pub fn rotate_projected(&mut self) -> String {
        self.projected.as_mut().expect("the pod has a projected token volume").rotate()
    }

    /// What the token file holds.
    pub fn token(&self) -> &str {
        &self.volume.token
    }

    /// A path inside the container's root, from the host (through
    /// `/proc/<init pid>/root`).
    pub fn host_path(&self, path_in_container: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid)).join(path_in_container.trim_start_matches('/'))
    }

    /// Runs `cmd` in the container with CRI ExecSync (a new process, as
    /// `kubectl exec` makes): (exit code, stdout, stderr).
    pub fn exec(&self, cmd: &[&str]) -> (i32, String, String) {
        let mut c = self.containerd.client();
        let request = ExecSyncRequest {
            container_id: self.container_id.clone(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: EXEC_TIMEOUT_SECONDS,
        };
        let answer = self.containerd.call("ExecSync", c.exec_sync(request));
        (
            answer.exit_code,
            String::from_utf8_lossy(&answer.stdout).into_owned(),
            String::from_utf8_lossy(&answer.stderr).into_owned(),
        )
    }

    /// How many times the entrypoint has read the token on a trigger.
    pub fn reads(&self) -> usize {
        fs::read_to_string(self.host_path("/tmp/reads")).map_or(0, |r| r.lines().count())
    }

    /// Makes the entrypoint ([`reader_command`]) read the token once, and
    /// waits until it has; returns [`Self::reads`] after it.
    pub fn trigger(&self) -> usize {
        let before = self.reads();
        let go = self.host_path("/tmp/go");
        fs::write(&go, "").unwrap_or_else(|e| panic!("creating {}: {e}", go.display()));
        wait_for(TRIGGER_TIMEOUT, || Some(self.reads()).filter(|n| *n > before)).unwrap_or_else(|| {
            panic!(
                "the entrypoint did not read the token within {TRIGGER_TIMEOUT:?} (does it run reader_command()?); \
                 command: {:?}",
                self.spec.command
            )
        })
    }

    /// PodSandboxStatus, verbose.
    pub fn sandbox_status(&self) -> PodSandboxStatusResponse {
        let mut c = self.containerd.client();
        let request = PodSandboxStatusRequest { pod_sandbox_id: self.sandbox_id.clone(), verbose: true };
        self.containerd.call("PodSandboxStatus", c.pod_sandbox_status(request))
    }

    /// ContainerStatus, verbose.
    pub fn container_status(&self) -> ContainerStatusResponse {
        let mut c = self.containerd.client();
        let request = ContainerStatusRequest { container_id: self.container_id.clone(), verbose: true };
        self.containerd.call("ContainerStatus", c.container_status(request))
    }

    /// Stops and removes the container and the sandbox, unmounts and removes
    /// the token volume, removes the pod's cgroup directories. Panics if any
    /// step fails.
    pub fn remove(mut self) {
        self.removed = true;
        let errors = self.teardown();
        assert!(errors.is_empty(), "removing pod {}: {}", self.spec.name, errors.join("; "));
    }

    /// The steps of [`Self::remove`]; returns what failed.
    fn teardown(&mut self) -> Vec<String> {
        let (ctd, mut c) = (self.containerd, self.containerd.client());
        let timeout = Duration::from_secs(30);
        let (container_id, sandbox_id) = (self.container_id.clone(), self.sandbox_id.clone());
        let results = [
            ctd.try_call(
                timeout,
                c.stop_container(StopContainerRequest { container_id: container_id.clone(), timeout: 0 }),
            )
            .map(drop),
            ctd.try_call(timeout, c.remove_container(RemoveContainerRequest { container_id })).map(drop),
            ctd.try_call(timeout, c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: sandbox_id.clone() }))
                .map(drop),
            ctd.try_call(timeout, c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: sandbox_id }))
                .map(drop),
        ];
        let mut errors: Vec<String> = ["StopContainer", "RemoveContainer", "StopPodSandbox", "RemovePodSandbox"]
            .iter()
            .zip(results)
            .filter_map(|(call, result)| result.err().map(|e| format!("{call}: {e}")))
            .collect();
        // The projected volume's tmpfs lies under the pod directory that
        // removing the default volume deletes: unmount it first.
        if let Some(projected) = self.projected.as_mut() {
            projected.remove();
        }
        self.volume.remove();
        let left = cleanup::remove_pod_cgroups(&self.spec.uid);
        if !left.is_empty() {
            errors.push(format!("cgroup directories left: {left:?}"));
        }
        errors
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        if !self.removed {
            self.removed = true;
            let _ = self.teardown();
        }
    }
}
