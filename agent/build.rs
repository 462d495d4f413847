//! Builds the eBPF programs (crate `tokenwatch-ebpf`) for `bpfel-unknown-none`
//! and puts the object in `OUT_DIR`, where `kernel::loader` embeds it.
//!
//! Two toolchains can do it (ARCHITECTURE.md, "Build machines"): Debian's
//! `/usr/bin/rustc`, which ships a prebuilt `core` for the BPF target (what
//! `cargo xtask setup` installs where rustup's nightly has no `rust-src`), or
//! rustup nightly with `rust-src` (`-Z build-std`, the usual aya way).
//! `TOKENWATCH_EBPF_OBJECT` may name a prebuilt object instead.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

const TARGET: &str = "bpfel-unknown-none";

enum Toolchain {
    /// Debian's rustc with a prebuilt core for the BPF target.
    Debian,
    /// rustup nightly with rust-src.
    Nightly,
}

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir.parent().context("agent/ has no parent")?.to_owned();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tokenwatch-ebpf");
    for path in ["ebpf/src", "ebpf/Cargo.toml", "common/src", "common/Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(path).display());
    }
    println!("cargo:rerun-if-env-changed=TOKENWATCH_EBPF_OBJECT");

    if let Some(prebuilt) = env::var_os("TOKENWATCH_EBPF_OBJECT") {
        std::fs::copy(&prebuilt, &object).with_context(|| format!("copying TOKENWATCH_EBPF_OBJECT {prebuilt:?}"))?;
        return Ok(());
    }
    let toolchain = detect_toolchain()?;
    let target_dir = workspace.join("target/ebpf");
    build(&workspace, &target_dir, &toolchain)?;
    let built = target_dir.join(TARGET).join("release/tokenwatch-ebpf");
    std::fs::copy(&built, &object).with_context(|| format!("copying {}", built.display()))?;
    Ok(())
}

fn detect_toolchain() -> anyhow::Result<Toolchain> {
    if which("bpf-linker").is_none() {
        bail!("bpf-linker is not on PATH: run `cargo xtask setup` (it installs bpf-linker 0.13 built against LLVM 22)");
    }
    let debian_core = Path::new("/usr/lib/rustlib").join(TARGET).join("lib");
    let has_debian = Path::new("/usr/bin/rustc").exists()
        && std::fs::read_dir(&debian_core)
            .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
            .unwrap_or(false);
    if has_debian {
        return Ok(Toolchain::Debian);
    }
    let nightly_src = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("lib/rustlib/src/rust/library/core"));
    if nightly_src.is_some_and(|p| p.exists()) {
        return Ok(Toolchain::Nightly);
    }
    bail!(
        "no compiler for {TARGET}: neither Debian's rustc with libstd-rust-web-dev-bpf nor rustup nightly with \
         rust-src is installed. Run `cargo xtask setup`."
    )
}

fn build(workspace: &Path, target_dir: &Path, toolchain: &Toolchain) -> anyhow::Result<()> {
    let flags = ["--cfg=bpf_target_arch=\"x86_64\"", "-Cdebuginfo=2", "-Clink-arg=--btf"].join("\x1f");
    // Read before the loop below drops every CARGO_* variable.
    let mut command = match toolchain {
        Toolchain::Debian => Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into())),
        Toolchain::Nightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
    };
    // The outer cargo's settings (wrappers such as clippy-driver, its target,
    // its flags, its toolchain) must not leak into the BPF build.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy();
        let keep = matches!(key.as_ref(), "CARGO_HOME" | "CARGO_NET_OFFLINE");
        if !keep
            && (key.starts_with("CARGO_")
                || key.starts_with("RUSTC")
                || key.starts_with("RUSTDOC")
                || key == "RUSTFLAGS"
                || key == "RUSTUP_TOOLCHAIN"
                || key == "TARGET"
                || key == "HOST")
        {
            command.env_remove(key.as_ref());
        }
    }
    if let Toolchain::Debian = toolchain {
        // Unstable features for aya-ebpf and the programs only (`asm!` on
        // the BPF target: `ebpf/src/main.rs`).
        command.env("RUSTC", "/usr/bin/rustc").env("RUSTC_BOOTSTRAP", "aya_ebpf,tokenwatch_ebpf");
    }
    command
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .args(["build", "--package", "tokenwatch-ebpf", "--release", "--target", TARGET, "--target-dir"])
        .arg(target_dir);
    if let Toolchain::Nightly = toolchain {
        command.args(["-Z", "build-std=core"]);
    }
    let output = command.output().context("running cargo for the eBPF crate")?;
    if !output.status.success() {
        bail!("building the eBPF programs failed:\n{}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|p| p.is_file())
}
