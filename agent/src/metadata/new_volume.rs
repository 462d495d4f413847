//! Whose token it is when the kernel matched it on a token volume the last
//! scan had not found: a container reading its token with its first
//! instruction, before the scanner (every few seconds) has seen it. The
//! kernel knows such a file by its layout alone (`open::on_new_token_volume`
//! in the eBPF crate); this names its owner from what the node can still
//! tell at once.

use std::{
    fs,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::{cgroup::CgroupIdentity, container_fs::mountinfo_of, kubelet_volumes, token_files::WatchedFile};

/// The pod whose kubelet volume device `dev` (kernel encoding) is, from a
/// mount table: kubelet mounts each token volume before it starts any of
/// the pod's containers.
pub fn kubelet_volume_pod(mountinfo: &str, dev: u32) -> Option<String> {
    kubelet_volumes::mounted(mountinfo).find(|mount| mount.dev == dev).map(|mount| mount.pod_uid.to_owned())
}

/// What is known of a token at `resolved_path` on device `dev`, opened by
/// process `pid` whose cgroup says `reader`. Its owner is the pod kubelet
/// mounted the volume for (the node's mount table, `<proc>/1/mountinfo`);
/// without kubelet's mount (no kubelet, or a volume mounted in a private
/// namespace), the reader's own pod: a file laid out as a token volume in
/// the reader's mount namespace was mounted there for it.
pub fn watched_on_new_volume(
    proc: &Path,
    pid: u32,
    dev: u32,
    resolved_path: &str,
    reader: &CgroupIdentity,
) -> WatchedFile {
    let node_mounts = mountinfo_of(proc, 1);
    let kubelet_pod = kubelet_volume_pod(&node_mounts, dev);
    let readers_own = kubelet_pod.is_none() || kubelet_pod == reader.pod_uid;
    let mount_ns = fs::metadata(proc.join(pid.to_string()).join("ns/mnt")).map_or(0, |ns| ns.ino());
    let path = Path::new(resolved_path);
    WatchedFile {
        path: volume_entry(path),
        mount_ns,
        pid,
        pod_uid: kubelet_pod.or_else(|| reader.pod_uid.clone()),
        container_ids: reader.container_id.clone().filter(|_| readers_own).into_iter().collect(),
        volume_name: path.file_name().and_then(|name| name.to_str()).map(str::to_owned),
    }
}

/// The token's entry at its volume's root, which the reader's path led to:
/// `<volume>/..<timestamp>/token` is `<volume>/token`.
fn volume_entry(resolved: &Path) -> PathBuf {
    let in_timestamp_dir =
        resolved.parent().and_then(Path::file_name).is_some_and(|dir| dir.as_bytes().starts_with(b".."));
    match (resolved.parent().and_then(Path::parent), resolved.file_name()) {
        (Some(volume), Some(name)) if in_timestamp_dir => volume.join(name),
        _ => resolved.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
29 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
812 29 0:57 / /var/lib/kubelet/pods/3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b/volumes/kubernetes.io~projected/kube-api-access-x7k2p rw,relatime shared:400 - tmpfs tmpfs rw,size=4096k
813 29 0:58 / /run/user/0 rw - tmpfs tmpfs rw
814 29 0:59 / /var/lib/kubelet/pods/not-a-uid/volumes/kubernetes.io~projected/x rw - tmpfs tmpfs rw
";

    #[test]
    fn names_the_pod_kubelet_mounted_the_volume_for() {
        assert_eq!(kubelet_volume_pod(MOUNTINFO, 57).as_deref(), Some("3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b"));
        assert_eq!(kubelet_volume_pod(MOUNTINFO, 58), None, "not under pods/<uid>/volumes/");
        assert_eq!(kubelet_volume_pod(MOUNTINFO, 59), None, "not a pod uid");
        assert_eq!(kubelet_volume_pod(MOUNTINFO, (8 << 20) | 1), None);
    }

    #[test]
    fn without_kubelet_the_reader_owns_the_token_on_its_own_volume() {
        let proc = tempfile::tempdir().expect("tempdir");
        let reader = CgroupIdentity {
            container_id: Some("c".repeat(64)),
            pod_uid: Some("3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9c".to_owned()),
            runtime: None,
        };
        let path = "/run/secrets/kubernetes.io/serviceaccount/..2026_12_04_17_00_00.1/token";
        let file = watched_on_new_volume(proc.path(), 7, 57, path, &reader);
        assert_eq!(file.pod_uid, reader.pod_uid);
        assert_eq!(file.container_ids, vec!["c".repeat(64)]);
        assert_eq!(file.volume_name.as_deref(), Some("token"));
        assert_eq!(file.path, Path::new("/run/secrets/kubernetes.io/serviceaccount/token"), "the volume's entry");

        std::fs::create_dir_all(proc.path().join("1")).expect("mkdir");
        std::fs::write(proc.path().join("1/mountinfo"), MOUNTINFO).expect("write");
        let file = watched_on_new_volume(proc.path(), 7, 57, path, &reader);
        assert_eq!(file.pod_uid.as_deref(), Some("3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b"), "kubelet's word wins");
        assert!(file.container_ids.is_empty(), "the reader is another pod's container");
    }
}
