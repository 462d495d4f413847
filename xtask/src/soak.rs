//! `cargo xtask soak`: the release agent under mixed load for a bounded
//! time, sampled for memory and file descriptors, judged flat or not.
//!
//! The load, all on this machine: token reads at a steady rate and bursts
//! that overflow the ring buffer, connects to a loopback "API server", and
//! gRPC subscribers that come and go. Every interval the agent's RSS, open
//! file descriptors and kernel counters are recorded; the table goes to
//! stderr and `target/soak/soak.json`. The soak fails if memory or
//! descriptors still grow at the end.

use std::{
    fs,
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    agent_probe::{kernel_counters, rss_kib, wait_for_metrics},
    util::{self, say},
};

/// Options of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long the load runs.
    #[arg(long, default_value_t = 10)]
    pub minutes: u64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 30)]
    pub interval_seconds: u64,
}

/// One sample of the agent.
struct Sample {
    /// Seconds since the load started.
    at: u64,
    rss_kib: u64,
    fds: usize,
    /// Token opens and connects the load made so far.
    operations: u64,
    /// Kernel: matched events sent and dropped so far.
    sent: u64,
    dropped: u64,
}

/// Runs the soak with `binary` (a release `tokenwatch`).
pub fn soak(binary: &Path, args: &SoakArgs) -> Result<()> {
    let work = util::workspace_root().join("target/soak");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).context("creating target/soak")?;
    let token = work.join("token");
    fs::write(&token, "soak-test-token-not-a-credential").context("writing the soak's token")?;
    let api = TcpListener::bind("127.0.0.1:0").context("binding the loopback API server")?;
    let api_addr = api.local_addr()?;
    let socket = work.join("grpc.sock");
    let mut agent = Command::new(binary)
        .args(["agent", "--standalone", "--stdout", "none", "--ring-buffer-kib", "256", "--metrics-listen"])
        .arg("127.0.0.1:0")
        .arg("--token-path")
        .arg(&token)
        .arg("--api-server")
        .arg(api_addr.to_string())
        .arg("--spool-dir")
        .arg(work.join("spool"))
        .arg("--state-dir")
        .arg(work.join("state"))
        .arg("--grpc-listen")
        .arg(format!("unix:{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(work.join("agent.log"))?)
        .spawn()
        .context("starting the agent")?;
    let metrics = wait_for_metrics(&work.join("agent.log"), &mut agent)?;
    say(format!(
        "soak: agent pid {} under load for {} min, sampled every {} s (log: {})",
        agent.id(),
        args.minutes,
        args.interval_seconds,
        work.join("agent.log").display()
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicU64::new(0));
    let load = start_load(&token, api, &socket, binary, &stop, &operations);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.minutes * 60);
    let mut samples = Vec::new();
    loop {
        let (sent, dropped) = kernel_counters(&metrics).unwrap_or((0, 0));
        let sample = Sample {
            at: started.elapsed().as_secs(),
            rss_kib: rss_kib(agent.id())?,
            fds: fds(agent.id())?,
            operations: operations.load(Ordering::Relaxed),
            sent,
            dropped,
        };
        say(format!(
            "soak: {:>5} s  rss {:>7} KiB  fds {:>4}  load ops {:>9}  kernel sent {:>9} dropped {:>8}",
            sample.at, sample.rss_kib, sample.fds, sample.operations, sample.sent, sample.dropped
        ));
        samples.push(sample);
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_secs(args.interval_seconds).min(deadline - Instant::now()));
        if let Some(status) = agent.try_wait()? {
            bail!("the agent exited during the soak ({status}); see {}", work.join("agent.log").display());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for handle in load {
        let _ = handle.join();
    }
    util::run(Command::new("kill").args(["-TERM", &agent.id().to_string()]), "stopping the agent")?;
    let status = agent.wait()?;
    fs::write(work.join("soak.json"), json(&samples)).context("writing soak.json")?;
    let verdict = flat(&samples);
    say(format!("soak: agent exited {status}; samples in {}", work.join("soak.json").display()));
    match verdict {
        Ok(summary) if status.success() => {
            say(format!("soak: flat: {summary}"));
            Ok(())
        }
        Ok(summary) => bail!("the agent did not stop cleanly ({status}) after a flat soak: {summary}"),
        Err(growth) => bail!("not flat: {growth}"),
    }
}

/// Whether memory and descriptors stopped growing: over the second half,
/// RSS may not climb faster than 64 KiB a minute (a least-squares slope),
/// and the last sample may not exceed the first half's peak by more than
/// 5% and 1 MiB; descriptors may not exceed it by more than 4.
fn flat(samples: &[Sample]) -> Result<String, String> {
    let (Some(last), true) = (samples.last(), samples.len() >= 4) else {
        return Err(format!("too few samples ({}) to judge; soak longer", samples.len()));
    };
    let early: Vec<&Sample> = samples[..samples.len() / 2].iter().filter(|s| s.at >= 60).collect();
    let early = if early.is_empty() { vec![&samples[samples.len() / 2 - 1]] } else { early };
    let rss_peak = early.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let fds_peak = early.iter().map(|s| s.fds).max().unwrap_or(0);
    let summary = format!(
        "RSS {} KiB at the end vs a first-half peak of {rss_peak} KiB; fds {} vs {fds_peak}; {} load operations, \
         {} events sent and {} dropped in the kernel",
        last.rss_kib, last.fds, last.operations, last.sent, last.dropped
    );
    let slope = slope_kib_per_minute(&samples[samples.len() / 2..]);
    let summary = format!("{summary}; RSS slope over the second half {slope:.0} KiB/min");
    if slope > 64.0 || last.rss_kib > rss_peak + rss_peak / 20 + 1024 || last.fds > fds_peak + 4 {
        return Err(summary);
    }
    Ok(summary)
}

/// The least-squares slope of RSS over time, in KiB per minute.
fn slope_kib_per_minute(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    let (sx, sy) = samples.iter().fold((0.0, 0.0), |(x, y), s| (x + s.at as f64, y + s.rss_kib as f64));
    let (mx, my) = (sx / n, sy / n);
    let (cov, var) = samples.iter().fold((0.0, 0.0), |(c, v), s| {
        let dx = s.at as f64 - mx;
        (c + dx * (s.rss_kib as f64 - my), v + dx * dx)
    });
    if var == 0.0 {
        0.0
    } else {
        cov / var * 60.0
    }
}

/// The samples as a JSON array.
fn json(samples: &[Sample]) -> String {
    let rows: Vec<String> = samples
        .iter()
        .map(|s| {
            format!(
                "{{\"seconds\":{},\"rss_kib\":{},\"fds\":{},\"load_operations\":{},\"kernel_sent\":{},\"kernel_dropped\":{}}}",
                s.at, s.rss_kib, s.fds, s.operations, s.sent, s.dropped
            )
        })
        .collect();
    format!("[\n  {}\n]\n", rows.join(",\n  "))
}

/// The load threads: reads (steady, and a burst every minute), connects,
/// and subscribers that follow the stream for two seconds each.
fn start_load(
    token: &Path,
    api: TcpListener,
    socket: &Path,
    binary: &Path,
    stop: &Arc<AtomicBool>,
    operations: &Arc<AtomicU64>,
) -> Vec<thread::JoinHandle<()>> {
    let mut threads = Vec::new();
    let (token, stop_reads, ops) = (token.to_owned(), Arc::clone(stop), Arc::clone(operations));
    threads.push(thread::spawn(move || {
        let mut tick = 0u64;
        while !stop_reads.load(Ordering::Relaxed) {
            let burst = if tick.is_multiple_of(600) { 5000 } else { 20 };
            for _ in 0..burst {
                let _ = fs::read(&token);
            }
            ops.fetch_add(burst, Ordering::Relaxed);
            tick += 1;
            thread::sleep(Duration::from_millis(100));
        }
    }));
    let addr = api.local_addr().ok();
    api.set_nonblocking(true).ok();
    let (stop_api, ops) = (Arc::clone(stop), Arc::clone(operations));
    threads.push(thread::spawn(move || {
        while !stop_api.load(Ordering::Relaxed) {
            while api.accept().is_ok() {}
            for _ in 0..5 {
                if let Some(addr) = addr {
                    let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                }
            }
            ops.fetch_add(5, Ordering::Relaxed);
            thread::sleep(Duration::from_millis(100));
        }
    }));
    let (socket, binary, stop_subs) = (socket.to_owned(), binary.to_owned(), Arc::clone(stop));
    threads.push(thread::spawn(move || {
        while !stop_subs.load(Ordering::Relaxed) {
            let subscriber = Command::new(&binary)
                .args(["alerts", "--follow", "--server"])
                .arg(format!("unix:{}", socket.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            thread::sleep(Duration::from_secs(2));
            if let Ok(mut child) = subscriber {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }));
    threads
}

/// Open file descriptors of `pid`.
fn fds(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(PathBuf::from(format!("/proc/{pid}/fd"))).context("listing the agent's fds")?.count())
}
