//! The real `tokenwatch agent` binary as a child process: its stdout parsed
//! as alerts (the proto3 JSON mapping), its stderr kept for waiting on log
//! lines and for failure messages.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::Duration,
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokenwatch_proto::v1::Alert;

use super::wait_for;

/// How long the agent may take to load and attach its programs, before
/// [`super::scaled`] stretches it for a slow machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit once signalled (before scaling).
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Runs this agent binary instead of the one cargo built with the tests
/// (`CARGO_BIN_EXE_tokenwatch`), e.g. a release build elsewhere.
pub const AGENT_BIN_ENV: &str = "TOKENWATCH_TEST_AGENT_BIN";

/// The agent binary the tests run: [`AGENT_BIN_ENV`] or cargo's.
pub fn agent_binary() -> std::path::PathBuf {
    std::env::var_os(AGENT_BIN_ENV)
        .filter(|path| !path.is_empty())
        .map_or_else(|| env!("CARGO_BIN_EXE_tokenwatch").into(), Into::into)
}

/// A running agent.
pub struct AgentProcess {
    /// Holds the agent's delivery log, inventory state and gRPC socket
    /// unless the test gave its own.
    dir: tempfile::TempDir,
    child: Child,
    /// The agent's own pid when `child` is a launcher (`unshare`) that
    /// neither is the agent nor passes signals on.
    inner_pid: Option<u32>,
    /// The host's `/proc` bound for the agent at `--host-proc`, unmounted
    /// when the agent is dropped.
    host_proc: Option<std::path::PathBuf>,
    stdout_lines: Arc<Mutex<Vec<String>>>,
    stderr_lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<thread::JoinHandle<()>>,
}

/// What an agent left behind once stopped.
pub struct StoppedAgent {
    /// Its exit status.
    pub status: ExitStatus,
    /// Every alert it printed.
    pub alerts: Vec<Alert>,
    /// Everything it logged.
    pub stderr: String,
}

impl AgentProcess {
    /// Starts `tokenwatch agent` with `args` and waits for `hooks attached`.
    /// Unless `args` say otherwise, the delivery log, the inventory's state
    /// and the gRPC socket (`unix:`) live in a directory of this agent's own.
    pub fn start(args: &[String]) -> AgentProcess {
        let dir = tempfile::tempdir().expect("agent tempdir");
        let command = Command::new(agent_binary());
        Self::launch(dir, command, None, args)
    }

    /// Starts `tokenwatch agent` as [`AgentProcess::start`] does, in a mount
    /// namespace of its own where no cgroup2 hierarchy is mounted, as on a
    /// node with cgroup v1 only: it cannot attach its cgroup connect hooks.
    /// (Taking `CAP_NET_ADMIN` away would not do everywhere: Debian's 5.10
    /// also wants `CAP_SYS_ADMIN` for tracepoints, which would do.)
    pub fn start_without_cgroup2(args: &[String]) -> AgentProcess {
        use std::os::unix::{ffi::OsStrExt, process::CommandExt};
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
        // Deepest first, so a mount under another is gone before it.
        let mut unified: Vec<std::ffi::CString> = mountinfo
            .lines()
            .filter_map(|line| {
                let (before, after) = line.split_once(" - ")?;
                (after.split(' ').next()? == "cgroup2").then(|| before.split(' ').nth(4).map(str::to_owned))?
            })
            .map(|point| std::ffi::CString::new(std::path::Path::new(&point).as_os_str().as_bytes()).expect("path"))
            .collect();
        unified.sort_by_key(|point| std::cmp::Reverse(point.as_bytes().len()));
        let dir = tempfile::tempdir().expect("agent tempdir");
        let mut command = Command::new(agent_binary());
        // SAFETY: unshare, mount and umount2 are plain syscalls, safe
        // between fork and exec; the closure only reads what it owns.
        unsafe {
            command.pre_exec(move || {
                let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for point in &unified {
                    check(libc::umount2(point.as_ptr(), libc::MNT_DETACH))?;
                }
                Ok(())
            });
        }
        Self::launch(dir, command, None, args)
    }

