//! tokenwatch's node agent as a library; `main.rs` is a thin CLI over it.
//!
//! The event's path reads top to bottom: [`kernel`] (load, attach, read,
//! decode) -> [`metadata`] (process, cgroup, token files) -> [`detect`]
//! (alerts) -> [`deliver`] (sinks); [`metrics`] counts along the way. [`daemon`] wires the stages into tasks
//! with one shutdown path. [`inventory`] keeps the token usage evidence
//! and turns it into hardening advice.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod deliver;
pub mod detect;
pub mod enforce;
pub mod inventory;
pub mod kernel;
pub mod metadata;
pub mod metrics;
pub mod printable;
