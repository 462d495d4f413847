//! Container cgroups as the systemd cgroup driver names them (kubeadm's
//! default): `kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`,
//! an 85-byte leaf. The kernel must keep the whole name, or no container id
//! is found. Root only; run by `cargo xtask test`.

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{
    actor::{Actor, SA_DIR},
    agent::AgentProcess,
    cgroup::TestCgroup,
};

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test"]
fn a_systemd_driver_container_cgroup_is_read_whole_and_names_the_container() {
    let _serial = support::serialise();
    let id = format!("{:064x}", u128::from(std::process::id()) << 64 | 0xfeed_beef);
    let uid = "3f2a9c1e-7b4d-4e8a-9c6f-0d1e2f3a4b5c";
    let parent = format!("kubepods-besteffort-pod{}.slice", uid.replace('-', "_"));
    let leaf = format!("cri-containerd-{id}.scope");
    assert_eq!(leaf.len(), 85);
    let cgroup = TestCgroup::create_nested(&parent, &leaf);
    let mut actor = Actor::spawn(&cgroup.procs_files());
    let agent = AgentProcess::start(&["--standalone".into(), "--dedup-window-seconds".into(), "0".into()]);
    actor.must(&format!("open {SA_DIR}/token"));
    let mine = |a: &tokenwatch_proto::v1::Alert| a.process.as_ref().is_some_and(|p| p.pid == actor.pid);
    let arrived = agent.wait_for_alerts(Duration::from_secs(15), |alerts| alerts.iter().any(mine));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "the read was missed:\n{}", stopped.stderr);
    let alert = stopped.alerts.iter().find(|a| mine(a)).expect("the alert");
    let container = alert.container.as_ref().expect("container context");
    if cgroup.has_v2 {
        assert_eq!(container.cgroup_names[0], leaf, "the whole leaf name, read in the kernel");
        assert_eq!(container.cgroup_names[1], parent, "the whole parent name");
    }
    assert_eq!(container.id, id, "the container id parsed from the systemd-style name: {alert:?}");
    assert_eq!(alert.kubernetes.as_ref().map(|k| k.pod_uid.as_str()), Some(uid), "the pod uid from the slice");
    drop(actor);
}
