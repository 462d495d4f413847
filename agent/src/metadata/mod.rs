//! The metadata stage: what the node knows about a process and its container,
//! and where the token files are.

pub mod cgroup;
pub mod container_fs;
pub mod cri;
pub mod enrich;
pub mod kube;
pub mod kubelet_volumes;
pub mod new_volume;
pub mod process;
pub mod process_cache;
pub mod redact;
pub mod scanner;
pub mod token_files;
