//! The enforcement fences (`ebpf/src/enforce.rs`): cgroup `connect4`/
//! `connect6` programs attached to the cgroup of each pod a block entry
//! covers, and the maps that say what they and the open exits refuse.
//!
//! Every attachment is a `bpf_link` owned by a [`FenceLinks`]: dropping it
//! (the pod or the policy no longer asks for it, or the agent exits, even
//! killed) detaches the fence. Nothing is pinned, so nothing the agent set
//! up outlives it.

use std::fs::File;

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData},
    programs::{cgroup_sock_addr::CgroupSockAddrLink, CgroupAttachMode},
    Ebpf,
};
use tokenwatch_common::{BinaryKey, CgroupEnforcement, POD_UID_LEN};

use super::{cgroup_hooks, load_error::LoadError};

/// The fence programs, by name in the object. Like the observing connect
/// hooks they need `CAP_NET_ADMIN`; the loader verifies them with the others,
/// and without them connects cannot be refused (token reads still can: that
/// path is the open tracepoints').
pub const FENCES: [&str; 2] = ["fence_connect4", "fence_connect6"];

/// The maps the enforcer keeps in step with the policy and the pods.
pub struct EnforceMaps {
    /// What each covered pod or container cgroup refuses.
    pub cgroups: BpfHashMap<MapData, u64, CgroupEnforcement>,
    /// Covered containers' first processes (host tgid), by cgroup id.
    pub inits: BpfHashMap<MapData, u64, u32>,
    /// Executables that slots listing binaries cover, naming their entry.
    pub binaries: BpfHashMap<MapData, BinaryKey, u32>,
    /// What each covered pod refuses, by the uid its cgroup's name spells.
    pub pods: BpfHashMap<MapData, [u8; POD_UID_LEN], CgroupEnforcement>,
    /// 1 while some entry blocks token reads (`READ_BLOCKS_MAP`).
    pub read_blocks: Array<MapData, u32>,
}

/// The fences on one cgroup; dropping this detaches them.
pub struct FenceLinks {
    _links: Vec<CgroupSockAddrLink>,
}

/// Attaches both fences to the cgroup directory `dir`.
pub fn attach(ebpf: &mut Ebpf, dir: &File) -> Result<FenceLinks, LoadError> {
    let mut links = Vec::new();
    for name in FENCES {
        let program = cgroup_hooks::program(ebpf, name)?;
        // A bpf_link (what aya makes on 5.7+) runs beside any other
        // program on the cgroup and its ancestors.
        let id = program.attach(dir, CgroupAttachMode::Single).map_err(|source| LoadError::Program { name, source })?;
        links.push(program.take_link(id).map_err(|source| LoadError::Program { name, source })?);
    }
    Ok(FenceLinks { _links: links })
}
