//! `cargo xtask setup`: install what building and testing need, and only what
//! is missing (the build machines' facts: ARCHITECTURE.md, "Build machines").
//! Safe to run any number of times.
//!
//! * A compiler for `bpfel-unknown-none`: rustup nightly with `rust-src` (the
//!   usual aya way) if present, else Debian's `rustc-web` with its prebuilt
//!   `core` for the BPF target (`libstd-rust-web-dev-bpf`), plus `llvm-22-dev`
//!   for bpf-linker.
//! * bpf-linker 0.13.
//! * `protoc` (Debian's `protobuf-compiler`), which k8s-cri's build runs.
//! * For the CRI tests' real pods: `containerd` and `runc`, and `umoci` and
//!   `busybox-static` to build their image without a registry. The tests start
//!   their own containerd (own socket, root and state); a system one is never
//!   used.
//! * For the deploy tests: `buildah` (the image, built from scratch), and
//!   `kubectl` (its kustomize renders deploy/) and `kubernetes-validate` (from
//!   PyPI) to check the manifests against the Kubernetes schemas.
//! * For the metrics tests: Debian's `prometheus`, run by the test itself
//!   (own port, own storage) to scrape two agents.
//! * tracefs, where the agent's tracepoints are listed.
//! * `kubernetes-validate` from PyPI (with pip, and python3 from Debian if
//!   missing): the advise tests check every Kubernetes object
//!   `tokenwatch advise` emits against the API's schemas with it.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{self, say};

/// Debian's compiler for the BPF target and the LLVM bpf-linker links against.
const DEBIAN_PACKAGES: [&str; 3] = ["rustc-web", "libstd-rust-web-dev-bpf", "llvm-22-dev"];
/// Packages every build needs whatever the eBPF route: `protoc`, which the
/// CRI client crate (k8s-cri) runs in its build script.
const COMMON_PACKAGES: [&str; 1] = ["protobuf-compiler"];
/// What the CRI tests need to run real pods without a cluster or a registry
/// (ARCHITECTURE.md, "Build machines").
const CRI_TEST_PACKAGES: [&str; 4] = ["containerd", "runc", "umoci", "busybox-static"];
/// What the deploy tests need: `buildah` builds the agent's image from
/// scratch with neither a registry nor a Docker daemon.
const DEPLOY_TEST_PACKAGES: [&str; 1] = ["buildah"];
/// What the metrics tests need: a real Prometheus scraping two agents, which
/// `tokenwatch inventory --prometheus` and `advise --prometheus` then ask.
const METRICS_TEST_PACKAGES: [&str; 1] = ["prometheus"];
/// The Kubernetes schema validator the deploy and advise tests run (from
/// PyPI), pinned so CI validates against a known schema set.
const SCHEMA_VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The official Python gRPC client's reflection (it pulls grpcio and protobuf).
const GRPC_REFLECTION: &str = "grpcio-reflection==1.85.1";
/// The peers `cargo xtask bench` measures tokenwatch against.
const BENCH_PACKAGES: [&str; 3] = ["bpftrace", "auditd", "bpftool"];
/// What `cargo xtask vmtest` needs: qemu to boot other kernels, `cpio` to
/// pack the initramfs, and a static busybox for its userland.
const VM_PACKAGES: [&str; 3] = ["qemu-system-x86", "cpio", "busybox-static"];
/// Where the LLVM of `llvm-22-dev` lives.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The bpf-linker release line that links aya-ebpf 0.2 objects.
const BPF_LINKER_LINE: &str = "0.13";
/// tracefs, as mounted by modern kernels and under debugfs by older setups.
const TRACEFS_EVENTS: [&str; 2] = ["/sys/kernel/tracing/events", "/sys/kernel/debug/tracing/events"];
/// Where setup mounts tracefs when it is nowhere.
const TRACEFS_MOUNT: &str = "/sys/kernel/tracing";

/// How the eBPF crate will be compiled (agent/build.rs makes the same choice).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// rustup nightly with rust-src: `-Z build-std=core`.
    Nightly,
    /// Debian's `/usr/bin/rustc` with a prebuilt `core` for the BPF target.
    Debian,
}

