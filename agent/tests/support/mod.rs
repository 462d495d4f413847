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
