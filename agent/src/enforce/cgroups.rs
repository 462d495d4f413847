//! Pods' and containers' cgroups on the unified (v2) hierarchy, found by
//! walking it: the directory of each pod (kubelet names it after the pod
//! uid, in the cgroupfs and the systemd shapes `metadata/cgroup` parses)
//! and, below it, one directory per container (named after the container
//! id). A cgroup's v2 id, which the programs read with
//! `bpf_get_current_cgroup_id()`, is its directory's inode number.

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::metadata::cgroup::{container_id, pod_uid};

/// Levels searched below the root for pod directories: kubepods, the QoS
/// class and the pod on cgroupfs; the same as slices on systemd; a few
/// more for a nested runtime.
const MAX_DEPTH: usize = 6;

/// One pod's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCgroup {
    /// The pod uid, dashed.
    pub uid: String,
    /// Its directory, where the fences are attached.
    pub dir: PathBuf,
    /// Its cgroup v2 id.
    pub cgroup: u64,
    /// Its containers' cgroups (the sandbox's too: it is a container).
    pub containers: Vec<ContainerCgroup>,
}

/// One container's cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The 64-hex-digit container id.
    pub id: String,
    /// Its cgroup v2 id.
    pub cgroup: u64,
    /// Its directory (whose `cgroup.procs` name its processes).
    pub dir: PathBuf,
}

/// Every pod cgroup below `root`. Directories that vanish while being
/// read are skipped: pods come and go.
pub fn scan(root: &Path) -> Vec<PodCgroup> {
    let mut pods = Vec::new();
    walk(root, 0, &mut pods);
    pods
}

fn walk(dir: &Path, depth: usize, pods: &mut Vec<PodCgroup>) {
    for (name, path, _) in subdirectories(dir) {
        match pod_uid(&name) {
            Some(uid) => {
                let Ok(meta) = fs::metadata(&path) else { continue };
                let containers = subdirectories(&path)
                    .into_iter()
                    .filter_map(|(name, dir, cgroup)| {
                        Some(ContainerCgroup { id: container_id(&name)?.to_owned(), cgroup, dir })
                    })
                    .collect();
                pods.push(PodCgroup { uid, dir: path, cgroup: meta.ino(), containers });
            }
            None if depth < MAX_DEPTH => walk(&path, depth + 1, pods),
            None => {}
        }
    }
}

/// A process of the cgroup at `dir`, if it has one the agent's pid
/// namespace can name: the kernel lists a process outside it as pid 0.
pub fn any_process(dir: &Path) -> Option<u32> {
    let procs = fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    procs.lines().filter_map(|line| line.trim().parse().ok()).find(|pid| *pid != 0)
}

/// (name, path, inode) of each subdirectory.
fn subdirectories(dir: &Path) -> Vec<(String, PathBuf, u64)> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let inode = entry.metadata().ok()?.ino();
            Some((name, entry.path(), inode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b1f5e1c-3c9a-4d5e-9f00-1a2b3c4d5e6f";
    const ID: &str = "4f1d2a8b9c0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn finds_pods_and_containers_in_cgroupfs_and_systemd_shapes() {
        let root = tempfile::tempdir().expect("tempdir");
        let cgroupfs = root.path().join(format!("kubepods/besteffort/pod{UID}"));
        fs::create_dir_all(cgroupfs.join(ID)).expect("mkdir");
        fs::create_dir_all(cgroupfs.join("not-a-container")).expect("mkdir");
        let systemd_uid = "1c2d3e4f-3c9a-4d5e-9f00-1a2b3c4d5e6f";
        let slice = root.path().join(format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
            systemd_uid.replace('-', "_")
        ));
        fs::create_dir_all(slice.join(format!("cri-containerd-{ID}.scope"))).expect("mkdir");
        fs::create_dir_all(root.path().join("system.slice/containerd.service")).expect("mkdir");

        let mut pods = scan(root.path());
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        let found: Vec<(&str, &Path, Vec<&str>)> = pods
            .iter()
            .map(|p| (p.uid.as_str(), p.dir.as_path(), p.containers.iter().map(|c| c.id.as_str()).collect()))
            .collect();
        assert_eq!(found, vec![(UID, cgroupfs.as_path(), vec![ID]), (systemd_uid, slice.as_path(), vec![ID])]);
        assert_eq!(pods[0].cgroup, fs::metadata(&cgroupfs).expect("stat").ino(), "the id is the inode");
        assert_eq!(pods[0].containers[0].cgroup, fs::metadata(cgroupfs.join(ID)).expect("stat").ino());
    }
}
