//! The floor's cgroup hooks: an empty `cgroup/connect4` and
//! `cgroup/connect6` program on the root of the unified cgroup hierarchy,
//! where the agent attaches its own (`agent/src/kernel/cgroup_hooks.rs`).
//! Debian's bpftrace cannot attach cgroup programs, and without them the
//! floor left out the dearest part of what hooking a connect costs here:
//! the kernel's cgroup dispatch (the socket lock, the walk of the
//! effective programs), which tokenwatch pays on every connect.
//!
//! Loaded through the `bpf(2)` syscall itself, two instructions each
//! (`r0 = 1; exit`: allow), and attached by a BPF link, which the kernel
//! detaches when its fd closes: dropping [`EmptyCgroupConnect`] ends it,
//! on every path out of the bench.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::PathBuf,
};

use anyhow::{bail, Context, Result};

/// `bpf(2)` commands and constants used here (`include/uapi/linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;

/// `r0 = 1` (`BPF_ALU64 | BPF_MOV | BPF_K`, imm 1), then `exit`.
const ALLOW: [u64; 2] = [0xb7 | (1 << 32), 0x95];

/// The two empty programs, attached while this lives.
pub struct EmptyCgroupConnect {
    _links: [OwnedFd; 2],
    _programs: [OwnedFd; 2],
}

impl EmptyCgroupConnect {
    /// Loads both programs and attaches them to the unified hierarchy's root.
    pub fn attach() -> Result<Self> {
        let root = cgroup2_root()?;
        let cgroup = fs::File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        let connect4 = load("connect4", BPF_CGROUP_INET4_CONNECT)?;
        let connect6 = load("connect6", BPF_CGROUP_INET6_CONNECT)?;
        let link4 = link(&connect4, &cgroup, BPF_CGROUP_INET4_CONNECT)?;
        let link6 = link(&connect6, &cgroup, BPF_CGROUP_INET6_CONNECT)?;
        Ok(EmptyCgroupConnect { _links: [link4, link6], _programs: [connect4, connect6] })
    }
}

/// Loads the empty program for `attach_type` under `name`, as the agent's
/// programs are named (the statistics pass lists programs by name).
fn load(name: &str, attach_type: u32) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_CGROUP_SOCK_ADDR);
    put_u32(&mut attr, 4, ALLOW.len() as u32);
    put_u64(&mut attr, 8, ALLOW.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    attr[48..48 + name.len()].copy_from_slice(name.as_bytes());
    put_u32(&mut attr, 68, attach_type);
    bpf(BPF_PROG_LOAD, &attr).with_context(|| format!("loading an empty {name} program"))
}

/// Attaches `program` to `cgroup` by a link.
fn link(program: &OwnedFd, cgroup: &fs::File, attach_type: u32) -> Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, program.as_raw_fd() as u32);
    put_u32(&mut attr, 4, cgroup.as_raw_fd() as u32);
    put_u32(&mut attr, 8, attach_type);
    bpf(BPF_LINK_CREATE, &attr).context("attaching an empty cgroup connect program")
}

/// One `bpf(2)` call that returns a new fd.
fn bpf(command: libc::c_long, attr: &[u8; 128]) -> Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed `union bpf_attr` of the size passed, with
    // the command's fields set; the pointers in it (instructions, license)
    // outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_ptr(), attr.len() as u32) };
    if fd < 0 {
        bail!("bpf({command}): {}", std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put_u32(attr: &mut [u8; 128], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8; 128], offset: usize, value: u64) {
    attr[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
}

/// Where the unified (v2) cgroup hierarchy is mounted: the first `cgroup2`
/// line of this process's mount table, as the agent finds it.
fn cgroup2_root() -> Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            (after.split(' ').next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .context("no cgroup2 is mounted: the floor's cgroup connect hooks have nowhere to attach")
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use super::*;

    /// `BPF_PROG_QUERY`: how many programs of `attach_type` `cgroup` has.
    fn attached(cgroup: &fs::File, attach_type: u32) -> Result<u32> {
        const BPF_PROG_QUERY: libc::c_long = 16;
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, cgroup.as_raw_fd() as u32);
        put_u32(&mut attr, 4, attach_type);
        // SAFETY: a zeroed `union bpf_attr` with the query's fields set; no
        // id buffer, so the kernel writes back only the count, into `attr`.
        let ret = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, attr.as_mut_ptr(), attr.len() as u32) };
        if ret < 0 {
            bail!("BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
        }
        Ok(u32::from_ne_bytes([attr[24], attr[25], attr[26], attr[27]]))
    }

    /// Both programs are on the root while the value lives, let connects
    /// through, and are gone once it is dropped. Needs root, as the bench.
    #[test]
    fn attaches_allowing_programs_for_as_long_as_it_lives() -> Result<()> {
        let root = fs::File::open(cgroup2_root()?)?;
        let counts = || -> Result<[u32; 2]> {
            Ok([attached(&root, BPF_CGROUP_INET4_CONNECT)?, attached(&root, BPF_CGROUP_INET6_CONNECT)?])
        };
        let before = counts()?;
        let hooks = EmptyCgroupConnect::attach()?;
        assert_eq!(counts()?, [before[0] + 1, before[1] + 1], "one program more on each hook");
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect("127.0.0.1:9").context("the empty program allows the connect")?;
        drop(hooks);
        assert_eq!(counts()?, before, "closing the links detached both");
        Ok(())
    }
}
