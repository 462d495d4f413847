//! `cargo xtask build`: build the workspace. The agent's build script builds
//! the eBPF object itself (with Debian's rustc or rustup nightly, and
//! bpf-linker from PATH), so one `cargo build` does everything.

use std::path::PathBuf;

use anyhow::Result;

use crate::util::{self, say};

/// Build every crate but the eBPF one (the agent's build script builds that) in the debug or release profile; returns the
/// path of the `tokenwatch` binary.
pub fn build(release: bool) -> Result<PathBuf> {
    let mut command = util::cargo();
    command.arg("build").args(util::HOST_WORKSPACE);
    let profile = if release {
        command.arg("--release");
        "release"
    } else {
        "debug"
    };
    util::run(
        &mut command,
        &format!("the {profile} build of every crate; agent/build.rs compiles and embeds the eBPF programs"),
    )?;
    let binary = util::workspace_root().join("target").join(profile).join("tokenwatch");
    say(format!("built {}", binary.display()));
    Ok(binary)
}
