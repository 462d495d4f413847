use super::*;

const ID: &str = "4f1d2a8b9c0e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";
const UID: &str = "0b1f5e1c-3c9a-4d5e-9f00-1a2b3c4d5e6f";
const UID_: &str = "0b1f5e1c_3c9a_4d5e_9f00_1a2b3c4d5e6f";

/// Paths as real nodes write them in /proc/<pid>/cgroup (v1 and v2).
#[test]
fn real_world_paths() {
    let cases: Vec<(String, Option<Runtime>)> = vec![
        (format!("/kubepods/besteffort/pod{UID}/{ID}"), None),
        (format!("/kubepods/burstable/pod{UID}/{ID}"), None),
        (format!("/kubepods/pod{UID}/{ID}"), None),
        (format!("/kubelet/kubepods/besteffort/pod{UID}/{ID}"), None),
        (
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
            ),
            Some(Runtime::Containerd),
        ),
        (format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"), Some(Runtime::Containerd)),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{ID}.scope"),
            Some(Runtime::CriO),
        ),
        (
            format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope/"),
            Some(Runtime::Docker),
        ),
    ];
    for (path, runtime) in cases {
        let identity = identify_path(&path);
        assert_eq!(identity.container_id.as_deref(), Some(ID), "{path}");
        assert_eq!(identity.pod_uid.as_deref(), Some(UID), "{path}");
        assert_eq!(identity.runtime, runtime, "{path}");
    }
}

#[test]
fn not_containers() {
    for path in [
        "/",
        "/user.slice/user-0.slice/session-3.scope",
        "/system.slice/containerd.service",
        "/kubepods/besteffort",
        &format!("/kubepods/besteffort/pod{UID}"),
        &format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-conmon-{ID}.scope"
        ),
        &format!("/docker/{}", &ID[..63]),
    ] {
        assert_eq!(identify_path(path).container_id, None, "{path}");
    }
}

#[test]
fn a_container_outside_kubernetes_has_no_pod() {
    let identity = identify_path(&format!("/docker/{ID}"));
    assert_eq!(identity.container_id.as_deref(), Some(ID));
    assert_eq!(identity.pod_uid, None);
    let identity = identify_path(&format!("/system.slice/docker-{ID}.scope"));
    assert_eq!((identity.container_id.as_deref(), identity.runtime), (Some(ID), Some(Runtime::Docker)));
}

#[test]
fn kernel_pairs_unified_first_then_v1() {
    // Hybrid node, cgroupfs driver: the unified leaf is the root (empty) and
    // only the v1 pair names the container.
    let identity = identify([("", ""), (ID, &format!("pod{UID}"))]);
    assert_eq!(identity.container_id.as_deref(), Some(ID));
    assert_eq!(identity.pod_uid.as_deref(), Some(UID));
    assert_eq!(identify([("", ""), ("session-1.scope", "user.slice")]), CgroupIdentity::default());
}

#[test]
fn pod_uid_shapes() {
    assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
    assert_eq!(pod_uid(&format!("kubepods-besteffort-pod{UID_}.slice")).as_deref(), Some(UID));
    assert_eq!(pod_uid(&format!("kubepods-pod{UID_}.slice")).as_deref(), Some(UID));
    assert_eq!(pod_uid("pod1234"), None);
    assert_eq!(pod_uid("kubepods-besteffort.slice"), None);
}
