//! The configurations compared, each started and stopped around its
//! measurements: nothing, the floor (empty programs on the same hooks),
//! tokenwatch, bpftrace with an equivalent filter, and auditd.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::empty_programs::EmptyPrograms;
use crate::agent_probe;

/// The floor's tracepoints (tracefs's `category/name`): an empty program
/// on every tracepoint tokenwatch attaches on an x86-64 kernel with
/// io_uring (`agent/src/kernel/tracepoints.rs`, a list xtask cannot import
/// from the agent); one the running kernel lacks is skipped, as the agent
/// skips it. Opens are hooked at their exit only; io_uring's completion
/// carries two programs. Connects are matched by the cgroup hooks, which
/// [`EmptyPrograms`] also covers, and left by their exit:
/// `sys_enter_connect` is attached only where the cgroup hooks are not, so
/// it is not here. Nor is the `sched_switch` raw tracepoint: it runs on
/// context switches, which the operations' loops do not make.
const FLOOR_TRACEPOINTS: [&str; 10] = [
    "syscalls/sys_exit_openat",
    "syscalls/sys_exit_openat2",
    "syscalls/sys_exit_open",
    "syscalls/sys_exit_open_by_handle_at",
    "syscalls/sys_exit_pidfd_getfd",
    "syscalls/sys_exit_connect",
    "syscalls/sys_exit_io_uring_enter",
    "io_uring/io_uring_submit_req",
    "io_uring/io_uring_complete",
    "io_uring/io_uring_complete",
];

/// One configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// No hooks at all.
    Baseline,
    /// An empty program on each of tokenwatch's hooks, attached as the
    /// agent attaches its own ([`EmptyPrograms`]): what merely hooking costs.
    Floor,
    /// The release agent with enrichment, detection and one gRPC subscriber.
    Tokenwatch,
    /// bpftrace matching the token path and the API-server port in the kernel.
    Bpftrace,
    /// auditd with a read watch on the token path and a connect rule.
    Auditd,
}

impl Config {
    /// Every configuration, in table order.
    pub const ALL: [Config; 5] =
        [Config::Baseline, Config::Floor, Config::Tokenwatch, Config::Bpftrace, Config::Auditd];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Config::Baseline => "baseline",
            Config::Floor => "floor (empty programs)",
            Config::Tokenwatch => "tokenwatch",
            Config::Bpftrace => "bpftrace",
            Config::Auditd => "auditd",
        }
    }
}

/// What the configurations need to know.
pub struct Setup {
    /// The release `tokenwatch`.
    pub binary: PathBuf,
    /// Scratch directory (spool, logs, sockets).
    pub work: PathBuf,
    /// The watched token file.
    pub token: PathBuf,
    /// The watched API-server port on 127.0.0.1.
    pub api_port: u16,
}

/// A running configuration; [`Running::stop`] ends it.
pub struct Running {
    children: Vec<Child>,
    auditd_rules: bool,
    floor: Option<EmptyPrograms>,
}

impl Running {
    /// Waits until the configuration's processes have gone idle (their CPU
    /// time stops moving for 300 ms, at most 20 s): the work an operation
    /// caused in userspace must not be billed to the next one.
    pub fn settle(&self) {
        let pids: Vec<u32> = self.children.iter().map(Child::id).collect();
        agent_probe::wait_until_idle(&pids, Duration::from_millis(300), Duration::from_secs(20));
    }

    /// Stops what was started, in reverse order, and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.floor = None;
        if self.auditd_rules {
            quiet(Command::new("auditctl").arg("-D"))?;
            quiet(Command::new("auditctl").args(["-e", "0"]))?;
        }
        while let Some(mut child) = self.children.pop() {
            // SAFETY: sending SIGTERM to a child we spawned and still own.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        Ok(())
    }
}

