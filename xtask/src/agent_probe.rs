//! Looking at a running agent from outside, as an operator would: its
//! metrics endpoint, and its memory and CPU time from /proc. Shared by
//! `cargo xtask soak` and `cargo xtask bench`.

use std::{
    fs,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// Waits for the agent's metrics address in its log.
pub fn wait_for_metrics(log: &Path, agent: &mut Child) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited at start ({status}); see {}", log.display());
        }
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find(|l| l.contains(METRICS_LISTENING)).and_then(metrics_addr) {
            return Ok(addr);
        }
        thread::sleep(Duration::from_millis(200));
    }
    bail!("the agent did not start its metrics listener within 30 s; see {}", log.display())
}

/// What the agent logs once its metrics endpoint listens.
pub const METRICS_LISTENING: &str = "metrics and health endpoints listening";

/// The `addr=` of the agent's [`METRICS_LISTENING`] log line.
pub fn metrics_addr(line: &str) -> Option<String> {
    line.split("addr=").nth(1)?.split_whitespace().next().map(str::to_owned)
}

/// Waits until the CPU time of `pids` stops moving for one `step` (at most
/// `limit`): the work they were given is done, so it is not billed to
/// what is measured next.
pub fn wait_until_idle(pids: &[u32], step: Duration, limit: Duration) {
    let ticks = || pids.iter().map(|pid| cpu_ticks(*pid)).sum::<u64>();
    let deadline = Instant::now() + limit;
    let mut last = ticks();
    while Instant::now() < deadline {
        thread::sleep(step);
        let now = ticks();
        if now == last {
            return;
        }
        last = now;
    }
}

/// The agent's `/metrics` page (with the HTTP head), or `None`.
pub fn metrics_text(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    stream.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The sum of `metric`'s series that carry `label` (`name="value"`).
pub fn counter_sum(text: &str, metric: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.strip_prefix(metric).is_some_and(|rest| rest.starts_with('{')) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Kernel events sent and dropped, summed over hooks, from `/metrics`.
pub fn kernel_counters(addr: &str) -> Option<(u64, u64)> {
    let text = metrics_text(addr)?;
    let sum = |stage: &str| counter_sum(&text, "tokenwatch_kernel_events_total", &format!("stage=\"{stage}\""));
    Some((sum("sent"), sum("dropped")))
}

/// `VmRSS` of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading the agent's status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in the agent's status")
}

/// User plus system CPU time of `pid` so far, in clock ticks
/// (`sysconf(_SC_CLK_TCK)` per second); 0 once it is gone.
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return 0 };
    // Fields after the `(comm)`; utime and stime are the 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}
