//! Harness of the live tests: real eBPF in this kernel, real processes in
//! their own mount namespaces and cgroups, the real `tokenwatch` binary.
//! They need root; `cargo xtask test` runs them (they are `#[ignore]`d so a
//! plain `cargo test` as a user does not fail on them).
//!
//! Every test target that says `mod support;` compiles all of it and uses a
//! different part, so unused items are expected here.
#![allow(dead_code, unused_imports, reason = "shared test support: each test target uses a different part")]

pub mod actor;
pub mod agent;
pub mod cgroup;
pub mod cri;
pub mod fake_apiserver;
pub mod manifests;
pub mod otlp_collector;
pub mod pki;
pub mod validate;

use std::{
    fs::File,
    path::Path,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

/// Live tests run one at a time, within a test binary and across every
/// test process on the machine (two checkouts testing at once included):
/// each agent watches every mount namespace on the node, so concurrent tests
/// would see each other's tokens and move each other's kernel counters, and
/// containerd harnesses share /run/containerd/s and the kubepods cgroup
/// parents.
static SERIAL: Mutex<()> = Mutex::new(());

/// The machine-wide lock file behind [`serialise`].
const LOCK_FILE: &str = "/run/tokenwatch-live-tests.lock";

/// Holds the live-test lock (in-process and machine-wide) for its lifetime.
pub struct Serial {
    /// Released when dropped; `flock` locks end with the file.
    _file: nix::fcntl::Flock<File>,
    /// The in-process half, so threads of one binary queue without polling.
    _guard: MutexGuard<'static, ()>,
}

/// Holds the live-test lock for the caller's scope.
pub fn serialise() -> Serial {
    let guard = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let file =
        File::options().create(true).truncate(false).write(true).open(LOCK_FILE).expect("the live-test lock file");
    let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("flock on the live-test lock file");
    Serial { _file: file, _guard: guard }
}

/// The `mount_ns=<inode>` the agent logs when it watches a token found in
/// the mount namespace of `pid`. (The log names the lowest pid it met in
/// that namespace, which after pid wrap-around need not be `pid`.)
pub fn mount_ns_of(pid: u32) -> String {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata(format!("/proc/{pid}/ns/mnt")).expect("the process's mount namespace");
    format!("mount_ns={}", ns.ino())
}

/// Writes a kubeconfig for the in-test API server (plain HTTP on loopback,
/// no credentials) into `dir`; returns its path.
pub fn kubeconfig(dir: &Path, server: &str) -> String {
    kubeconfig_with_user(dir, server, "{}")
}

/// [`kubeconfig`] with the user's credentials given as YAML flow mapping,
/// e.g. `{tokenFile: /path}`.
pub fn kubeconfig_with_user(dir: &Path, server: &str, user: &str) -> String {
    let path = dir.join("kubeconfig");
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"{server}\"}}}}]\n\
         users: [{{name: nobody, user: {user}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: nobody}}}}]\n\
         current-context: fake\n"
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path.display().to_string()
}

/// Set (to anything but empty or `0`) on a slow machine, such as a VM under
/// TCG emulation, to stretch the harness's timeouts: by 5, or by the value
/// itself when it is a whole number above 1. Unset, timeouts are as written.
pub const SLOW_ENV: &str = "TOKENWATCH_TEST_SLOW";

/// What [`SLOW_ENV`] multiplies timeouts by (1 when unset).
pub fn slow_factor() -> u32 {
    match std::env::var(SLOW_ENV) {
        Err(_) => 1,
        Ok(value) if value.is_empty() || value == "0" => 1,
        Ok(value) => value.parse().ok().filter(|n| *n > 1).unwrap_or(5),
    }
}

/// `timeout` stretched by [`slow_factor`].
pub fn scaled(timeout: Duration) -> Duration {
    timeout * slow_factor()
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `GET path` over plain HTTP/1.1 to `addr` (host:port); the status code and
/// the body.
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the metrics listener");
    stream.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: tokenwatch\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// The value of the Prometheus sample `series` (name with labels, as
/// rendered) in `text`.
pub fn metric_sample(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The address the agent's metrics listener logged (`addr=HOST:PORT`).
pub fn metrics_addr(stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| l.contains("metrics and health endpoints listening"))?;
    line.split("addr=").nth(1)?.split_whitespace().next().map(str::to_owned)
}

/// The resident set of `pid` in KiB (`VmRSS` in /proc/<pid>/status).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the process's status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:")?.split_whitespace().next()?.parse().ok())
        .expect("a VmRSS line")
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}
