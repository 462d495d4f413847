//! The cgroup `connect4`/`connect6` programs: attached to the root of the
//! unified (v2) cgroup hierarchy, they see every connect on the node however
//! it was started (`connect(2)`, io_uring, TCP Fast Open), which the syscall
//! tracepoints alone do not.
//!
//! The root is found at run time from `/proc/self/mountinfo` (the first
//! `cgroup2` mount: `/sys/fs/cgroup` on a unified host,
//! `/sys/fs/cgroup/unified` on a hybrid one). A host without cgroup2 gets a
//! warning and the tracepoints only. The agent must see the host's
//! cgroup tree (the DaemonSet mounts the host's `/sys/fs/cgroup`): attached
//! under a private namespace's root, the programs would cover only the
//! agent's own cgroup; that is warned about when it can be told. Missing
//! `CAP_NET_ADMIN`, no cgroup2, or a refused attach cost these programs
//! only: the agent warns and keeps its tracepoints.

use std::{fs, path::PathBuf};

use aya::{
    programs::{CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};

use super::load_error::LoadError;

/// The programs, by name in the object; their section says the attach type.
/// The loader verifies them with the others (`loader::Hooks::load`): the
/// kernel asks for `CAP_NET_ADMIN` besides `CAP_BPF` for any networking
/// program type, and without it they are refused and the agent runs with the
/// syscall tracepoints only, rather than not at all.
pub const PROGRAMS: [&str; 2] = ["connect4", "connect6"];

/// Attaches both programs to the cgroup2 root; returns their names, or
/// nothing when the host has no cgroup2 hierarchy or they did not load.
pub fn attach(ebpf: &mut Ebpf) -> Result<Vec<&'static str>, LoadError> {
    if PROGRAMS.iter().any(|name| program(ebpf, name).map(|p| p.fd().is_err()).unwrap_or(true)) {
        return Ok(Vec::new());
    }
    let Some(root) = unified_root() else {
        tracing::warn!(
            "no cgroup2 hierarchy is mounted: connects made without connect(2) (io_uring, TCP Fast Open) go unseen"
        );
        return Ok(Vec::new());
    };
    let (own, host) = (fs::read_link("/proc/self/ns/cgroup"), fs::read_link("/proc/1/ns/cgroup"));
    if matches!((&own, &host), (Ok(own), Ok(host)) if own != host) {
        tracing::warn!(
            root = %root.display(),
            "the agent runs in a cgroup namespace of its own: the connect hooks cover only what lies below its root"
        );
    }
    let dir = fs::File::open(&root).map_err(|source| LoadError::CgroupRoot { path: root.clone(), source })?;
    let mut attached = Vec::new();
    for name in PROGRAMS {
        // A bpf_link (what aya makes on 5.7+) always lets other programs run
        // beside it; the kernel refuses any flag on it.
        match program(ebpf, name)?.attach(&dir, CgroupAttachMode::Single) {
            Ok(_) => attached.push(name),
            Err(error) => tracing::warn!(
                program = name,
                root = %root.display(),
                %error,
                "cgroup connect hook not attached: connects made without connect(2) go unseen"
            ),
        }
    }
    if !attached.is_empty() {
        tracing::info!(root = %root.display(), "cgroup connect hooks attached");
    }
    Ok(attached)
}

/// A cgroup socket-address program of the object, by name.
pub fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut CgroupSockAddr, LoadError> {
    ebpf.program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

/// Where this agent sees the unified (v2) cgroup hierarchy: the first
/// `cgroup2` mount in `/proc/self/mountinfo`. The enforcer finds pods'
/// cgroups below it.
pub fn unified_root() -> Option<PathBuf> {
    cgroup2_root(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The mount point of the first `cgroup2` filesystem in a mountinfo text.
fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let mount_point = before.split(' ').nth(4)?;
        (after.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_mount_on_hybrid_and_unified_hosts() {
        let hybrid = "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n\
                      27 25 0:24 / /sys/fs/cgroup/memory rw shared:10 - cgroup cgroup rw,memory\n";
        assert_eq!(cgroup2_root(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(unified), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root("27 25 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), None);
    }
}
