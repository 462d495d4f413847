//! Tests of the CRI harness (`support::cri`): a containerd of the test's own
//! runs real pods as kubelet would (labels, cgroup parents, the token volume),
//! their entrypoint and `exec`'d processes read the token, and nothing is
//! left once the harness is dropped, after a panic too. No cluster: there is
//! no kubelet and no API server; the harness plays kubelet's part over CRI.
//! Root only; run by `cargo xtask test`.

mod support;

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, UNIX_EPOCH},
};

use support::cri::{cleanup, token, Containerd, Pod, PodSpec, Qos, SA_MOUNT};

/// The tests run one at a time: each checks that no `kubepods` cgroup is
/// left, which another test's pods would break.
static SERIAL: Mutex<()> = Mutex::new(());

fn serialise() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One line for the test log (`--nocapture`): timings worth knowing.
#[expect(clippy::print_stderr, reason = "the timings are reported on the test's stderr")]
fn note(line: &str) {
    eprintln!("cri_harness: {line}");
}

/// What must be gone once a `Containerd` is dropped.
struct Traces {
    dir: PathBuf,
    socket: PathBuf,
    daemon: i32,
    processes: Vec<i32>,
    uids: Vec<String>,
    kubepods_before: Vec<PathBuf>,
    shim_parent_before: bool,
}

impl Traces {
    fn of(containerd: &Containerd, kubepods_before: Vec<PathBuf>, shim_parent_before: bool) -> Traces {
        Traces {
            dir: containerd.dir().to_owned(),
            socket: containerd.socket().to_owned(),
            daemon: containerd.pid().and_then(|p| i32::try_from(p).ok()).expect("containerd's pid"),
            processes: Vec::new(),
            uids: Vec::new(),
            kubepods_before,
            shim_parent_before,
        }
    }

    fn add(&mut self, pod: &Pod<'_>) {
        for pid in [pod.pid(), pod.sandbox_pid()] {
            self.processes.push(i32::try_from(pid).expect("a pid"));
        }
        self.uids.push(pod.spec().uid.clone());
    }

    fn assert_gone(&self) {
        assert!(!cleanup::alive(self.daemon), "containerd {} still runs", self.daemon);
        assert_eq!(cleanup::shims_of(&self.socket), Vec::<i32>::new(), "shims of {} still run", self.socket.display());
        for pid in &self.processes {
            assert!(!cleanup::alive(*pid), "pod process {pid} still runs");
        }
        assert_eq!(cleanup::mounts_under(&self.dir), Vec::<PathBuf>::new(), "mounts left under the harness's dir");
        assert!(!self.dir.exists(), "{} is left", self.dir.display());
        for uid in &self.uids {
            assert_eq!(cleanup::pod_cgroup_dirs(uid), Vec::<PathBuf>::new(), "cgroups of pod {uid} left");
        }
        if self.kubepods_before.is_empty() {
            assert_eq!(cleanup::kubepods_dirs(), Vec::<PathBuf>::new(), "kubepods cgroup directories left");
        }
        if !self.shim_parent_before {
            assert!(!Path::new("/run/containerd").exists(), "/run/containerd is left");
        }
    }
}

/// Asserts that every line of `/proc/<pid>/cgroup` (each v1 hierarchy and
/// the unified one, `0::`) names `expected`, and returns the lines.
fn assert_cgroup(pid: u32, expected: &str) -> String {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("reading /proc/<pid>/cgroup");
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2).expect("a hierarchy:controllers:path line");
        assert_eq!(path, expected, "cgroup line `{line}` of pid {pid}; all:\n{text}");
    }
    for hierarchy in ["0::", ":memory:", ":pids:", ":name=systemd:"] {
        assert!(text.lines().any(|l| l.contains(hierarchy)), "no {hierarchy} line for pid {pid}:\n{text}");
    }
    assert_eq!(text.lines().count(), cleanup::cgroup_roots().len(), "one line per hierarchy:\n{text}");
    text
}

#[test]
fn atomic_writer_names_are_kubelets() {
    let at = UNIX_EPOCH + Duration::new(1_795_936_774, 123_456_789);
    assert_eq!(token::atomic_writer_dir_name(at), "..2026_11_29_07_19_34.123456789");
    let token = token::fake_token("ns", "pod", "uid", "sa");
    assert_eq!(token.split('.').count(), 3, "JWT-shaped: {token}");
    assert!(!token.contains(['=', '+', '/']), "base64url without padding: {token}");
}