/// What setup found and what it had to install.
#[derive(Default)]
struct Report {
    /// Things that were already there.
    present: Vec<String>,
    /// Things setup installed or mounted.
    installed: Vec<String>,
}

/// Check everything and install what is missing.
pub fn setup() -> Result<()> {
    let started = Instant::now();
    let mut report = Report::default();
    let route = ebpf_route();

    let mut missing: Vec<&str> = Vec::new();
    let mut reasons: Vec<&str> = Vec::new();
    let debian: &[&str] = if route == Route::Debian { &DEBIAN_PACKAGES } else { &[] };
    let groups: [(&[&str], &str); 5] = [
        (debian, "Debian's rustc ships core for bpfel-unknown-none; rustup cannot fetch rust-src here"),
        (&COMMON_PACKAGES, "the CRI client crate compiles the CRI protos with protoc at build time"),
        (
            &CRI_TEST_PACKAGES,
            "the CRI tests run real pods in a containerd of their own (with runc), in an image built from \
             busybox-static with umoci, since no registry is reachable",
        ),
        (
            &DEPLOY_TEST_PACKAGES,
            "the deploy tests build the agent's image from scratch with buildah (no registry, no Docker)",
        ),
        (&METRICS_TEST_PACKAGES, "the inventory's metrics are tested against a real Prometheus scraping two agents"),
    ];
    for (packages, reason) in groups {
        let before = missing.len();
        for &package in packages {
            if package_installed(package)? {
                report.present.push(package.to_owned());
            } else {
                missing.push(package);
            }
        }
        if missing.len() > before {
            reasons.push(reason);
        }
    }
    if util::which("cc").is_none() {
        missing.extend(["gcc", "libc6-dev"]);
        reasons.push("rustc links host binaries, and llvm-sys its wrappers, through cc, which is not on PATH");
    }
    install_packages(&missing, &reasons.join("; "), &mut report)?;
    bpf_linker(route, &mut report)?;
    tracefs(&mut report)?;
    deploy_tools(&mut report)?;
    python_tools(&mut report)?;

    let list = |items: &[String]| if items.is_empty() { "nothing".to_owned() } else { items.join(", ") };
    say(format!(
        "setup done in {}: already present: {}; installed: {}",
        util::human(started.elapsed()),
        list(&report.present),
        list(&report.installed)
    ));
    Ok(())
}

/// `kubectl kustomize` renders the manifests (kubectl comes with this kind
/// of machine; Debian's kubernetes-client is too old for the kustomizations).
fn deploy_tools(report: &mut Report) -> Result<()> {
    if util::probe(Command::new("kubectl").args(["kustomize", "--help"])).is_some_and(|o| o.status.success()) {
        report.present.push("kubectl (kustomize)".to_owned());
    } else {
        bail!(
            "kubectl with its built-in kustomize (v5) is needed to render deploy/ and is not on PATH; \
             install kubectl from the Kubernetes project's packages"
        );
    }
    Ok(())
}

/// What `cargo xtask bench` compares against: bpftrace and auditd, from
/// Debian. Not part of `setup` itself: tests do not need them.
pub fn bench_tools() -> Result<()> {
    install_missing(&BENCH_PACKAGES, "the benchmark measures bpftrace and auditd side by side with tokenwatch, and bpftool reads the programs' run time")
}

/// What `cargo xtask vmtest` boots kernels with: qemu, cpio and a static
/// busybox, from Debian. Not part of `setup` itself: tests do not need them.
pub fn vm_tools() -> Result<()> {
    install_missing(
        &VM_PACKAGES,
        "the kernel matrix boots Debian's kernels in qemu with an initramfs packed by cpio around a static busybox",
    )
}

/// Installs those of `packages` dpkg does not list, saying `why`: for the
/// tasks (bench, fuzz) whose tools the tests do not need.
pub fn install_missing(packages: &[&str], why: &str) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !package_installed(p).unwrap_or(false)).collect();
    install_packages(&missing, why, &mut Report::default())
}

