//! The agent under load: how fast an alert reaches a gRPC subscriber, the
//! highest rate of matched events it takes without a ring-buffer drop, and
//! what it spends doing so (CPU per million events, RSS).
//!
//! The latency runs' load is token-file opens from this process, paced in
//! 1 ms slices; the throughput steps' comes from one process per CPU
//! (`offered`), so the highest drop-free step is the agent's ceiling, not
//! what one thread could issue.
//! Latency is measured from the syscall's kernel timestamp (the alert's
//! `time`, the agent's boot clock mapped to the wall clock) to the moment
//! a `tokenwatch alerts --follow` subscriber prints the alert here; the
//! agent runs without merging repeats (`--dedup-window-seconds 0`), so
//! every open is an alert. The rate steps run the agent as shipped (repeats
//! merged), since that is what a node under load runs.

use std::{
    ffi::CString,
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context, Result};

use super::{
    agent::Agent,
    offered::{self, paced_opens},
};
use crate::{agent_probe, util::say};

/// How long the agent may take to load its programs.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Alert rates of the latency runs, and how long each lasts.
const LATENCY_RUNS: [(u32, Duration); 2] = [(100, Duration::from_secs(10)), (10_000, Duration::from_secs(3))];
/// Matched-event rates of the throughput steps; 0 is as fast as the load's
/// processes can open the file. Finer above 200,000/s, where the agent's
/// ceiling lies on the machines this runs on.
const RATE_STEPS: [u32; 9] = [25_000, 50_000, 100_000, 200_000, 250_000, 300_000, 350_000, 400_000, 0];
/// How long each throughput step lasts.
const STEP: Duration = Duration::from_secs(3);

/// Alert latency at one rate.
pub struct Latency {
    /// Alerts per second offered.
    pub rate: u32,
    /// Opens made.
    pub sent: u64,
    /// Alerts the subscriber received.
    pub received: usize,
    /// Latency percentiles and maximum, in microseconds.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// Maximum.
    pub max_us: f64,
}

/// One throughput step.
pub struct RateStep {
    /// Offered matched events per second (0: unpaced).
    pub offered: u32,
    /// Matched events per second achieved by the load.
    pub achieved: f64,
    /// Events the kernel delivered to the agent, and dropped, in the step.
    pub sent: u64,
    /// Dropped for a full ring buffer (counted, and alerted as
    /// `agent-degraded`).
    pub dropped: u64,
    /// Agent CPU seconds per million delivered events.
    pub cpu_s_per_million: f64,
    /// Highest agent RSS during the step, KiB.
    pub rss_max_kib: u64,
}

/// Everything measured under load.
pub struct LoadFigures {
    /// Per rate.
    pub latency: Vec<Latency>,
    /// Per step.
    pub steps: Vec<RateStep>,
    /// RSS of the idle agent before the steps, KiB.
    pub idle_rss_kib: u64,
    /// How many processes offered the steps' load.
    pub load_processes: usize,
}

/// A running agent with its metrics address.
struct Running {
    agent: Agent,
    metrics: String,
    socket: PathBuf,
}

impl Running {
    /// Starts the standalone agent watching `token`, with `extra` flags,
    /// and waits until it watches the token.
    fn start(binary: &Path, dir: &Path, token: &Path, extra: &[&str]) -> Result<Self> {
        let _ = fs::remove_dir_all(dir);
        fs::create_dir_all(dir)?;
        let token = token.to_str().context("a UTF-8 token path")?;
        let mut args = vec!["--standalone", "--metrics-listen", "127.0.0.1:0", "--token-path", token];
        args.extend_from_slice(extra);
        let agent = Agent::start(binary, dir, &args)?;
        let metrics = agent.metrics_addr(START_TIMEOUT)?;
        agent.wait_for_log("watching token file", START_TIMEOUT)?;
        Ok(Running { agent, metrics, socket: dir.join("grpc.sock") })
    }

    fn pid(&self) -> u32 {
        self.agent.pid()
    }

    fn settle(&self) {
        self.agent.settle(Duration::from_secs(60));
    }
}

/// Runs the latency runs and the throughput steps with `binary`, the
/// watched `token`, scratch space under `work`.
pub fn measure(binary: &Path, work: &Path, token: &Path) -> Result<LoadFigures> {
    let path = CString::new(token.display().to_string())?;
    let agent = Running::start(binary, &work.join("latency"), token, &["--dedup-window-seconds", "0"])?;
    let mut latency = Vec::new();
    for (rate, duration) in LATENCY_RUNS {
        say(format!("bench: alert latency at {rate}/s for {duration:?}"));
        latency.push(measure_latency(binary, &agent, &path, rate, duration)?);
    }
    agent.agent.stop()?;

    let agent = Running::start(binary, &work.join("rate"), token, &[])?;
    agent.settle();
    let idle_rss_kib = agent_probe::rss_kib(agent.pid())?;
    let load_processes = offered::processes();
    let mut steps = Vec::new();
    for offered in RATE_STEPS {
        say(format!(
            "bench: matched events at {}",
            if offered == 0 { "full speed".to_owned() } else { format!("{offered}/s") }
        ));
        steps.push(measure_step(&agent, &path, offered, load_processes)?);
    }
    agent.agent.stop()?;
    Ok(LoadFigures { latency, steps, idle_rss_kib, load_processes })
}