#[test]
#[ignore = "needs root: starts containerd, runs a pod, mounts tmpfs"]
fn a_pod_runs_as_kubelet_runs_it() {
    let _serial = serialise();
    let (kubepods_before, shim_parent_before) = (cleanup::kubepods_dirs(), Path::new("/run/containerd").exists());
    let containerd = Containerd::start();
    let timings = containerd.timings();
    let mut traces = Traces::of(&containerd, kubepods_before, shim_parent_before);

    let spec = PodSpec {
        namespace: "tokenwatch-test".to_owned(),
        service_account: "reader-sa".to_owned(),
        container_name: "reader".to_owned(),
        ..PodSpec::new("token-reader")
    };
    let started = Instant::now();
    let pod = containerd.run_pod(&spec);
    let pod_start = started.elapsed();
    traces.add(&pod);

    // What CRI says: kubelet's labels and the token mount.
    let sandbox = pod.sandbox_status().status.expect("a sandbox status");
    let pod_labels = [
        ("io.kubernetes.pod.name", "token-reader"),
        ("io.kubernetes.pod.namespace", "tokenwatch-test"),
        ("io.kubernetes.pod.uid", spec.uid.as_str()),
    ];
    assert_eq!(sandbox.labels.len(), 3, "{:?}", sandbox.labels);
    for (key, value) in pod_labels {
        assert_eq!(sandbox.labels.get(key).map(String::as_str), Some(value), "sandbox label {key}");
    }
    let metadata = sandbox.metadata.expect("sandbox metadata");
    assert_eq!((metadata.name.as_str(), metadata.namespace.as_str()), ("token-reader", "tokenwatch-test"));
    assert_eq!(metadata.uid, spec.uid);
    let status = pod.container_status().status.expect("a container status");
    assert_eq!(status.labels.get("io.kubernetes.container.name").map(String::as_str), Some("reader"));
    for (key, value) in pod_labels {
        assert_eq!(status.labels.get(key).map(String::as_str), Some(value), "container label {key}");
    }
    assert_eq!(status.mounts.len(), 1, "{:?}", status.mounts);
    let mount = &status.mounts[0];
    assert_eq!(mount.container_path, SA_MOUNT);
    assert_eq!(Path::new(&mount.host_path), pod.token_dir());
    assert!(mount.readonly, "{mount:?}");
    assert!(
        pod.token_dir().ends_with(format!(
            "pods/{}/volumes/kubernetes.io~projected/kube-api-access-{}",
            spec.uid,
            &spec.uid[..5]
        )),
        "{}",
        pod.token_dir().display()
    );

    // The cgroups, as the agent will parse them (cgroupfs driver, hybrid).
    assert_cgroup(pod.pid(), &format!("/kubepods/besteffort/pod{}/{}", spec.uid, pod.container_id()));
    assert_cgroup(pod.sandbox_pid(), &format!("/kubepods/besteffort/pod{}/{}", spec.uid, pod.sandbox_id()));

    // In the container, /var/run -> /run: the mount is at /run/secrets/….
    let mountinfo = fs::read_to_string(format!("/proc/{}/mountinfo", pod.pid())).expect("the container's mountinfo");
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/run/secrets/kubernetes.io/serviceaccount"))
        .unwrap_or_else(|| panic!("no token mount in the container's mountinfo:\n{mountinfo}"));
    assert!(line.contains(" ro,") && line.contains(" - tmpfs "), "{line}");

    // The entrypoint reads the token on a trigger. (The token's atime cannot
    // show it: reads through a read-only mount never update atime.)
    let real_token = pod.volume().real_token_path();
    assert_eq!(fs::read_to_string(&real_token).expect("reading the token on the host"), pod.token());
    assert_eq!(pod.reads(), 0);
    let started = Instant::now();
    assert_eq!(pod.trigger(), 1);
    let trigger = started.elapsed();
    assert_eq!(pod.trigger(), 2);

    // An exec'd process reads it too.
    let (code, stdout, stderr) = pod.exec(&["cat", &format!("{SA_MOUNT}/token")]);
    assert_eq!((code, stdout.as_str(), stderr.as_str()), (0, pod.token(), ""));
    let (code, stdout, _) = pod.exec(&["readlink", &format!("{SA_MOUNT}/..data")]);
    assert_eq!((code, stdout.trim()), (0, pod.volume().timestamp_dir.as_str()));

    // remove() takes the pod's cgroups and token volume with it.
    let (token_dir, uid) = (pod.token_dir().to_owned(), spec.uid.clone());
    let started = Instant::now();
    pod.remove();
    let remove = started.elapsed();
    assert!(!token_dir.exists(), "{} is left", token_dir.display());
    assert_eq!(cleanup::pod_cgroup_dirs(&uid), Vec::<PathBuf>::new());

    let started = Instant::now();
    drop(containerd);
    let stop = started.elapsed();
    traces.assert_gone();
    note(&format!(
        "containerd ready {:?}, image built+imported {:?}, pod started {pod_start:?}, trigger {trigger:?}, \
         pod removed {remove:?}, harness dropped {stop:?}",
        timings.daemon, timings.image
    ));
}

#[test]
#[ignore = "needs root: starts containerd, runs pods, mounts tmpfs"]
fn nothing_is_left_after_a_panic() {
    let _serial = serialise();
    let (kubepods_before, shim_parent_before) = (cleanup::kubepods_dirs(), Path::new("/run/containerd").exists());
    let traces: Mutex<Option<Traces>> = Mutex::new(None);
    let started = Instant::now();
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let containerd = Containerd::start();
        let mut seen = Traces::of(&containerd, kubepods_before, shim_parent_before);
        let guaranteed = containerd.run_pod(&PodSpec { qos: Qos::Guaranteed, ..PodSpec::new("guaranteed") });
        let burstable = containerd.run_pod(&PodSpec { qos: Qos::Burstable, ..PodSpec::new("burstable") });
        for (pod, parent) in [(&guaranteed, "/kubepods"), (&burstable, "/kubepods/burstable")] {
            seen.add(pod);
            assert_cgroup(pod.pid(), &format!("{parent}/pod{}/{}", pod.spec().uid, pod.container_id()));
        }
        *traces.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(seen);
        // Neither pod is removed: one is dropped while unwinding, the other
        // never (its Drop does not run), so the harness's Drop finds it.
        std::mem::forget(burstable);
        panic!("deliberate");
    }));
    panic::set_hook(hook);
    let message = outcome.expect_err("the closure panics").downcast::<&str>().map(|m| *m).unwrap_or("?");
    assert_eq!(message, "deliberate", "the harness itself panicked");
    let traces = traces.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner).expect("traces were recorded");
    traces.assert_gone();
    note(&format!("two pods started, panicked, cleaned up: {:?}", started.elapsed()));
}