/// Nightly if rustup's nightly has rust-src, else Debian; says which and why.
fn ebpf_route() -> Route {
    let sysroot = util::probe_stdout(
        Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]).env_remove("RUSTUP_TOOLCHAIN"),
    );
    let why = match sysroot {
        None if util::which("rustup").is_none() => "rustup is not on PATH".to_owned(),
        None => "rustup has no nightly toolchain".to_owned(),
        Some(sysroot) => {
            let core = Path::new(&sysroot).join("lib/rustlib/src/rust/library/core");
            if core.exists() {
                say(format!(
                    "setup: rustup nightly has rust-src ({}): the eBPF crate builds with -Z build-std, \
                     Debian's rustc is not needed",
                    core.display()
                ));
                return Route::Nightly;
            }
            format!("rustup nightly has no rust-src ({} is missing)", core.display())
        }
    };
    say(format!(
        "setup: {why}: the eBPF crate needs Debian's rustc with its prebuilt core for bpfel-unknown-none \
         ({})",
        DEBIAN_PACKAGES.join(" ")
    ));
    Route::Debian
}

/// Whether dpkg says `package` is installed.
fn package_installed(package: &str) -> Result<bool> {
    let output = util::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", package])).with_context(|| {
        format!(
            "dpkg-query is not available: setup knows Debian only. Install {} by hand, or rustup nightly \
             with rust-src",
            DEBIAN_PACKAGES.join(" ")
        )
    })?;
    Ok(output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == "install ok installed")
}

/// `apt-get update` once, then install `packages`, if there are any.
fn install_packages(packages: &[&str], why: &str, report: &mut Report) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    say(format!("installing {} ({why})", packages.join(" ")));
    let what = "installing Debian packages";
    util::run(
        util::privileged("apt-get", &[], what)?.arg("update"),
        "refreshing apt's package lists once before installing",
    )?;
    util::run(
        util::privileged("apt-get", &[("DEBIAN_FRONTEND", "noninteractive")], what)?
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages),
        why,
    )?;
    for package in packages {
        if !package_installed(package)? {
            bail!("apt-get install finished, but dpkg does not list {package} as installed");
        }
        report.installed.push((*package).to_owned());
    }
    Ok(())
}

/// What `bpf-linker --version` says, if it runs.
fn bpf_linker_version() -> Option<String> {
    util::probe_stdout(Command::new("bpf-linker").arg("--version"))
}

/// Whether a `bpf-linker --version` line is of the 0.13 line.
fn is_wanted_line(version: &str) -> bool {
    version.split_whitespace().nth(1).is_some_and(|v| v.starts_with(&format!("{BPF_LINKER_LINE}.")))
}

/// Install bpf-linker 0.13 unless PATH already has it.
fn bpf_linker(route: Route, report: &mut Report) -> Result<()> {
    let why = match bpf_linker_version() {
        Some(version) if is_wanted_line(&version) => {
            report.present.push(version);
            return Ok(());
        }
        Some(version) => format!("PATH has {version}, but aya-ebpf 0.2 objects need bpf-linker {BPF_LINKER_LINE}"),
        None => "bpf-linker is not on PATH; agent/build.rs links the eBPF object with it".to_owned(),
    };
    let version = format!("^{BPF_LINKER_LINE}");
    let mut command = util::cargo();
    command.args(["install", "bpf-linker", "--version", &version]);
    let why = match route {
        Route::Debian => {
            command.env("LLVM_PREFIX", LLVM_PREFIX).args(["--no-default-features", "--features", "llvm-22"]);
            format!("{why}; built against Debian's LLVM 22, the LLVM of /usr/bin/rustc (about a minute)")
        }
        Route::Nightly => why,
    };
    command.arg("--locked");
    util::run(&mut command, &why)?;
    match bpf_linker_version() {
        Some(version) if is_wanted_line(&version) => {
            report.installed.push(version);
            Ok(())
        }
        found => bail!(
            "cargo install finished, but `bpf-linker --version` on PATH reports {}; the one found first is {}",
            found.as_deref().unwrap_or("nothing"),
            util::which("bpf-linker").map_or_else(|| "none".to_owned(), |path| path.display().to_string())
        ),
    }
}

/// tracefs's `events` directory, where it is mounted (and visible: root).
pub fn tracefs_events() -> Option<&'static Path> {
    TRACEFS_EVENTS.iter().map(Path::new).find(|events| events.exists())
}

