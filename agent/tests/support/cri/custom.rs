//! A container other than the harness's busybox reader: another image, its
//! arguments, environment, mounts and security context, as a manifest (the
//! agent's DaemonSet) asks for them.

use k8s_cri::v1::{Capability, ContainerConfig, ImageSpec, KeyValue, LinuxContainerSecurityContext, Mount};

use super::SA_MOUNT;

/// What replaces the harness's defaults in the container's config.
#[derive(Clone, Debug, Default)]
pub struct CustomContainer {
    /// The image (already imported).
    pub image: String,
    /// The image's entrypoint is kept; these are its arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub envs: Vec<(String, String)>,
    /// Mounts besides the token volume.
    pub mounts: Vec<Mount>,
    /// Capabilities added (names without `CAP_`) and dropped (`ALL`).
    pub add_capabilities: Vec<String>,
    /// Capabilities dropped.
    pub drop_capabilities: Vec<String>,
    /// Mount the root filesystem read-only.
    pub readonly_rootfs: bool,
    /// Set no_new_privs (allowPrivilegeEscalation: false).
    pub no_new_privs: bool,
    /// The uid to run as.
    pub run_as_user: Option<i64>,
    /// containerd's default seccomp profile (RuntimeDefault).
    pub runtime_default_seccomp: bool,
    /// Whether kubelet's default token volume is mounted
    /// (automountServiceAccountToken).
    pub automount_token: bool,
}

impl CustomContainer {
    /// Rewrites `config` (built for the reader) for this container.
    pub fn apply(&self, config: &mut ContainerConfig) {
        config.image = Some(ImageSpec { image: self.image.clone(), ..Default::default() });
        config.command = Vec::new();
        config.args.clone_from(&self.args);
        config.envs =
            self.envs.iter().map(|(key, value)| KeyValue { key: key.clone(), value: value.clone() }).collect();
        if !self.automount_token {
            config.mounts.retain(|mount| mount.container_path != SA_MOUNT);
        }
        config.mounts.extend(self.mounts.iter().cloned());
        let linux = config.linux.get_or_insert_with(Default::default);
        let namespaces = linux.security_context.as_ref().and_then(|s| s.namespace_options.clone());
        linux.security_context = Some(LinuxContainerSecurityContext {
            namespace_options: namespaces,
            capabilities: Some(Capability {
                add_capabilities: self.add_capabilities.clone(),
                drop_capabilities: self.drop_capabilities.clone(),
                ..Default::default()
            }),
            privileged: false,
            readonly_rootfs: self.readonly_rootfs,
            no_new_privs: self.no_new_privs,
            run_as_user: self.run_as_user.map(|value| k8s_cri::v1::Int64Value { value }),
            seccomp: self.runtime_default_seccomp.then(|| k8s_cri::v1::SecurityProfile {
                profile_type: k8s_cri::v1::security_profile::ProfileType::RuntimeDefault as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
}
