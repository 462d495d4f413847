//! The token volumes kubelet has mounted on the node for the pods the API
//! put here, read from the node's mount table: each projected volume's
//! tmpfs at `<kubelet root>/pods/<uid>/volumes/kubernetes.io~projected/<volume>`
//! exists before any of the pod's containers runs. A custom
//! `serviceAccountToken` projection (a `path` of the pod's choosing, such
//! as `vault-token`) is watched on that one device by that name, so the
//! container's first read of it is seen, and the name the pod's author
//! chose matches nothing outside that pod's own volume.

use std::{collections::HashMap, path::PathBuf, sync::Arc};

use super::{
    cgroup,
    container_fs::kernel_dev_text,
    kube::{PodInfo, TokenSource},
    token_files::DeclaredPath,
};

/// The plugin directory of projected volumes under a pod's `volumes/`.
const PROJECTED: &str = "kubernetes.io~projected";
/// The plugin directory of Secret volumes (legacy token Secrets).
const SECRET: &str = "kubernetes.io~secret";

/// A volume kubelet mounted for a pod, as the node's mount table shows it
/// at `<kubelet root>/pods/<uid>/volumes/<plugin>/<volume>`. The kubelet
/// root differs between distributions, so only the part from `pods/` on
/// is matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeletVolume<'a> {
    /// The mounted file system's device, in the kernel's encoding.
    pub dev: u32,
    /// Whether it is a tmpfs (projected and Secret volumes are).
    pub tmpfs: bool,
    /// The pod's uid.
    pub pod_uid: &'a str,
    /// `kubernetes.io~projected`, `kubernetes.io~secret`, ...
    pub plugin: &'a str,
    /// The pod spec's name for the volume.
    pub volume: &'a str,
}

/// Every pod volume `mountinfo` (a mount table) shows mounted.
pub fn mounted(mountinfo: &str) -> impl Iterator<Item = KubeletVolume<'_>> {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let (device, mount_point) = (fields.nth(2)?, fields.nth(1)?);
        let (_, after) = mount_point.rsplit_once("/pods/")?;
        let (pod_uid, rest) = after.split_once('/')?;
        let (plugin, volume) = rest.strip_prefix("volumes/")?.split_once('/')?;
        if !cgroup::is_uid(pod_uid) || volume.is_empty() || volume.contains('/') {
            return None;
        }
        let tmpfs = line.split(" - ").nth(1).is_some_and(|rest| rest.starts_with("tmpfs "));
        Some(KubeletVolume { dev: kernel_dev_text(device)?, tmpfs, pod_uid, plugin, volume })
    })
}

/// The token paths `pods`' specs declare, each with the devices of the
/// volume kubelet mounted for it, as `mountinfo` (the node's mount table)
/// shows them: a projected or Secret volume's tmpfs under the pod's own
/// directory. A path whose volume is not mounted (yet) is left out, and
/// so are `configured` paths, which every namespace resolves already.
pub fn declared_token_paths(mountinfo: &str, pods: &[Arc<PodInfo>], configured: &[PathBuf]) -> Vec<DeclaredPath> {
    let token_volumes: Vec<KubeletVolume<'_>> =
        mounted(mountinfo).filter(|m| m.tmpfs && (m.plugin == PROJECTED || m.plugin == SECRET)).collect();
    let mut declared: Vec<DeclaredPath> = Vec::new();
    for pod in pods {
        for mount in pod.containers.iter().flat_map(|c| &c.token_mounts) {
            let Some(path) = mount.token_path().map(PathBuf::from) else { continue };
            if configured.contains(&path) {
                continue;
            }
            let devices =
                token_volumes.iter().filter(|v| v.pod_uid == pod.uid && v.volume == mount.volume).map(|v| v.dev);
            // Two containers may mount different volumes at one path.
            match declared.iter_mut().find(|d| d.path == path && d.pod_uid == pod.uid) {
                Some(known) => {
                    for dev in devices {
                        if !known.devices.contains(&dev) {
                            known.devices.push(dev);
                        }
                    }
                }
                None => {
                    let devices: Vec<u32> = devices.collect();
                    if !devices.is_empty() {
                        declared.push(DeclaredPath { path, pod_uid: pod.uid.clone(), devices });
                    }
                }
            }
        }
    }
    declared
}

