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

use std::time::{Duration, Instant};

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
