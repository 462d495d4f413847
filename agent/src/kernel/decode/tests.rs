use std::mem::{size_of, zeroed};

use tokenwatch_common::{
    ConnectEvent, ConnectVia, EnforceAction, EventKind, OpenEvent, OpenSyscall, AF_INET, AF_INET6,
};

use super::*;

fn bytes_of<T: aya::Pod>(value: &T) -> Vec<u8> {
    // SAFETY: T is Pod; reading its bytes is always valid.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn put(dest: &mut [u8], text: &str) {
    dest[..text.len()].copy_from_slice(text.as_bytes());
    dest[text.len()] = 0;
}

fn open_event() -> OpenEvent {
    // SAFETY: integers and arrays only; all-zero is valid.
    let mut event: OpenEvent = unsafe { zeroed() };
    event.header.kind = EventKind::Open as u32;
    event.header.tgid = 42;
    event.header.tid = 43;
    event.header.uid = 1000;
    put(&mut event.header.comm, "cat");
    put(&mut event.header.cgroups.v2_leaf, "cri-containerd-abc.scope");
    event.header.ns_pid = 7;
    event.header.ns_level = 1;
    event.header.ancestor_count = 2;
    event.header.ancestors[0].tgid = 41;
    event.header.ancestors[0].ns_pid = 1;
    event.header.ancestors[0].ns_level = 1;
    put(&mut event.header.ancestors[0].comm, "sh");
    event.header.ancestors[1].tgid = 40;
    put(&mut event.header.ancestors[1].comm, "containerd-shim");
    event.syscall = OpenSyscall::Openat2 as u32;
    event.dirfd = -100;
    event.result = 3;
    event.dev = 57;
    event.ino = 99;
    put(&mut event.requested_path, "token");
    for (slot, name) in ["token", "..data", "serviceaccount"].iter().enumerate() {
        put(&mut event.path.components[slot], name);
    }
    event.path.depth = 3;
    event.enforcement.action = EnforceAction::Killed as u32;
    event.enforcement.block = 2;
    event
}

#[test]
fn open_record_decodes_every_field() {
    let KernelEvent::Open(record) = decode(&bytes_of(&open_event())).expect("valid") else {
        panic!("not an open");
    };
    assert_eq!(record.identity.pid, 42);
    assert_eq!(record.identity.tid, 43);
    assert_eq!(record.identity.comm, "cat");
    assert_eq!(record.identity.cgroup_names[0], "cri-containerd-abc.scope");
    assert_eq!(record.identity.cgroup_names[1], "");
    assert_eq!((record.identity.ns_pid, record.identity.ns_level), (7, 1));
    let ancestors: Vec<(u32, u32, u32, &str)> =
        record.identity.ancestors.iter().map(|a| (a.pid, a.ns_pid, a.ns_level, a.comm.as_str())).collect();
    assert_eq!(ancestors, [(41, 1, 1, "sh"), (40, 0, 0, "containerd-shim")]);
    assert_eq!(record.syscall, OpenSyscall::Openat2);
    assert_eq!(record.fd, 3);
    assert_eq!(record.requested_path, "token");
    assert_eq!(record.resolved_path, "/serviceaccount/..data/token");
    assert!(!record.resolved_path_truncated);
    assert_eq!(record.enforced, Enforced { action: EnforceAction::Killed, block: 2 });
}

#[test]
fn depth_beyond_the_array_is_clamped_and_zero_depth_is_root() {
    let mut event = open_event();
    event.path.depth = u32::MAX;
    event.path.truncated = 1;
    let KernelEvent::Open(record) = decode(&bytes_of(&event)).expect("valid") else { panic!("not an open") };
    assert!(record.resolved_path.ends_with("/serviceaccount/..data/token"));
    assert!(record.resolved_path_truncated);
    event.path.depth = 0;
    let KernelEvent::Open(record) = decode(&bytes_of(&event)).expect("valid") else { panic!("not an open") };
    assert_eq!(record.resolved_path, "/");
}

#[test]
fn connect_records_decode_v4_and_v6() {
    // SAFETY: as above.
    let mut event: ConnectEvent = unsafe { zeroed() };
    event.header.kind = EventKind::Connect as u32;
    event.family = AF_INET;
    event.port = 443;
    event.addr[..4].copy_from_slice(&[10, 96, 0, 1]);
    event.result = -115;
    event.via = ConnectVia::Syscall as u32;
    let KernelEvent::Connect(record) = decode(&bytes_of(&event)).expect("v4") else { panic!("not a connect") };
    assert_eq!(record.destination.to_string(), "10.96.0.1:443");
    assert_eq!(record.result, -115);
    assert_eq!(record.via, ConnectVia::Syscall);
    event.via = ConnectVia::CgroupSockAddr as u32;
    let KernelEvent::Connect(record) = decode(&bytes_of(&event)).expect("hook") else { panic!("not a connect") };
    assert_eq!(record.via, ConnectVia::CgroupSockAddr);
    event.via = 7;
    assert!(matches!(decode(&bytes_of(&event)), Err(DecodeError::Via(_))), "an unknown hook is refused");
    event.via = ConnectVia::Syscall as u32;

    event.family = AF_INET6;
    event.addr = std::net::Ipv6Addr::LOCALHOST.octets();
    let KernelEvent::Connect(record) = decode(&bytes_of(&event)).expect("v6") else { panic!("not a connect") };
    assert_eq!(record.destination.to_string(), "[::1]:443");

    event.family = 1;
    assert_eq!(decode(&bytes_of(&event)), Err(DecodeError::Family(1)));
}

#[test]
fn bad_records_are_refused_with_the_reason() {
    assert!(matches!(decode(&[1, 0]), Err(DecodeError::Short { kind: "event", .. })));
    let mut bytes = bytes_of(&open_event());
    bytes[0] = 7;
    assert_eq!(decode(&bytes), Err(DecodeError::Kind(UnknownValue(7))));
    let bytes = bytes_of(&open_event());
    assert!(matches!(decode(&bytes[..100]), Err(DecodeError::Short { kind: "open", got: 100, .. })));
    let mut event = open_event();
    event.syscall = 9;
    assert_eq!(decode(&bytes_of(&event)), Err(DecodeError::Syscall(UnknownValue(9))));
    let mut event = open_event();
    event.enforcement.action = 8;
    assert_eq!(decode(&bytes_of(&event)), Err(DecodeError::Action(UnknownValue(8))));
}

#[test]
fn an_unaligned_record_decodes_the_same_as_an_aligned_one() {
    let bytes = bytes_of(&open_event());
    let mut shifted = vec![0u8; bytes.len() + 1];
    shifted[1..].copy_from_slice(&bytes);
    let (aligned, unaligned) = (&bytes[..], &shifted[1..]);
    assert!(aligned.as_ptr().cast::<OpenEvent>().is_aligned() && !unaligned.as_ptr().cast::<OpenEvent>().is_aligned());
    assert_eq!(decode(unaligned), decode(aligned), "read in place and from a copy alike");
}
