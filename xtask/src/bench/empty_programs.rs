//! The floor: empty programs on the hooks tokenwatch uses, attached where
//! and as the agent attaches its own, so that what the floor adds is the
//! dispatch into those hooks and the empty programs' own run, nothing else.
//!
//! Loaded and attached here through `bpf(2)` and `perf_event_open(2)`
//! rather than by bpftrace, for two reasons, both measured:
//! - bpftrace's empty probe is `r0 = 1; exit`. A syscall tracepoint's
//!   program that returns non-zero tells the kernel to go on and submit
//!   the record to the perf events open on the CPU (`perf_syscall_exit`),
//!   and bpftrace opens each probe's event on CPU 0 only: an operation's
//!   loop paid that submission or not by the CPU it ran on. tokenwatch's
//!   programs return 0 and never pay it. The floor so measured came out
//!   from +37 to +215 ns on an unwatched open over five runs, and above
//!   tokenwatch's own (+86 to +109), which runs more on the same hook, in
//!   all but one.
//! - bpftrace cannot attach cgroup programs, and the kernel's cgroup
//!   dispatch (the socket lock, the walk of the effective programs) is the
//!   dearest part of hooking a connect, paid by tokenwatch on every one.
//!
//! Tracepoints: `r0 = 0; exit`, on a perf event opened as aya opens the
//! agent's (the whole system, pid -1, CPU 0; the program runs on every CPU,
//! as it belongs to the tracepoint, not the CPU), attached by the
//! `PERF_EVENT_IOC_SET_BPF` ioctl (aya uses a perf link on 5.15+: both put
//! the program in the same per-tracepoint array). A tracepoint this kernel
//! lacks is skipped, as the agent skips it. Cgroup connect hooks:
//! `r0 = 1; exit` (allow) on the cgroup2 root by links, where the agent
//! attaches its own. Dropping [`EmptyPrograms`] closes every fd, which
//! detaches them all, on every path out of the bench.

use std::{
    ffi::CString,
    fs,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

use crate::setup::tracefs_events;

const _: () = assert!(cfg!(target_endian = "little"), "the instructions below are laid out little-endian");

/// `bpf(2)` commands and constants used here (`include/uapi/linux/bpf.h`).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `perf_event_open(2)` and its ioctls (`include/uapi/linux/perf_event.h`).
const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_ATTR_SIZE: u32 = 128;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;

/// `r0 = imm` (`BPF_ALU64 | BPF_MOV | BPF_K`), then `exit`, as a
/// little-endian machine lays out `struct bpf_insn`.
const fn returning(imm: u32) -> [u64; 2] {
    [0xb7 | ((imm as u64) << 32), 0x95]
}

/// Every empty program of the floor, attached while this lives.
pub struct EmptyPrograms {
    /// Links, perf events and programs; closing them detaches.
    _fds: Vec<OwnedFd>,
}

impl EmptyPrograms {
    /// Attaches an empty program to each of `tracepoints` (`category/name`,
    /// a name given twice gets two programs, as tokenwatch attaches two to
    /// io_uring's completion) and to the cgroup connect hooks.
    pub fn attach(tracepoints: &[&str]) -> Result<Self> {
        let mut fds = Vec::new();
        let events = tracefs_events().context("tracefs is not mounted (cargo xtask setup mounts it)")?;
        for tracepoint in tracepoints {
            let (_, name) = tracepoint.split_once('/').context("a tracepoint is `category/name`")?;
            let event_dir = events.join(tracepoint);
            if !event_dir.exists() {
                continue;
            }
            let program = load(name, BPF_PROG_TYPE_TRACEPOINT, 0, &returning(0))?;
            let event = open_tracepoint(&event_dir)?;
            // SAFETY: an ioctl on a perf event fd we own, with a program fd
            // we own as its argument.
            if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, program.as_raw_fd()) } != 0 {
                bail!("attaching an empty program to {tracepoint}: {}", std::io::Error::last_os_error());
            }
            fds.extend([event, program]);
        }
        let root = cgroup2_root()?;
        let cgroup = fs::File::open(&root).with_context(|| format!("opening {}", root.display()))?;
        for (name, attach_type) in [("connect4", BPF_CGROUP_INET4_CONNECT), ("connect6", BPF_CGROUP_INET6_CONNECT)] {
            let program = load(name, BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach_type, &returning(1))?;
            let link = link(&program, &cgroup, attach_type)?;
            fds.extend([link, program]);
        }
        Ok(EmptyPrograms { _fds: fds })
    }
}