/// Starts `config` and waits until it is live.
pub fn start(config: Config, setup: &Setup) -> Result<Running> {
    let mut running = Running { children: Vec::new(), auditd_rules: false, floor: None };
    match config {
        Config::Baseline => {}
        Config::Floor => running.floor = Some(EmptyPrograms::attach(&FLOOR_TRACEPOINTS)?),
        Config::Bpftrace => {
            let token = setup.token.display();
            let port = setup.api_port;
            // The same decisions in the kernel: the token path on entry,
            // the port on connect (v4), a line out per match.
            let script = format!(
                "tracepoint:syscalls:sys_enter_openat /str(args->filename) == \"{token}\"/ {{ @tid[tid] = 1; }}\n\
                 tracepoint:syscalls:sys_exit_openat /@tid[tid]/ {{ printf(\"open %d %d\\n\", pid, args->ret); delete(@tid[tid]); }}\n\
                 tracepoint:syscalls:sys_enter_open /str(args->filename) == \"{token}\"/ {{ printf(\"open %d\\n\", pid); }}\n\
                 tracepoint:syscalls:sys_enter_openat2 /str(args->filename) == \"{token}\"/ {{ printf(\"open2 %d\\n\", pid); }}\n\
                 tracepoint:syscalls:sys_enter_connect /((uint16*)args->uservaddr)[1] == {port_be}/ {{ printf(\"connect %d\\n\", pid); }}\n\
                 tracepoint:syscalls:sys_exit_connect {{ }}\n\
                 tracepoint:syscalls:sys_exit_open {{ }}\n\
                 tracepoint:syscalls:sys_exit_openat2 {{ }}\n",
                port_be = port.to_be()
            );
            running.children.push(bpftrace(&script, setup)?);
        }
        Config::Auditd => {
            quiet(Command::new("auditctl").arg("-D"))?;
            quiet(Command::new("auditctl").args(["-w"]).arg(&setup.token).args(["-p", "r", "-k", "tokenwatch-bench"]))?;
            quiet(Command::new("auditctl").args([
                "-a",
                "always,exit",
                "-F",
                "arch=b64",
                "-S",
                "connect",
                "-k",
                "tokenwatch-bench",
            ]))?;
            quiet(Command::new("auditctl").args(["-e", "1"]))?;
            running.auditd_rules = true;
        }
        Config::Tokenwatch => {
            let log = setup.work.join("agent.log");
            let socket = setup.work.join("grpc.sock");
            let agent = Command::new(&setup.binary)
                .args(["agent", "--standalone", "--stdout", "none", "--token-path"])
                .arg(&setup.token)
                .arg("--api-server")
                .arg(format!("127.0.0.1:{}", setup.api_port))
                .arg("--spool-dir")
                .arg(setup.work.join("spool"))
                .arg("--state-dir")
                .arg(setup.work.join("state"))
                .arg("--grpc-listen")
                .arg(format!("unix:{}", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?)
                .spawn()
                .context("starting the agent")?;
            running.children.push(agent);
            wait_for_line(&log, "hooks attached", Duration::from_secs(30))?;
            wait_for_line(&log, "watching token file", Duration::from_secs(30))?;
            let subscriber = Command::new(&setup.binary)
                .args(["alerts", "--follow", "--server"])
                .arg(format!("unix:{}", socket.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting the subscriber")?;
            running.children.push(subscriber);
        }
    }
    thread::sleep(Duration::from_millis(500));
    Ok(running)
}

/// Starts bpftrace with `script` and waits until it says its probes are attached.
fn bpftrace(script: &str, setup: &Setup) -> Result<Child> {
    let log = setup.work.join("bpftrace.log");
    let child = Command::new("bpftrace")
        .arg("-e")
        .arg(script)
        .env("BPFTRACE_STRLEN", "128")
        .stdin(Stdio::null())
        .stdout(fs::File::create(setup.work.join("bpftrace.out"))?)
        .stderr(fs::File::create(&log)?)
        .spawn()
        .context("starting bpftrace")?;
    wait_for_line(&setup.work.join("bpftrace.out"), "Attaching", Duration::from_secs(30))
        .or_else(|_| wait_for_line(&log, "Attaching", Duration::from_secs(1)))?;
    Ok(child)
}

/// Waits until `path` holds a line containing `needle`.
fn wait_for_line(path: &Path, needle: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if fs::read_to_string(path).is_ok_and(|text| text.contains(needle)) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("`{needle}` did not appear in {} within {timeout:?}", path.display())
}

/// Runs a command, quietly, failing with its stderr.
fn quiet(command: &mut Command) -> Result<()> {
    let output = command.output().with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}