/// Where tracefs is mounted: its `events` directory, or failing that (a user
/// other than root cannot look inside the mode 700 tracefs) a `tracefs` line
/// in /proc/self/mounts.
fn tracefs_mount() -> Option<String> {
    if let Some(events) = tracefs_events() {
        return Some(events.parent().unwrap_or(events).display().to_string());
    }
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let mount_point = fields.nth(1)?;
        (fields.next()? == "tracefs").then(|| mount_point.to_owned())
    })
}

/// Mount tracefs unless it is mounted somewhere already.
fn tracefs(report: &mut Report) -> Result<()> {
    if let Some(dir) = tracefs_mount() {
        report.present.push(format!("tracefs ({dir})"));
        return Ok(());
    }
    util::run(
        util::privileged("mount", &[], "mounting tracefs")?.args(["-t", "tracefs", "tracefs", TRACEFS_MOUNT]),
        "tracefs is not mounted; the agent's tracepoints are listed there",
    )?;
    if !Path::new(TRACEFS_EVENTS[0]).exists() {
        bail!("mounted tracefs at {TRACEFS_MOUNT}, but {} is still missing", TRACEFS_EVENTS[0]);
    }
    report.installed.push(format!("tracefs ({TRACEFS_MOUNT})"));
    Ok(())
}

/// A package from PyPI the tests use, and how to tell it is there.
struct PythonTool {
    /// What pip installs (pinned).
    spec: &'static str,
    /// A module python3 must import.
    module: &'static str,
    /// A command that must be on PATH, if the tests run one.
    command: Option<&'static str>,
    /// Why the tests need it.
    why: &'static str,
}

/// The PyPI packages the tests use.
const PYTHON_TOOLS: [PythonTool; 2] = [
    PythonTool {
        spec: SCHEMA_VALIDATOR,
        module: "kubernetes_validate",
        command: Some("kubernetes-validate"),
        why: "the deploy and advise tests check every rendered manifest and every object `tokenwatch advise` \
              emits with kubernetes-validate --strict, a schema validator from PyPI",
    },
    PythonTool {
        spec: GRPC_REFLECTION,
        module: "grpc_reflection.v1alpha.proto_reflection_descriptor_database",
        command: None,
        why: "the stream tests discover the agent's API by reflection with the official Python gRPC client, as a \
              SIEM integration written in Python does",
    },
];

/// Whether `python3` can import `tool` and its command is on PATH.
fn python_tool_present(tool: &PythonTool) -> bool {
    util::probe(Command::new("python3").args(["-c", &format!("import {}", tool.module)]))
        .is_some_and(|o| o.status.success())
        && tool.command.is_none_or(|command| util::which(command).is_some())
}

/// Installs each of [`PYTHON_TOOLS`] with pip unless python3 has it
/// (python3 and pip from Debian first if they are missing).
fn python_tools(report: &mut Report) -> Result<()> {
    for tool in &PYTHON_TOOLS {
        python_tool(tool, report)?;
    }
    Ok(())
}

fn python_tool(tool: &PythonTool, report: &mut Report) -> Result<()> {
    let spec = tool.spec;
    if python_tool_present(tool) {
        report.present.push(format!("{spec} (PyPI)"));
        return Ok(());
    }
    let has_pip =
        util::probe(Command::new("python3").args(["-m", "pip", "--version"])).is_some_and(|o| o.status.success());
    if !has_pip {
        install_packages(&["python3", "python3-pip"], tool.why, report)?;
    }
    let pip = |extra: &[&str]| {
        util::probe(Command::new("python3").args(["-m", "pip", "install", "--quiet"]).args(extra).arg(spec))
    };
    say(format!("installing {spec} with pip ({})", tool.why));
    let output = pip(&[]).context("running python3 -m pip")?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !stderr.contains("externally-managed-environment") {
            bail!("pip install {spec} failed:\n{stderr}");
        }
        // Debian's own python3 refuses pip (PEP 668); this machine is a build box.
        let output = pip(&["--break-system-packages"]).context("running python3 -m pip")?;
        if !output.status.success() {
            bail!("pip install {spec} failed:\n{}", String::from_utf8_lossy(&output.stderr));
        }
    }
    if !python_tool_present(tool) {
        bail!("pip installed {spec}, but python3 cannot import {} or its command is not on PATH", tool.module);
    }
    report.installed.push(format!("{spec} (PyPI)"));
    Ok(())
}
