//! A release agent run by the benchmark: started with its own spool, state
//! and socket, watched through its log and /proc, stopped cleanly.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::agent_probe;

/// Idle time after the agent's CPU time stops moving, before sampling RSS.
const IDLE: Duration = Duration::from_secs(5);
/// RSS samples, spread over [`SAMPLE_SPAN`]; the figure is their maximum.
const SAMPLES: u32 = 4;
/// How long the RSS is sampled.
const SAMPLE_SPAN: Duration = Duration::from_secs(3);

/// A running release agent with its own spool, state and socket in `dir`,
/// logging to `dir/agent.log`.
pub struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    /// Starts `tokenwatch agent` with `args`; alerts are not printed.
    pub fn start(binary: &Path, dir: &Path, args: &[&str]) -> Result<Agent> {
        let log = dir.join("agent.log");
        let child = Command::new(binary)
            .args(["agent", "--stdout", "none"])
            .args(args)
            .arg("--spool-dir")
            .arg(dir.join("spool"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--grpc-listen")
            .arg(format!("unix:{}", dir.join("grpc.sock").display()))
            // Only the kubeconfig given, never the host's cluster.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Agent { child, log })
    }

    /// Waits for a log line containing `needle`, failing early if the agent exits.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(line) = text.lines().find(|line| line.contains(needle)) {
                return Ok(line.to_owned());
            }
            if !self.alive() {
                bail!("the agent exited before logging `{needle}`:\n{}", self.log_tail());
            }
            if Instant::now() >= deadline {
                bail!("the agent did not log `{needle}` within {timeout:?}:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the process is still there (a zombie counts as gone).
    fn alive(&self) -> bool {
        fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
    }

    /// VmRSS once idle: after its CPU time stops moving (at most 30 s) and
    /// [`IDLE`] more, the largest of [`SAMPLES`] readings over [`SAMPLE_SPAN`].
    pub fn idle_rss(&self) -> Result<u64> {
        self.settle(Duration::from_secs(30));
        thread::sleep(IDLE);
        let mut max = 0;
        for sample in 0..SAMPLES {
            if sample > 0 {
                thread::sleep(SAMPLE_SPAN / (SAMPLES - 1));
            }
            max = max.max(self.status_kib("VmRSS")?);
        }
        Ok(max)
    }

    /// VmHWM: the largest RSS the process has had.
    pub fn peak_rss(&self) -> Result<u64> {
        self.status_kib("VmHWM")
    }

    /// A `kB` line of `/proc/<pid>/status`.
    fn status_kib(&self, key: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.child.id());
        let status = fs::read_to_string(&path).with_context(|| format!("reading {path} (did the agent exit?)"))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix(key)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
            .with_context(|| format!("no `{key}: N kB` line in {path}"))
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until its CPU time stops moving for 500 ms (at most `limit`):
    /// the work it was given is done.
    pub fn settle(&self, limit: Duration) {
        agent_probe::wait_until_idle(&[self.pid()], Duration::from_millis(500), limit);
    }

    /// The address of its metrics endpoint, from its log (it must have been
    /// started with `--metrics-listen`).
    pub fn metrics_addr(&self, timeout: Duration) -> Result<String> {
        let line = self.wait_for_log(agent_probe::METRICS_LISTENING, timeout)?;
        agent_probe::metrics_addr(&line).with_context(|| format!("no addr= in `{line}`"))
    }

    /// SIGTERM, then waits (30 s at most) for a clean exit.
    pub fn stop(mut self) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("the agent's pid does not fit a pid_t")?;
        // SAFETY: kill(2) on the pid of a child this process spawned and has
        // not reaped yet, so the pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status: ExitStatus = loop {
            if let Some(status) = self.child.try_wait().context("waiting for the agent")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("the agent did not exit within 30 s of SIGTERM:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            bail!("the agent exited with {status} after SIGTERM:\n{}", self.log_tail());
        }
        Ok(())
    }

    /// The last lines of the agent's log, for error messages.
    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Agent {
    /// An agent left running by an error is killed, not leaked.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