/// `(device, token file name)` of every custom projected token of `pods`
/// whose volume `mountinfo` (the node's mount table) shows mounted, the
/// device in the kernel's encoding. The default `token` is left out: the
/// kernel matches it by its layout on every volume already.
pub fn custom_token_volumes(mountinfo: &str, pods: &[Arc<PodInfo>]) -> Vec<(u32, String)> {
    let by_uid: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.uid.as_str(), pod.as_ref())).collect();
    let mut found = Vec::new();
    for mount in mounted(mountinfo).filter(|mount| mount.tmpfs && mount.plugin == PROJECTED) {
        let Some(pod) = by_uid.get(mount.pod_uid) else { continue };
        let names = pod
            .containers
            .iter()
            .flat_map(|c| &c.token_mounts)
            .filter(|token| token.volume == mount.volume && token.sub_path.is_none())
            .filter_map(|token| match &token.source {
                TokenSource::Projected { path, .. } => path.rsplit('/').next(),
                TokenSource::LegacySecret { .. } => None,
            })
            .filter(|name| !name.is_empty() && *name != "token");
        for name in names {
            if !found.contains(&(mount.dev, name.to_owned())) {
                found.push((mount.dev, name.to_owned()));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::kube::{ContainerInfo, ContainerKind, TokenMount};

    fn pod(uid: &str, volume: &str, path: &str) -> Arc<PodInfo> {
        let mount = TokenMount {
            mount_path: "/var/run/secrets/tokens".to_owned(),
            volume: volume.to_owned(),
            sub_path: None,
            source: TokenSource::Projected {
                audience: Some("vault".to_owned()),
                expiration_seconds: None,
                path: path.to_owned(),
            },
        };
        let container = ContainerInfo {
            name: "main".to_owned(),
            image: String::new(),
            kind: ContainerKind::Regular,
            token_mounts: vec![mount],
            container_id: None,
        };
        Arc::new(PodInfo {
            namespace: "ns".to_owned(),
            name: "p".to_owned(),
            uid: uid.to_owned(),
            service_account: "default".to_owned(),
            labels: Default::default(),
            workload: None,
            automount_service_account_token: None,
            containers: vec![container],
            deleted_at: None,
        })
    }

    const A: &str = "3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b";
    const B: &str = "4a1f2d3b-0c8e-4f72-9b30-1d6e7f8a9b0c";

    #[test]
    fn a_custom_projection_is_watched_on_its_own_volume_only() {
        let mountinfo = format!(
            "29 1 8:1 / / rw shared:1 - ext4 /dev/sda1 rw\n\
             812 29 0:57 / /var/lib/kubelet/pods/{A}/volumes/kubernetes.io~projected/vault-token rw - tmpfs tmpfs rw\n\
             813 29 0:58 / /var/lib/kubelet/pods/{B}/volumes/kubernetes.io~projected/app-config rw - tmpfs tmpfs rw\n\
             814 29 0:59 / /var/lib/kubelet/pods/{A}/volumes/kubernetes.io~empty-dir/cache rw - tmpfs tmpfs rw\n"
        );
        // Pod B's author names its "token" config.yaml: only B's own volume.
        let pods = [pod(A, "vault-token", "vault-token"), pod(B, "app-config", "sub/config.yaml")];
        let found = custom_token_volumes(&mountinfo, &pods);
        assert_eq!(found, [(57, "vault-token".to_owned()), (58, "config.yaml".to_owned())]);
        assert!(custom_token_volumes(&mountinfo, &[]).is_empty(), "pods the API did not put here: nothing");
        let default = [pod(A, "vault-token", "token")];
        assert!(custom_token_volumes(&mountinfo, &default).is_empty(), "`token` is matched by layout already");
    }

    #[test]
    fn only_projected_tmpfs_mounts_of_a_pod_count() {
        let projected = |mount_point: &str| {
            let line = format!("1 1 0:60 / {mount_point} rw - tmpfs tmpfs rw\n");
            let found = custom_token_volumes(&line, &[pod(A, "v", "vault-token")]);
            found.first().map(|(dev, _)| *dev)
        };
        assert_eq!(projected(&format!("/k/pods/{A}/volumes/kubernetes.io~projected/v")), Some(60));
        assert_eq!(projected(&format!("/k/pods/{A}/volumes/kubernetes.io~secret/v")), None);
        assert_eq!(projected(&format!("/k/pods/{A}/volumes/kubernetes.io~projected/v/x")), None);
        let mountinfo = format!("1 1 0:60 / /k/pods/{A}/volumes/kubernetes.io~projected/vault-token rw - ext4 x rw\n");
        assert!(custom_token_volumes(&mountinfo, &[pod(A, "vault-token", "vault-token")]).is_empty(), "not a tmpfs");
    }

    #[test]
    fn declared_paths_are_bound_to_their_pods_mounted_token_volumes() {
        let mountinfo = format!(
            "812 29 0:57 / /var/lib/kubelet/pods/{A}/volumes/kubernetes.io~projected/vault-token rw - tmpfs tmpfs rw\n\
             813 29 0:58 / /var/lib/kubelet/pods/{B}/volumes/kubernetes.io~secret/legacy rw - tmpfs tmpfs rw\n\
             814 29 8:1 /x /var/lib/kubelet/pods/{B}/volumes/kubernetes.io~projected/app-config rw - ext4 /dev/sda1 rw\n"
        );
        let mut legacy = pod(B, "legacy", "token");
        let container = &mut Arc::get_mut(&mut legacy).expect("own").containers[0];
        container.token_mounts[0].mount_path = "/etc".to_owned();
        container.token_mounts[0].source =
            TokenSource::LegacySecret { secret_name: "b-token".into(), path: "hostname".into() };
        let unmounted = pod(B, "app-config", "config.yaml");
        let pods = [pod(A, "vault-token", "vault-token"), legacy, unmounted];
        let configured = [PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")];
        let declared = declared_token_paths(&mountinfo, &pods, &configured);
        let got: Vec<(&str, &str, &[u32])> = declared
            .iter()
            .map(|d| (d.path.to_str().unwrap_or(""), d.pod_uid.as_str(), d.devices.as_slice()))
            .collect();
        assert_eq!(got, [("/var/run/secrets/tokens/vault-token", A, &[57][..]), ("/etc/hostname", B, &[58][..])]);
    }
}
