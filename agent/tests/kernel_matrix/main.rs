//! The kernel matrix: the live detection cases that must pass on every
//! kernel the agent supports. The same binary runs on the build machine
//! (`cargo xtask test`; hybrid cgroups there) and, as root, inside VMs
//! booting Debian's 5.10, 6.1 and 6.12 kernels (`cargo xtask vmtest`: a
//! busybox initramfs, cgroup2 alone, loopback only, no containerd); each
//! test is one row of the kernel x case table.
//!
//! Everything a case needs comes from this binary and the agent's: the
//! real `tokenwatch agent` (its eBPF programs in the running kernel), an
//! *actor* (this binary re-executed, `../support/actor.rs`) that is the
//! pod's process, and helpers the actor runs as its children for the
//! syscalls it has no word for (`../evasion/actions.rs`, and [`helper`]).
//! The "pod" is the actor in a cgroup named as kubelet's systemd driver
//! and containerd name one
//! (`kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`)
//! with its token laid out as kubelet lays it out, and every alert about it
//! must name that container id and pod uid. The API server is a loopback
//! listener of the test's own; the Kubernetes API, for enforcement, an
//! in-test server ([`enforce`]).
//!
//! Each case checks "exactly one alert" (or none) without a blind wait: a
//! last token read by a path no case uses is waited for ([`pod::KubePod::settle`]).
//! Most cases share one agent ([`stage`]): each agent start costs a
//! minute of verification under emulation.
//! On a slow machine (TCG) set `TOKENWATCH_TEST_SLOW` (see `support`).
//! Root only; `#[ignore]`d for a plain `cargo test`.

#[path = "../support/mod.rs"]
mod support;

#[allow(dead_code, reason = "shared with the evasion tests; this target uses part of it")]
#[path = "../evasion/actions.rs"]
mod actions;

mod chain;
mod connects;
mod enforce;
mod flood;
mod helper;
mod pod;
mod reads;
mod stage;

use std::time::Duration;

/// How long an alert may take to arrive (and the agent to find a token or
/// an endpoint): generous, for emulated VMs; a missing alert still fails.
const ALERT_TIMEOUT: Duration = Duration::from_secs(60);
