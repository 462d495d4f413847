//! Reaching the token by another path than its own: a sibling container
//! through `/proc/<pid>/root`, a second mount of the volume, symlinks to
//! the file and to its directory, `..data`, and copies made with `cp` and
//! `dd` (the read of the original is what counts; the copy is not a token
//! file). The kernel judges the file opened, not the path, so each is one
//! alert naming the path the process passed.

use std::time::Duration;

use nix::sys::signal::Signal;
use tokenwatch_proto::v1::{alert::Evidence, Alert};

use super::{
    scene::{self, reads_in, Scene},
    support::{
        self,
        cri::{PodSpec, SA_MOUNT},
    },
    ALERT_TIMEOUT,
};

fn read_of(alert: &Alert) -> &tokenwatch_proto::v1::TokenRead {
    match &alert.evidence {
        Some(Evidence::TokenRead(read)) => read,
        _ => panic!("a token read: {alert:?}"),
    }
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn a_sibling_container_reading_the_token_through_proc_root_is_named_with_the_owner() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let spec = PodSpec { share_process_namespace: true, ..PodSpec::new("shared-5d8f7c9b4-q1w2e") };
    let pod = scene.run_pod(&spec);
    // The sidecar has no token mount of its own.
    let sidecar = pod.add_container("debug", &["sh", "-c", "while :; do sleep 1; done"], &[]);
    let agent = scene.agent(&[&pod]);
    // The token owner's init, as the sidecar sees it in the shared pid namespace.
    let status = std::fs::read_to_string(format!("/proc/{}/status", pod.pid())).expect("status");
    let ns_pid = status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .expect("NSpid")
        .to_owned();
    let path = format!("/proc/{ns_pid}/root{SA_MOUNT}/token");
    let (code, _, stderr) = sidecar.exec(&pod, &["cat", &path]);
    assert_eq!(code, 0, "the sidecar reads {path}: {stderr}");

    let by_sidecar = |alerts: &[Alert]| -> Vec<Alert> {
        alerts
            .iter()
            .filter(|a| a.rule == "token-read" && a.container.as_ref().is_some_and(|c| c.id == sidecar.id))
            .cloned()
            .collect()
    };
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| !by_sidecar(alerts).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let reads = by_sidecar(&stopped.alerts);
    assert_eq!(reads.len(), 1, "{}", scene::describe(&stopped.alerts));
    let alert = &reads[0];
    let k8s = alert.kubernetes.as_ref().expect("kubernetes");
    assert_eq!((k8s.pod.as_str(), k8s.container.as_str()), (spec.name.as_str(), "debug"), "the reader");
    let read = read_of(alert);
    assert_eq!(read.requested_path, path);
    assert_eq!(read.owner_pod, spec.name, "{alert:?}");
    assert_eq!(read.owner_containers, ["main"], "whose token it was: {alert:?}");
    assert!(reads_in(&stopped.alerts, &pod).is_empty(), "the owner read nothing");
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn symlinks_second_mounts_and_copies_of_the_token_are_caught_as_reads_of_the_original() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let mut spec = PodSpec::new("paths-5d8f7c9b4-q1w2e");
    // The token volume mounted a second time, elsewhere (a second
    // volumeMount of the same volume; the harness names it as kubelet does).
    let suffix: String = spec.uid.chars().filter(char::is_ascii_alphanumeric).take(5).collect();
    let volume = scene
        .containerd
        .dir()
        .join("pods")
        .join(&spec.uid)
        .join("volumes/kubernetes.io~projected")
        .join(format!("kube-api-access-{suffix}"));
    spec.extra_mounts.push((volume.display().to_string(), "/mnt/sa".to_owned()));
    let pod = scene.run_pod(&spec);
    let agent = scene.agent(&[&pod]);
    let token = format!("{SA_MOUNT}/token");
    let steps: [(&str, &str, &str); 7] = [
        ("ln -s {token} /tmp/tok && cat /tmp/tok", "cat", "/tmp/tok"),
        ("ln -s {dir} /tmp/sadir && cat /tmp/sadir/token", "cat", "/tmp/sadir/token"),
        ("cat /mnt/sa/token", "cat", "/mnt/sa/token"),
        ("cat /mnt/sa/..data/token", "cat", "/mnt/sa/..data/token"),
        (
            "cd {dir}/.. && cat ./serviceaccount/../serviceaccount/token",
            "cat",
            "./serviceaccount/../serviceaccount/token",
        ),
        ("cp {token} /tmp/copy && cat /tmp/copy >/dev/null", "cp", "{token}"),
        ("dd if={token} of=/tmp/dd 2>/dev/null && cat /tmp/dd >/dev/null", "dd", "{token}"),
    ];
    let fill = |s: &str| s.replace("{token}", &token).replace("{dir}", SA_MOUNT);
    for (script, _, _) in &steps {
        let (code, _, stderr) = pod.exec(&["sh", "-c", &fill(script)]);
        assert_eq!(code, 0, "{script}: {stderr}");
    }
    let arrived = agent.wait_for_alerts(ALERT_TIMEOUT, |alerts| reads_in(alerts, &pod).len() >= steps.len());
    std::thread::sleep(Duration::from_millis(800));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let reads = reads_in(&stopped.alerts, &pod);
    let seen: Vec<(String, String)> = reads
        .iter()
        .map(|a| (a.process.as_ref().map(|p| p.comm.clone()).unwrap_or_default(), read_of(a).requested_path.clone()))
        .collect();
    let wanted: Vec<(String, String)> = steps.iter().map(|(_, comm, path)| ((*comm).to_owned(), fill(path))).collect();
    assert_eq!(
        seen,
        wanted,
        "one alert per read of the original, none for the copies:\n{}",
        scene::describe(&stopped.alerts)
    );
    for alert in reads {
        let read = read_of(alert);
        assert!(read.resolved_path.contains("/..20") && read.resolved_path.ends_with("/token"), "{alert:?}");
        assert_eq!(read.owner_pod, spec.name, "{alert:?}");
    }
}
