//! Cgroup path parsing: cgroup directory names come from the kernel (any
//! bytes a container runtime, or a process moving itself, chose), so every
//! parser in `metadata::cgroup` must take any text, and whatever it accepts
//! must really be a container id (64 hex digits) or a pod uid (8-4-4-4-12
//! hex digits).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokenwatch_agent::metadata::cgroup::{self, CgroupIdentity};

fuzz_target!(|text: &str| {
    // A whole path, as in a line of /proc/<pid>/cgroup.
    check(&cgroup::identify_path(text));
    // Leaf and parent as the kernel sends them (split at the first NUL).
    let (leaf, parent) = text.split_once('\0').unwrap_or((text, ""));
    check(&cgroup::identify([(leaf, parent), (parent, leaf)]));
    if let Some(id) = cgroup::container_id_of(text.split('/')) {
        assert_container_id(id);
    }
    if let Some(uid) = cgroup::pod_uid(leaf) {
        assert_pod_uid(&uid);
    }
});

fn check(identity: &CgroupIdentity) {
    if let Some(id) = &identity.container_id {
        assert_container_id(id);
    } else {
        assert!(identity.pod_uid.is_none() && identity.runtime.is_none(), "a pod or runtime without a container");
    }
    if let Some(uid) = &identity.pod_uid {
        assert_pod_uid(uid);
    }
}

fn assert_container_id(id: &str) {
    assert!(id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()), "container id {id:?}");
}

fn assert_pod_uid(uid: &str) {
    let lengths: Vec<usize> = uid.split('-').map(str::len).collect();
    assert_eq!(lengths, [8, 4, 4, 4, 12], "pod uid {uid:?}");
    assert!(uid.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()), "pod uid {uid:?}");
}
