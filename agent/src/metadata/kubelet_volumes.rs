//! The token volumes kubelet has mounted on the node for the pods the API
//! put here, read from the node's mount table: each projected volume's
//! tmpfs at `<kubelet root>/pods/<uid>/volumes/kubernetes.io~projected/<volume>`
//! exists before any of the pod's containers runs. A custom
//! `serviceAccountToken` projection (a `path` of the pod's choosing, such
//! as `vault-token`) is watched on that one device by that name, so the
//! container's first read of it is seen, and the name the pod's author
//! chose matches nothing outside that pod's own volume.

use std::{collections::HashMap, sync::Arc};

use super::kube::{PodInfo, TokenSource};

/// The plugin directory of projected volumes under a pod's `volumes/`.
const PROJECTED: &str = "kubernetes.io~projected";

/// `(device, token file name)` of every custom projected token of `pods`
/// whose volume `mountinfo` (the node's mount table) shows mounted, the
/// device in the kernel's encoding. The default `token` is left out: the
/// kernel matches it by its layout on every volume already.
pub fn custom_token_volumes(mountinfo: &str, pods: &[Arc<PodInfo>]) -> Vec<(u32, String)> {
    let by_uid: HashMap<&str, &PodInfo> = pods.iter().map(|pod| (pod.uid.as_str(), pod.as_ref())).collect();
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let mut fields = line.split(' ');
        let (Some(device), Some(mount_point)) = (fields.nth(2), fields.nth(1)) else { continue };
        let is_tmpfs = line.split(" - ").nth(1).is_some_and(|rest| rest.starts_with("tmpfs "));
        let Some((uid, volume)) = projected_volume(mount_point).filter(|_| is_tmpfs) else { continue };
        let Some(pod) = by_uid.get(uid) else { continue };
        let Some(dev) = kernel_dev(device) else { continue };
        let names = pod
            .containers
            .iter()
            .flat_map(|c| &c.token_mounts)
            .filter(|mount| mount.volume == volume && mount.sub_path.is_none())
            .filter_map(|mount| match &mount.source {
                TokenSource::Projected { path, .. } => path.rsplit('/').next(),
                TokenSource::LegacySecret { .. } => None,
            })
            .filter(|name| !name.is_empty() && *name != "token");
        for name in names {
            if !found.contains(&(dev, name.to_owned())) {
                found.push((dev, name.to_owned()));
            }
        }
    }
    found
}

/// `(pod uid, volume name)` of a mount point
/// `.../pods/<uid>/volumes/kubernetes.io~projected/<volume>`.
fn projected_volume(mount_point: &str) -> Option<(&str, &str)> {
    let (_, after) = mount_point.rsplit_once("/pods/")?;
    let (uid, rest) = after.split_once('/')?;
    let volume = rest.strip_prefix("volumes/")?.strip_prefix(PROJECTED)?.strip_prefix('/')?;
    (!volume.is_empty() && !volume.contains('/')).then_some((uid, volume))
}

/// The kernel's encoding of a mount table's `major:minor`.
fn kernel_dev(text: &str) -> Option<u32> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse::<u32>().ok()? << 20) | (minor.parse::<u32>().ok()? & 0xf_ffff))
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
        assert_eq!(projected_volume(&format!("/k/pods/{A}/volumes/kubernetes.io~projected/v")), Some((A, "v")));
        assert_eq!(projected_volume(&format!("/k/pods/{A}/volumes/kubernetes.io~secret/v")), None);
        assert_eq!(projected_volume(&format!("/k/pods/{A}/volumes/kubernetes.io~projected/v/x")), None);
        let mountinfo = format!("1 1 0:60 / /k/pods/{A}/volumes/kubernetes.io~projected/vault-token rw - ext4 x rw\n");
        assert!(custom_token_volumes(&mountinfo, &[pod(A, "vault-token", "vault-token")]).is_empty(), "not a tmpfs");
    }
}
