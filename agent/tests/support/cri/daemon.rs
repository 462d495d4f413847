//! A containerd of the test's own: config, root, state, socket and logs under
//! a fresh `/tmp/tokenwatch-containerd-<pid>-<n>`, never the system's
//! `/run/containerd/containerd.sock` or `/var/lib/containerd`. Its CRI plugin
//! is set up as this machine needs (ARCHITECTURE.md, "Build machines"):
//! cgroupfs driver (`SystemdCgroup = false`; PID 1 is not systemd),
//! `restrict_oom_score_adj = true`, a sandbox image imported by the
//! harness so nothing is pulled, and CNI directories of its own that stay
//! empty (pods use the node's network, so CRI never calls CNI; it only logs
//! at start that no network config was found).
//!
//! One thing is outside the directory: containerd 1.6's shims put their
//! sockets in `/run/containerd/s/` whatever the config says. Each removes its
//! socket when it exits; [`Containerd`]'s `Drop` removes those of shims it had
//! to kill, then the two directories if they are empty.

use std::{
    fs::{self, File},
    future::Future,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use k8s_cri::v1::{
    image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient, ListContainersRequest,
    ListPodSandboxRequest, RemoveContainerRequest, RemovePodSandboxRequest, StopContainerRequest,
    StopPodSandboxRequest, VersionRequest,
};
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tonic::transport::Channel;

use super::{cleanup, config::config_toml, image};

/// Prefix of the harness's directories in /tmp; the test process's pid and a
/// counter follow.
const DIR_PREFIX: &str = "tokenwatch-containerd-";
/// How long containerd may take to answer CRI `Version` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one CRI call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one CRI call may take while tearing down in `Drop`.
const TEARDOWN_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Numbers the harness's directories within one test process.
static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long starting took.
#[derive(Clone, Copy, Debug)]
pub struct Timings {
    /// From spawning containerd to its CRI `Version` answering.
    pub daemon: Duration,
    /// Building the image with umoci and importing it with `ctr`.
    pub image: Duration,
}

/// A running containerd of the test's own, with the harness's image imported.
/// Dropping it stops and removes every pod, kills containerd and its shims,
/// unmounts and removes its directory, and removes the pods' cgroups; this
/// holds after a panic too. Its methods block on a tokio runtime of its own:
/// use it from synchronous tests, not from inside an async runtime.
pub struct Containerd {
    /// The temporary directory everything lives under.
    dir: PathBuf,
    /// The CRI (and containerd API) socket.
    socket: PathBuf,
    /// The daemon; `None` once stopped.
    child: Option<Child>,
    /// Runs the CRI calls; the harness's methods block on it.
    runtime: tokio::runtime::Runtime,
    /// CRI runtime service, from `tokenwatch_agent::metadata::cri::connect`.
    client: RuntimeServiceClient<Channel>,
    /// CRI image service, on a channel built the same way.
    images: ImageServiceClient<Channel>,
    /// Every pod uid run here, for the cgroup clean-up.
    pub(super) pod_uids: Mutex<Vec<String>>,
    /// How long starting took.
    timings: Timings,
}

impl Containerd {
    /// Starts containerd, waits for its CRI to answer, builds and imports the
    /// harness's image. First removes what killed earlier test processes left.
    /// Panics, with containerd's log, if anything fails.
    pub fn start() -> Containerd {
        reap_stale();
        let dir =
            PathBuf::from(format!("/tmp/{DIR_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst)));
        let socket = dir.join("containerd.sock");
        for sub in ["cni/bin", "cni/net.d", "pods", "logs"] {
            fs::create_dir_all(dir.join(sub)).unwrap_or_else(|e| panic!("creating {}/{sub}: {e}", dir.display()));
        }
        let config = dir.join("config.toml");
        fs::write(&config, config_toml(&dir, &socket)).expect("writing containerd's config");
        let log = File::create(dir.join("containerd.log")).expect("creating containerd.log");

        let started = Instant::now();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = fs::remove_dir_all(&dir);
                panic!("starting containerd (cargo xtask setup installs it): {e}")
            });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("building the harness's tokio runtime");
        let (client, images) = {
            let _entered = runtime.enter();
            let channel = tokenwatch_agent::metadata::cri::channel(&socket).expect("a CRI channel");
            (RuntimeServiceClient::new(channel.clone()), ImageServiceClient::new(channel))
        };
        let mut containerd = Containerd {
            dir,
            socket,
            child: Some(child),
            runtime,
            client,
            images,
            pod_uids: Mutex::new(Vec::new()),
            timings: Timings { daemon: Duration::ZERO, image: Duration::ZERO },
        };
        containerd.wait_ready();
        containerd.timings.daemon = started.elapsed();
        let started = Instant::now();
        image::build_and_import(&containerd);
        containerd.timings.image = started.elapsed();
        containerd
    }

    /// Polls CRI `Version` until it answers; panics if containerd exits or
    /// [`START_TIMEOUT`] passes.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("containerd exited at start ({status}); its log:\n{}", self.log());
            }
            let mut client = self.client.clone();
            let answer = self.runtime.block_on(async move {
                let request = VersionRequest { version: "v1".to_owned() };
                tokio::time::timeout(Duration::from_secs(2), client.version(request)).await
            });
            if let Ok(Ok(_)) = answer {
                return;
            }
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains("failed to load plugin io.containerd.grpc.v1.cri")) {
                panic!("containerd runs without its CRI plugin: {line}\nits log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "containerd's CRI did not answer Version within {START_TIMEOUT:?} (last: {answer:?}); its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills containerd (SIGKILL, as a crash) and starts it again on the same
    /// configuration, socket and state; waits until CRI answers. Running
    /// containers are left to their shims, as on a real node.
    pub fn restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = File::options().append(true).open(self.dir.join("containerd.log")).expect("containerd.log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .expect("restarting containerd");
        self.child = Some(child);
        self.wait_ready();
    }

    /// The CRI socket (also containerd's own API, for `ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The temporary directory everything lives under.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// containerd's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How long starting took.
    pub fn timings(&self) -> Timings {
        self.timings
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// A CRI runtime service client (cheap to clone; use it with [`Self::call`]).
    pub fn client(&self) -> RuntimeServiceClient<Channel> {
        self.client.clone()
    }

    /// A CRI image service client.
    pub fn image_client(&self) -> ImageServiceClient<Channel> {
        self.images.clone()
    }

    /// Runs `future` to completion on the harness's runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Runs one CRI call and returns its answer; panics, naming `what` and
    /// quoting containerd's log, if it fails or takes over the call timeout (60 s).
    pub fn call<T>(&self, what: &str, call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>) -> T {
        match self.try_call(CALL_TIMEOUT, call) {
            Ok(answer) => answer,
            Err(error) => panic!("CRI {what}: {error}\ncontainerd's log (tail):\n{}", tail(&self.log(), 40)),
        }
    }

    /// Runs one CRI call, with a timeout.
    pub fn try_call<T>(
        &self,
        timeout: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, String> {
        match self.runtime.block_on(async { tokio::time::timeout(timeout, call).await }) {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Stops and removes every container and pod sandbox this containerd has.
    fn remove_all_pods(&self) {
        let mut c = self.client.clone();
        let Ok(sandboxes) = self.try_call(TEARDOWN_CALL_TIMEOUT, c.list_pod_sandbox(ListPodSandboxRequest::default()))
        else {
            return;
        };
        let containers = self
            .try_call(TEARDOWN_CALL_TIMEOUT, c.list_containers(ListContainersRequest::default()))
            .map(|r| r.containers)
            .unwrap_or_default();
        for container in containers {
            let id = container.id;
            let _ = self.try_call(
                TEARDOWN_CALL_TIMEOUT,
                c.stop_container(StopContainerRequest { container_id: id.clone(), timeout: 0 }),
            );
            let _ =
                self.try_call(TEARDOWN_CALL_TIMEOUT, c.remove_container(RemoveContainerRequest { container_id: id }));
        }
        for sandbox in sandboxes.items {
            let id = sandbox.id;
            let _ = self.try_call(
                TEARDOWN_CALL_TIMEOUT,
                c.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }),
            );
            let _ = self
                .try_call(TEARDOWN_CALL_TIMEOUT, c.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id }));
        }
    }

    /// SIGTERM, then SIGKILL after 5 s, and reap.
    fn stop_daemon(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_all_pods();
        self.stop_daemon();
        let uids = self.pod_uids.lock().map(|u| u.clone()).unwrap_or_else(|p| p.into_inner().clone());
        teardown(&self.dir, &uids);
    }
}

/// What is left of a harness containerd rooted at `dir` once its pods are
/// removed and the daemon stopped (or, for a stale directory, never were):
/// kills its daemon and shims and the pods' processes, unmounts everything
/// under `dir`, removes it, removes the pods' cgroup directories.
fn teardown(dir: &Path, uids: &[String]) {
    cleanup::kill_and_wait(&cleanup::daemons_of(&dir.join("config.toml")));
    let sockets = cleanup::shim_sockets(&dir.join("state"));
    cleanup::kill_and_wait(&cleanup::shims_of(&dir.join("containerd.sock")));
    cleanup::remove_shim_sockets(&sockets);
    for uid in uids {
        cleanup::remove_pod_cgroups(uid);
    }
    cleanup::unmount_under(dir);
    let _ = fs::remove_dir_all(dir);
}

/// Removes the directories, daemons, shims, pods and cgroups of harness runs
/// whose test process was killed before its `Drop`s ran. The pods' uids are
/// the names under `<dir>/pods`.
fn reap_stale() {
    for dir in cleanup::stale_dirs(DIR_PREFIX) {
        let uids: Vec<String> = fs::read_dir(dir.join("pods"))
            .map(|entries| entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
            .unwrap_or_default();
        teardown(&dir, &uids);
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