    /// Starts the agent as the DaemonSet runs it: in a pid namespace of its
    /// own (no `hostPID`), its `/proc` that namespace's, and the host's
    /// `/proc` bound at the `--host-proc` it is given, as the manifest's
    /// `/host/proc` mount gives it.
    pub fn start_as_daemonset(args: &[String]) -> AgentProcess {
        use nix::mount::{mount, MsFlags};
        let dir = tempfile::tempdir().expect("agent tempdir");
        let host_proc = dir.path().join("host-proc");
        std::fs::create_dir(&host_proc).expect("mkdir host-proc");
        mount(Some("/proc"), &host_proc, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .expect("binding the host's /proc");
        let mut command = Command::new("unshare");
        // The kubelet mounts /host/proc with HostToContainer propagation.
        command.args(["--pid", "--fork", "--mount-proc", "--propagation", "slave", "--kill-child=SIGKILL"]);
        command.arg(agent_binary());
        let mut args = args.to_vec();
        args.extend(["--host-proc".to_owned(), host_proc.display().to_string()]);
        Self::launch(dir, command, Some(host_proc), &args)
    }

    fn launch(
        dir: tempfile::TempDir,
        mut command: Command,
        host_proc: Option<std::path::PathBuf>,
        args: &[String],
    ) -> AgentProcess {
        let mut own = Vec::new();
        if !args.iter().any(|a| a == "--spool-dir") {
            own.extend(["--spool-dir".to_owned(), dir.path().join("spool").display().to_string()]);
        }
        if !args.iter().any(|a| a == "--state-dir") {
            own.extend(["--state-dir".to_owned(), dir.path().join("state").display().to_string()]);
        }
        let own_socket = !args.iter().any(|a| a == "--grpc-listen");
        if own_socket {
            own.extend(["--grpc-listen".to_owned(), format!("unix:{}", dir.path().join("grpc.sock").display())]);
        }
        let mut child = command
            .arg("agent")
            .args(args)
            .args(own)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tokenwatch");
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), Arc::clone(&stdout_lines)),
            collect(child.stderr.take().expect("stderr"), Arc::clone(&stderr_lines)),
        ];
        let launcher = host_proc.is_some().then(|| child.id());
        let mut agent = AgentProcess { dir, child, inner_pid: None, host_proc, stdout_lines, stderr_lines, readers };
        if let Some(launcher) = launcher {
            // `unshare --fork`'s one child is the agent.
            let children = format!("/proc/{launcher}/task/{launcher}/children");
            agent.inner_pid = wait_for(super::scaled(START_TIMEOUT), || {
                std::fs::read_to_string(&children).ok()?.split_whitespace().next()?.parse().ok()
            });
        }
        let start_timeout = super::scaled(START_TIMEOUT);
        let started = wait_for(start_timeout, || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                return Some(Err(status));
            }
            agent.log_has(&["hooks attached"]).then_some(Ok(()))
        });
        // What the README tells a script: once "hooks attached" is logged,
        // the stream accepts subscribers (its listener is bound before).
        if matches!(started, Some(Ok(()))) && own_socket {
            assert!(agent.grpc_socket().exists(), "\"hooks attached\" before the gRPC listener:\n{}", agent.stderr());
        }
        match started {
            Some(Ok(())) => agent,
            Some(Err(status)) => {
                std::thread::sleep(Duration::from_millis(100));
                panic!("agent exited ({status}) before attaching its hooks:\n{}", agent.stderr())
            }
            None => panic!("agent did not attach its hooks within {start_timeout:?}:\n{}", agent.stderr()),
        }
    }

    /// The agent's pid (on the host).
    pub fn pid(&self) -> u32 {
        self.inner_pid.unwrap_or_else(|| self.child.id())
    }

    /// The gRPC socket, when the test did not choose the address.
    pub fn grpc_socket(&self) -> std::path::PathBuf {
        self.dir.path().join("grpc.sock")
    }

    /// Waits for a log line containing every needle.
    pub fn wait_for_log(&self, needles: &[&str], timeout: Duration) -> bool {
        wait_for(timeout, || self.log_has(needles).then_some(())).is_some()
    }

    fn log_has(&self, needles: &[&str]) -> bool {
        self.stderr_lines.lock().expect("lock").iter().any(|line| needles.iter().all(|n| line.contains(n)))
    }

    /// Alerts printed so far; panics on a stdout line that is not an alert.
    pub fn alerts(&self) -> Vec<Alert> {
        self.stdout_lines.lock().expect("lock").iter().map(|line| parse(line)).collect()
    }

    /// Waits until `done` holds for the alerts printed so far.
    pub fn wait_for_alerts(&self, timeout: Duration, done: impl Fn(&[Alert]) -> bool) -> bool {
        wait_for(timeout, || done(&self.alerts()).then_some(())).is_some()
    }

    /// Everything logged so far, colour codes removed.
    pub fn stderr(&self) -> String {
        self.stderr_lines.lock().expect("lock").join("\n")
    }

    /// Sends `signal` and waits for the agent to exit.
    pub fn stop(mut self, signal: Signal) -> StoppedAgent {
        let pid = Pid::from_raw(i32::try_from(self.pid()).expect("pid fits"));
        nix::sys::signal::kill(pid, signal).expect("signal agent");
        let status = wait_for(super::scaled(STOP_TIMEOUT), || self.child.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("agent did not exit after {signal}:\n{}", self.stderr()));
        for reader in self.readers.drain(..) {
            reader.join().expect("reader thread");
        }
        StoppedAgent { status, alerts: self.alerts(), stderr: self.stderr() }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // unshare's child (the agent) dies with it (--kill-child).
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(host_proc) = &self.host_proc {
            let _ = nix::mount::umount2(host_proc, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// `tokenwatch alerts --server unix:<socket> -o json <args>`: the alerts
/// the agent holds (or, with `--follow` and a limit, streams).
pub fn held_alerts(socket: &std::path::Path, args: &[&str]) -> Vec<Alert> {
    let output = Command::new(env!("CARGO_BIN_EXE_tokenwatch"))
        .args(["alerts", "--server", &format!("unix:{}", socket.display()), "-o", "json"])
        .args(args)
        .output()
        .expect("run tokenwatch alerts");
    assert!(output.status.success(), "tokenwatch alerts failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).lines().map(parse).collect()
}

fn parse(line: &str) -> Alert {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout line is not an alert ({e}): {line}"))
}

fn collect(stream: impl std::io::Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            into.lock().expect("lock").push(line);
        }
    })
}
