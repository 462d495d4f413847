//! Token reads, every way a process in a pod reaches the token file: each
//! is exactly one `token-read` alert naming the pod's container, the
//! process, the path it passed and the syscall; the files next to the
//! token are no alert at all.

use tokenwatch_proto::v1::Alert;

use super::{
    helper,
    pod::{self, describe, pid_of, token, token_read, KubePod, Observed},
    stage,
    support::{self, actor::SA_DIR},
};

/// `AT_FDCWD`, the dirfd of a path not relative to a descriptor.
const AT_FDCWD: i32 = -100;

/// The pod's only alert (the settling read aside), which must be a
/// `token-read` of the token by `pid` passing `requested` to `syscall`.
fn one_read<'a>(pod: &KubePod, seen: &'a Observed, pid: u32, requested: &str, syscall: &str) -> &'a Alert {
    let alerts = pod.alerts(&seen.alerts);
    assert_eq!(alerts.len(), 1, "one alert for `{requested}`:\n{}\nlog:\n{}", describe(&alerts), seen.stderr);
    let alert = alerts[0];
    assert_read(pod, alert, pid, requested, syscall);
    alert
}

/// `alert` is a `token-read` of the pod's token by `pid` passing
/// `requested` to `syscall`, placed in the pod.
fn assert_read(pod: &KubePod, alert: &Alert, pid: u32, requested: &str, syscall: &str) {
    let json = serde_json::to_string(alert).unwrap_or_default();
    assert_eq!(alert.rule, "token-read", "{json}");
    assert_eq!(pid_of(alert), pid, "the reading process: {json}");
    pod.assert_placed(alert);
    let read = token_read(alert).unwrap_or_else(|| panic!("token-read evidence: {json}"));
    assert_eq!((read.requested_path.as_str(), read.syscall.as_str()), (requested, syscall), "{json}");
    assert_eq!(read.resolved_path, pod.actor.resolved_token_path(), "the file actually opened: {json}");
    assert!(read.watched_path.ends_with("/serviceaccount/token"), "{json}");
    assert!(read.fd >= 0, "the fd the open returned: {json}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_absolute_path() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    pod.actor.must(&format!("open {}", token()));
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, pod.actor.pid, &token(), "openat");
    let read = token_read(alert).expect("a read");
    assert_eq!((read.dirfd, read.flags.as_str()), (AT_FDCWD, "O_RDONLY|O_CLOEXEC"), "{alert:?}");
    let process = alert.process.as_ref().expect("process");
    assert_eq!(process.tid, process.pid, "the actor is single-threaded");
    assert_eq!(process.parents.first().map(|p| p.pid), Some(std::process::id()), "the test started the actor");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_relative_path_to_cwd() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    pod.actor.must(&format!("open-in {SA_DIR} token"));
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, pod.actor.pid, "token", "openat");
    assert_eq!(token_read(alert).map(|r| r.dirfd), Some(AT_FDCWD), "{alert:?}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_relative_path_to_dirfd() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let ran = pod.actor.run(&[helper::MARKER, "openat-dirfd", SA_DIR, "token"]);
    assert_eq!(ran.status, "0", "openat(dirfd, \"token\"): {ran:?}");
    let dirfd: i32 = ran.stdout.trim().strip_prefix("ok ").and_then(|d| d.parse().ok()).expect("the dirfd");
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, ran.pid, "token", "openat");
    assert_eq!(token_read(alert).map(|r| r.dirfd), Some(dirfd), "the directory's fd: {alert:?}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_through_data_dir() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let path = format!("{SA_DIR}/..data/token");
    pod.actor.must(&format!("open {path}"));
    let seen = pod.observe(agent);
    one_read(&pod, &seen, pod.actor.pid, &path, "openat");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_run_twin_of_var_run() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    assert_eq!(
        pod.actor.run_dir,
        std::path::Path::new("/run"),
        "/var/run must link to /run (as on Debian) for /run to be another path to the token"
    );
    pod.watched_by(agent);
    let path = format!("{}/token", pod.run_sa_dir());
    pod.actor.must(&format!("open {path}"));
    let seen = pod.observe(agent);
    one_read(&pod, &seen, pod.actor.pid, &path, "openat");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_via_proc_pid_root_from_host() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    // `/var/run` is an absolute link, which would resolve in the reader's
    // own root: the path names `/run` as the pod sees it.
    let path = format!("/proc/{}/root{}/token", pod.actor.pid, pod.run_sa_dir());
    std::fs::read(&path).expect("read the token through /proc/<pid>/root");
    let seen = pod.observe(agent);
    assert!(pod.alerts(&seen.alerts).is_empty(), "the pod read nothing:\n{}", describe(&seen.alerts));
    let me = std::process::id();
    let mine: Vec<&Alert> = seen
        .alerts
        .iter()
        .filter(|a| pid_of(a) == me && token_read(a).is_some_and(|r| r.requested_path == path))
        .collect();
    assert_eq!(mine.len(), 1, "one alert for the node process's read:\n{}", describe(&seen.alerts));
    let alert = mine[0];
    assert_eq!(alert.rule, "node-token-harvest", "a node process reading a pod's token: {alert:?}");
    let read = token_read(alert).expect("a read");
    assert_eq!(read.syscall, "openat");
    assert_eq!(read.resolved_path, pod.actor.resolved_token_path(), "the path inside the pod: {alert:?}");
    assert_eq!(read.owner_containers, [pod.container_id.clone()], "whose token it is, by id without CRI: {alert:?}");
    assert_eq!(read.owner_pod_uid, pod.uid, "{alert:?}");
    assert_ne!(alert.container.as_ref().map(|c| c.id.as_str()), Some(pod.container_id.as_str()));
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn openat2() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    pod.actor.must(&format!("openat2 {}", token()));
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, pod.actor.pid, &token(), "openat2");
    assert_eq!(token_read(alert).map(|r| r.flags.as_str()), Some("O_RDONLY|O_CLOEXEC"), "open_how's flags");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_from_non_main_thread() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let ran = pod.actor.run(&["__evade", "thread-read", &token()]);
    assert_eq!(ran.status, "0", "{ran:?}");
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, ran.pid, &token(), "openat");
    let process = alert.process.as_ref().expect("process");
    assert_ne!(process.tid, process.pid, "read by a thread that is not the leader, named by its process: {alert:?}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn open_from_vfork_child() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let ran = pod.actor.run(&[helper::MARKER, "vfork-read", &token()]);
    assert_eq!(ran.status, "0", "{ran:?}");
    let child: u32 = ran.stdout.trim().strip_prefix("ok ").and_then(|p| p.parse().ok()).expect("the child's pid");
    let seen = pod.observe(agent);
    // The child shared its parent's memory and was gone before the agent
    // could look at /proc: the kernel's record still names and places it.
    let alert = one_read(&pod, &seen, child, &token(), "openat");
    let parent = alert.process.as_ref().and_then(|p| p.parents.first()).map(|p| p.pid);
    assert_eq!(parent, Some(ran.pid), "the vforking process is the parent: {alert:?}");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn opath_open_then_reopen_via_proc_self_fd() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    let ran = pod.actor.run(&["__evade", "opath-reopen", &token()]);
    assert_eq!(ran.status, "0", "{ran:?}");
    let seen = pod.observe(agent);
    // Two opens, each an alert: the O_PATH one, then the real one through
    // the magic link.
    let alerts = pod.alerts(&seen.alerts);
    assert_eq!(alerts.len(), 2, "{}\nlog:\n{}", describe(&alerts), seen.stderr);
    assert_read(&pod, alerts[0], ran.pid, &token(), "openat");
    let opath = token_read(alerts[0]).expect("a read");
    assert!(opath.flags.contains("O_PATH"), "{:?}", alerts[0]);
    let reopen = token_read(alerts[1]).expect("a read");
    assert!(reopen.requested_path.starts_with("/proc/self/fd/"), "{:?}", alerts[1]);
    assert_read(&pod, alerts[1], ran.pid, &reopen.requested_path, "openat");
    assert!(!reopen.flags.contains("O_PATH"), "{:?}", alerts[1]);
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn io_uring_openat() {
    let _serial = support::serialise();
    if helper::io_uring_missing() {
        helper::unsupported("io_uring_openat", "io_uring_setup(2) returned ENOSYS");
        return;
    }
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    // Before 6.0 io_uring's completion record names no request (and 5.10's
    // io-wq workers are kernel threads outside the pod): the agent says it
    // goes without this hook there, and that is what this case then checks.
    // From 6.0 on the alert is required.
    if helper::kernel_before(6, 0) && agent.stderr().contains("hook skipped: token reads through io_uring go unseen") {
        helper::unsupported("io_uring_openat", "the agent reports io_uring opens unwatchable on this kernel");
        assert!(agent.stderr().contains("io_uring_complete"), "the log names the hook:\n{}", agent.stderr());
        return;
    }
    let ran = pod.actor.run(&["__evade", "uring-openat", &token()]);
    assert_eq!(ran.status, "0", "IORING_OP_OPENAT then a read through the ring: {ran:?}");
    let seen = pod.observe(agent);
    let alert = one_read(&pod, &seen, ran.pid, &token(), "io_uring_openat");
    let read = token_read(alert).expect("a read");
    assert_eq!((read.dirfd, read.flags.as_str()), (AT_FDCWD, "O_RDONLY|O_LARGEFILE"), "io_uring adds O_LARGEFILE");
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn harmless_files_next_to_the_token_do_not_alert() {
    let _serial = support::serialise();
    let stage = stage::shared();
    let agent = &stage.agent;
    let mut pod = KubePod::start();
    pod.watched_by(agent);
    for name in ["ca.crt", "namespace", "..data/ca.crt", "..data/namespace"] {
        pod.actor.must(&format!("open {SA_DIR}/{name}"));
    }
    // The settling read is itself a token read: it alerting shows the agent
    // was watching the pod when the other files were opened.
    let seen = pod.observe(agent);
    let alerts = pod.alerts(&seen.alerts);
    assert!(alerts.is_empty(), "ca.crt and namespace are no token:\n{}", describe(&alerts));
}

#[test]
#[ignore = "needs root: loads eBPF and makes namespaces and cgroups; run by cargo xtask test and vmtest"]
fn read_before_any_scan_found_the_volume() {
    let _serial = support::serialise();
    // Rescans an hour apart: only the scan at start-up, before the pod
    // existed. A container reading its token with its first instruction
    // is caught by the kernel's own match of a token volume's layout.
    stage::stop_shared();
    let agent = pod::start_agent(&["--rescan-interval-seconds", "3600"]);
    let mut pod = KubePod::start();
    pod.actor.must(&format!("open {}", token()));
    let seen = pod.observe(&agent);
    pod::stop(agent);
    let alert = one_read(&pod, &seen, pod.actor.pid, &token(), "openat");
    let read = token_read(alert).expect("a read");
    assert_eq!(read.owner_pod_uid, pod.uid, "the reader's own volume: {alert:?}");
    assert_eq!(read.owner_containers, [pod.container_id.clone()], "{alert:?}");
    // Not a scan's find (which names the configured path, under /var/run):
    // the volume's own entry, as the kernel's match reported it.
    assert_eq!(read.watched_path, format!("{}/token", pod.run_sa_dir()), "{alert:?}");
}
