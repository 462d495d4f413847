//! How soon a new token volume is watched: a burst of pods' token volumes,
//! each a tmpfs laid out as kubelet's atomic writer lays one out, in a
//! mount namespace of its own, read the moment it is written, 20 a second.
//! Two figures: how many of those first reads were alerted (the kernel's
//! match of the layout, which must be every one), and how long after its
//! mount the agent's scan logged `watching token file` for each (the
//! exact-file watch that names the configured path): p50, p99, max.

use std::{
    fs,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::agent::Agent;
use crate::{agent_probe, util::say};

/// Volumes in the burst.
const VOLUMES: usize = 50;
/// One volume every this often: 20 a second.
const PACE: Duration = Duration::from_millis(50);
/// How long each volume's namespace lives after its read: past two scans
/// of the default 2 s interval, so every one is found.
const LINGER_S: u32 = 6;
/// How long the agent may take to load its programs.
const START_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the reads' alerts may take to be counted.
const COUNT_TIMEOUT: Duration = Duration::from_secs(10);

/// The burst's figures.
pub struct VolumeWatch {
    /// Volumes created.
    pub volumes: usize,
    /// First reads alerted (`tokenwatch_alerts_total{rule="token-read"}`).
    pub first_reads_alerted: u64,
    /// From each volume's mount to the scan's `watching token file` line,
    /// in milliseconds: p50, p99, max; `None` if a volume was never found.
    pub scan_ms: Option<(f64, f64, f64)>,
}

/// The burst against a standalone release agent in `dir`, with its
/// default rescan interval.
pub fn measure(binary: &std::path::Path, dir: &std::path::Path) -> Result<VolumeWatch> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let agent =
        Agent::start(binary, dir, &["--standalone", "--dedup-window-seconds", "0", "--metrics-listen", "127.0.0.1:0"])?;
    agent.wait_for_log("hooks attached", START_TIMEOUT)?;
    let metrics = agent.metrics_addr(START_TIMEOUT)?;
    say(format!("bench: {VOLUMES} new token volumes, {} a second, each read at once", 1000 / PACE.as_millis()));
    let started = Instant::now();
    let mut children: Vec<Child> = Vec::with_capacity(VOLUMES);
    for i in 0..VOLUMES {
        let due = PACE * u32::try_from(i).unwrap_or(u32::MAX);
        thread::sleep(due.saturating_sub(started.elapsed()));
        children.push(spawn_volume(i)?);
    }
    let mut mounted = Vec::with_capacity(VOLUMES);
    for child in children {
        let output = child.wait_with_output().context("waiting for a volume's shell")?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let (at_ns, ns) = text.trim().split_once(' ').context("a volume's shell printed no mount time")?;
        let at_ns: i128 = at_ns.parse().with_context(|| format!("mount time {at_ns:?}"))?;
        mounted.push((at_ns, ns.trim_start_matches("mnt:[").trim_end_matches(']').to_owned()));
    }
    let alerted = alerts(&metrics);
    let log = fs::read_to_string(dir.join("agent.log")).context("reading the agent's log")?;
    agent.stop()?;
    let mut delays: Vec<f64> = Vec::with_capacity(VOLUMES);
    for (at_ns, ns) in &mounted {
        let needle = format!("mount_ns={ns} ");
        let found = log
            .lines()
            .filter(|line| line.contains("watching token file") && line.contains(&needle))
            .find_map(|line| super::load::rfc3339_ns(line.split_whitespace().next()?));
        if let Some(seen) = found {
            delays.push((seen - at_ns) as f64 / 1e6);
        }
    }
    delays.sort_by(f64::total_cmp);
    let pick = |q: f64| delays[((delays.len() as f64 - 1.0) * q).round() as usize];
    let scan_ms = (delays.len() == VOLUMES).then(|| (pick(0.5), pick(0.99), pick(1.0)));
    Ok(VolumeWatch { volumes: VOLUMES, first_reads_alerted: alerted, scan_ms })
}

/// One volume: a shell in a new mount namespace mounts a tmpfs where a
/// pod's token goes, writes kubelet's layout, prints the wall clock (ns)
/// and its mount namespace, reads the token at once and lingers.
fn spawn_volume(i: usize) -> Result<Child> {
    let script = format!(
        "sa=/run/secrets/kubernetes.io/serviceaccount ts=..2026_12_04_00_00_00.{i}
         mount -t tmpfs tmpfs /run && mkdir -p $sa && mount -t tmpfs tmpfs $sa || exit 1
         at=$(date +%s%N)
         mkdir $sa/$ts && echo bench-token-not-a-credential > $sa/$ts/token &&
         ln -s $ts $sa/..data && ln -s ..data/token $sa/token || exit 1
         echo $at $(readlink /proc/self/ns/mnt)
         exec 1>&-
         cat /var/run/secrets/kubernetes.io/serviceaccount/token >/dev/null
         sleep {LINGER_S}"
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("running unshare (util-linux)")
}

/// `tokenwatch_alerts_total{rule="token-read"}` once it has counted every
/// volume's read, or what it counted after [`COUNT_TIMEOUT`].
fn alerts(metrics: &str) -> u64 {
    let deadline = Instant::now() + COUNT_TIMEOUT;
    loop {
        let text = agent_probe::metrics_text(metrics).unwrap_or_default();
        let counted = agent_probe::counter_sum(&text, "tokenwatch_alerts_total", "rule=\"token-read\"");
        if counted >= VOLUMES as u64 || Instant::now() > deadline {
            return counted;
        }
        thread::sleep(Duration::from_millis(100));
    }
}
