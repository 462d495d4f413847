//! A second container in a running pod, as kubelet starts a pod's other
//! containers: same sandbox, its own mount namespace, and (when the pod
//! shares its process namespace) the same pid namespace as its siblings.

use std::collections::HashMap;

use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, ContainerStatusRequest, CreateContainerRequest, ExecSyncRequest, ImageSpec,
    LinuxContainerConfig, LinuxContainerSecurityContext, Mount, StartContainerRequest,
};

use super::{info_pid, namespaces, pod_labels, Pod, IMAGE};

/// A container started next to the pod's first one.
#[derive(Clone, Debug)]
pub struct Sibling {
    /// Its container id.
    pub id: String,
    /// Its name in the pod.
    pub name: String,
    /// The host pid of its init.
    pub pid: u32,
}

impl Pod<'_> {
    /// Starts container `name` running `command` in this pod, with only
    /// `mounts` (host path, container path; read-only): no token volume.
    pub fn add_container(&self, name: &str, command: &[&str], mounts: &[(String, String)]) -> Sibling {
        let mut labels = pod_labels(&self.spec);
        labels.insert("io.kubernetes.container.name".to_owned(), name.to_owned());
        let mounts = mounts
            .iter()
            .map(|(host, container)| Mount {
                container_path: container.clone(),
                host_path: host.clone(),
                readonly: true,
                ..Default::default()
            })
            .collect();
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.to_owned(), attempt: 0 }),
            image: Some(ImageSpec { image: IMAGE.to_owned(), ..Default::default() }),
            command: command.iter().map(|c| (*c).to_owned()).collect(),
            mounts,
            labels,
            annotations: HashMap::from([("io.kubernetes.container.restartCount".to_owned(), "0".to_owned())]),
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                resources: None,
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(namespaces(&self.spec)),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut c = self.containerd.client();
        let request = CreateContainerRequest {
            pod_sandbox_id: self.sandbox_id.clone(),
            config: Some(config),
            sandbox_config: Some(self.sandbox_config.clone()),
        };
        let id = self.containerd.call("CreateContainer", c.create_container(request)).container_id;
        self.containerd.call("StartContainer", c.start_container(StartContainerRequest { container_id: id.clone() }));
        let status = self.containerd.call(
            "ContainerStatus",
            c.container_status(ContainerStatusRequest { container_id: id.clone(), verbose: true }),
        );
        let pid = info_pid(&status.info).unwrap_or_else(|| panic!("ContainerStatus gives no pid: {:?}", status.info));
        Sibling { id, name: name.to_owned(), pid }
    }
}

impl Sibling {
    /// Runs `cmd` in this container with CRI ExecSync: (exit code, stdout,
    /// stderr).
    pub fn exec(&self, pod: &Pod<'_>, cmd: &[&str]) -> (i32, String, String) {
        let mut c = pod.containerd.client();
        let request = ExecSyncRequest {
            container_id: self.id.clone(),
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            timeout: super::EXEC_TIMEOUT_SECONDS,
        };
        let answer = pod.containerd.call("ExecSync", c.exec_sync(request));
        (
            answer.exit_code,
            String::from_utf8_lossy(&answer.stdout).into_owned(),
            String::from_utf8_lossy(&answer.stderr).into_owned(),
        )
    }
}