/// Loads `instructions` as a program of `prog_type` named `name`, cut to
/// the kernel's 15 bytes (the statistics pass shows programs by name; the
/// agent's show whole, from their BTF).
fn load(name: &str, prog_type: u32, attach_type: u32, instructions: &[u64; 2]) -> Result<OwnedFd> {
    let license = CString::new("GPL").expect("no NUL");
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog_type);
    put_u32(&mut attr, 4, instructions.len() as u32);
    put_u64(&mut attr, 8, instructions.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    let name = &name.as_bytes()[..name.len().min(15)];
    attr[48..48 + name.len()].copy_from_slice(name);
    put_u32(&mut attr, 68, attach_type);
    bpf(BPF_PROG_LOAD, &attr).with_context(|| format!("loading an empty program for {}", String::from_utf8_lossy(name)))
}

/// Opens the tracepoint at `event` (its tracefs directory) for the whole
/// system on CPU 0, as aya does.
fn open_tracepoint(event: &Path) -> Result<OwnedFd> {
    let id: u64 = fs::read_to_string(event.join("id"))
        .with_context(|| format!("reading {}/id", event.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{}/id is not a number", event.display()))?;
    let mut attr = [0u8; PERF_ATTR_SIZE as usize];
    put_u32(&mut attr, 0, PERF_TYPE_TRACEPOINT);
    put_u32(&mut attr, 4, PERF_ATTR_SIZE);
    put_u64(&mut attr, 8, id);
    // SAFETY: `attr` is a zeroed `struct perf_event_attr` of the size it
    // declares, with the type and config set.
    let fd = unsafe { libc::syscall(libc::SYS_perf_event_open, attr.as_ptr(), -1, 0, -1, PERF_FLAG_FD_CLOEXEC) };
    if fd < 0 {
        bail!("perf_event_open on {}: {}", event.display(), std::io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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

fn put_u32(attr: &mut [u8], offset: usize, value: u32) {
    attr[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
}

fn put_u64(attr: &mut [u8], offset: usize, value: u64) {
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
    fn on_cgroup(cgroup: &fs::File, attach_type: u32) -> Result<u32> {
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

    /// `PERF_EVENT_IOC_QUERY_BPF`: how many programs the tracepoint runs.
    fn on_tracepoint(tracepoint: &str) -> Result<u32> {
        const PERF_EVENT_IOC_QUERY_BPF: libc::c_ulong = 0xc008_240a;
        let events = tracefs_events().context("tracefs is not mounted")?;
        let event = open_tracepoint(&events.join(tracepoint))?;
        // `struct perf_event_query_bpf`: ids_len 0, so only prog_cnt comes back.
        let mut query = [0u32; 2];
        // SAFETY: an ioctl on a perf event fd we own, into a buffer of the
        // struct's size with no room for ids (ids_len 0).
        if unsafe { libc::ioctl(event.as_raw_fd(), PERF_EVENT_IOC_QUERY_BPF, query.as_mut_ptr()) } != 0 {
            bail!("PERF_EVENT_IOC_QUERY_BPF: {}", std::io::Error::last_os_error());
        }
        Ok(query[1])
    }

    /// Each program is on its hook while the value lives, a connect goes
    /// through, and all are gone once it is dropped. Needs root and
    /// tracefs, as the bench.
    #[test]
    #[ignore = "needs root: loads BPF programs; run by cargo xtask test"]
    fn attaches_empty_programs_for_as_long_as_it_lives() -> Result<()> {
        let root = fs::File::open(cgroup2_root()?)?;
        let tracepoint = "syscalls/sys_exit_getppid";
        let counts = || -> Result<[u32; 3]> {
            Ok([
                on_cgroup(&root, BPF_CGROUP_INET4_CONNECT)?,
                on_cgroup(&root, BPF_CGROUP_INET6_CONNECT)?,
                on_tracepoint(tracepoint)?,
            ])
        };
        let before = counts()?;
        let floor = EmptyPrograms::attach(&[tracepoint, tracepoint])?;
        assert_eq!(counts()?, [before[0] + 1, before[1] + 1, before[2] + 2], "every program on its hook");
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect("127.0.0.1:9").context("the empty program allows the connect")?;
        drop(floor);
        assert_eq!(counts()?, before, "closing the fds detached them all");
        Ok(())
    }
}