/// Opens `path` `rate` times a second for `duration` while a subscriber
/// prints what arrives.
fn measure_latency(binary: &Path, agent: &Running, path: &CString, rate: u32, duration: Duration) -> Result<Latency> {
    // Alerts of earlier runs are replayed first: only this run's count.
    let run_start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
    let mut subscriber = Command::new(binary)
        .args(["alerts", "--follow", "--rule", "token-read", "--output", "json", "--server"])
        .arg(format!("unix:{}", agent.socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the subscriber")?;
    let stdout = subscriber.stdout.take().context("the subscriber's stdout")?;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let reader = {
        let latencies = Arc::clone(&latencies);
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128);
                if !line.contains("\"rule\":\"token-read\"") {
                    continue;
                }
                if let Some(at) = field(&line, "time").and_then(rfc3339_ns).filter(|at| *at >= run_start) {
                    latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((now - at) as f64 / 1e3);
                }
            }
        })
    };
    // The subscriber is live once it has the (empty) backlog: give it a moment.
    thread::sleep(Duration::from_secs(1));
    let sent = paced_opens(path, rate, duration);
    let deadline = Instant::now() + Duration::from_secs(30);
    while received(&latencies) < sent as usize && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    let _ = subscriber.kill();
    let _ = subscriber.wait();
    let _ = reader.join();
    let mut all = latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    if all.is_empty() {
        bail!("no token-read alert reached the subscriber at {rate}/s");
    }
    all.sort_by(f64::total_cmp);
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    Ok(Latency { rate, sent, received: all.len(), p50_us: at(0.5), p99_us: at(0.99), max_us: at(1.0) })
}

fn received(latencies: &Mutex<Vec<f64>>) -> usize {
    latencies.lock().unwrap_or_else(std::sync::PoisonError::into_inner).len()
}

/// One throughput step: the counters, CPU and RSS around `STEP` of load.
fn measure_step(agent: &Running, path: &CString, offered: u32, processes: usize) -> Result<RateStep> {
    agent.settle();
    let (sent0, dropped0) = agent_probe::kernel_counters(&agent.metrics).context("reading /metrics")?;
    let cpu0 = agent_probe::cpu_ticks(agent.pid());
    let pid = agent.pid();
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = Arc::clone(&sampling);
        thread::spawn(move || {
            let mut peak = 0;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(agent_probe::rss_kib(pid).unwrap_or(0));
                thread::sleep(Duration::from_millis(100));
            }
            peak
        })
    };
    let load = offered::opens_from(processes, path, offered, STEP)?;
    let achieved = load.opens as f64 / load.elapsed.as_secs_f64();
    // CPU and counters once the agent has worked off what it was given.
    agent.settle();
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_max_kib = sampler.join().unwrap_or(0);
    let (sent1, dropped1) = agent_probe::kernel_counters(&agent.metrics).context("reading /metrics")?;
    let cpu_s = (agent_probe::cpu_ticks(agent.pid()) - cpu0) as f64 / agent_probe::ticks_per_second();
    let sent = sent1 - sent0;
    Ok(RateStep {
        offered,
        achieved,
        sent,
        dropped: dropped1 - dropped0,
        cpu_s_per_million: if sent == 0 { 0.0 } else { cpu_s / sent as f64 * 1e6 },
        rss_max_kib,
    })
}

/// The string value of `"name":"..."` in a JSON line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!("\"{name}\":\""))? + name.len() + 4;
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Nanoseconds since the epoch of an RFC 3339 time as the agent writes it
/// (`2026-11-29T12:54:57.554491676+00:00` or `...Z`).
pub(super) fn rfc3339_ns(text: &str) -> Option<i128> {
    let (date, rest) = text.split_once('T')?;
    let mut ymd = date.split('-').map(|v| v.parse::<i64>().ok());
    let (y, m, d) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let (clock, offset_s) = match rest.strip_suffix('Z') {
        Some(clock) => (clock, 0),
        None => {
            let at = rest.rfind(['+', '-'])?;
            let (clock, offset) = rest.split_at(at);
            let sign = if offset.starts_with('-') { -1 } else { 1 };
            let (h, m) = offset[1..].split_once(':')?;
            (clock, sign * (h.parse::<i64>().ok()? * 3600 + m.parse::<i64>().ok()? * 60))
        }
    };
    let (hms, fraction) = clock.split_once('.').unwrap_or((clock, "0"));
    let mut parts = hms.split(':').map(|v| v.parse::<i64>().ok());
    let (hh, mm, ss) = (parts.next()??, parts.next()??, parts.next()??);
    let nanos: i64 = format!("{fraction:0<9}")[..9].parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_s;
    Some(i128::from(seconds) * 1_000_000_000 + i128::from(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_times() {
        // date -d 2026-11-29T12:54:57Z +%s
        let base: i128 = 1_795_956_897;
        assert_eq!(rfc3339_ns("2026-11-29T12:54:57.554491676+00:00"), Some(base * 1_000_000_000 + 554_491_676));
        assert_eq!(rfc3339_ns("2026-11-29T12:54:57Z"), Some(base * 1_000_000_000));
        assert_eq!(rfc3339_ns("2026-11-29T13:54:57.5+01:00"), Some(base * 1_000_000_000 + 500_000_000));
        assert_eq!(rfc3339_ns("yesterday"), None);
    }

    #[test]
    fn finds_a_string_field() {
        let line = r#"{"id":"x","time":"2026-11-29T12:54:57Z","rule":"token-read"}"#;
        assert_eq!(field(line, "time"), Some("2026-11-29T12:54:57Z"));
        assert_eq!(field(line, "rule"), Some("token-read"));
        assert_eq!(field(line, "missing"), None);
    }
}
