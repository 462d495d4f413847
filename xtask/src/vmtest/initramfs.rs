//! The initramfs every VM boots: a static busybox with its applets, the agent
//! and the test executable at their host paths (the test executable has the
//! agent's path compiled in) with the shared libraries they load, the few
//! files of `/etc` programs expect, and `/init` (init.sh). Staged under
//! `target/vmtest/initramfs/`, packed with `cpio -H newc` and gzip.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::binaries::Binaries;
use super::capture;
use crate::util::{self, say};

/// The VM's /init: mounts what a node has, runs the check and the cases.
const INIT: &str = include_str!("init.sh");
/// Debian's merged /usr: the top-level directories are links into /usr, so
/// a library's path as `ldd` prints it (`/lib/...`, `/lib64/...`) resolves as
/// it does on the host.
const MERGED_USR: [(&str, &str); 4] =
    [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")];
/// Directories the init script mounts over or programs write to.
const DIRECTORIES: [&str; 9] = ["dev", "proc", "sys", "tmp", "run", "root", "etc", "var", "usr/lib/x86_64-linux-gnu"];
/// The VM's host name, set by /init from /etc/hostname.
const HOSTNAME: &str = "vmtest";

/// Build the initramfs for `binaries`, the kernel check killed past
/// `check_limit`; returns the path of the gzipped cpio.
pub fn build(root: &Path, binaries: &Binaries, check_limit: Duration) -> Result<PathBuf> {
    let dir = root.join("target/vmtest/initramfs");
    let staging = dir.join("root");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("clearing {}", staging.display()))?;
    }
    for (link, target) in MERGED_USR {
        fs::create_dir_all(staging.join(target))?;
        symlink(target, staging.join(link))?;
    }
    for sub in DIRECTORIES {
        fs::create_dir_all(staging.join(sub)).with_context(|| format!("creating {sub} in the initramfs"))?;
    }
    symlink("/run", staging.join("var/run"))?; // as Debian has it
    busybox(&staging)?;

    let mut programs = vec![binaries.agent.clone()];
    programs.extend(binaries.tests.iter().cloned());
    for program in &programs {
        let inside = under(&staging, program);
        fs::create_dir_all(inside.parent().context("a program's path has a parent")?)?;
        util::run(
            Command::new("objcopy").arg("--strip-debug").arg(program).arg(&inside),
            "a copy without debug info at the host path, to keep the VM's RAM small",
        )?;
        for library in libraries(program)? {
            let inside = under(&staging, &library);
            if !inside.exists() {
                fs::create_dir_all(inside.parent().context("a library's path has a parent")?)?;
                fs::copy(&library, &inside).with_context(|| format!("copying {}", library.display()))?;
            }
        }
    }

    write(&staging, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\n")?;
    write(&staging, "etc/group", "root:x:0:\n")?;
    write(&staging, "etc/hostname", &format!("{HOSTNAME}\n"))?;
    let tests = binaries.tests.as_deref().map(|path| path.display().to_string()).unwrap_or_default();
    let agent = binaries.agent.display();
    let check = check_limit.as_secs();
    write(&staging, "vmtest.env", &format!("AGENT='{agent}'\nTESTS='{tests}'\nCHECK_SECONDS={check}\n"))?;
    write(&staging, "init", INIT)?;
    fs::set_permissions(staging.join("init"), fs::Permissions::from_mode(0o755))?;

    let image = dir.join("initramfs.cpio.gz");
    util::run(
        Command::new("sh")
            .arg("-c")
            .arg(
                r#"cd "$1" && find . -print0 | cpio --null --create --format=newc --owner=0:0 --quiet | gzip -4 >"$2""#,
            )
            .arg("sh")
            .arg(&staging)
            .arg(&image),
        "packing the initramfs (newc cpio, gzip), files owned by root",
    )?;
    let size = fs::metadata(&image)?.len();
    say(format!("vmtest: initramfs {} ({} MiB)", image.display(), size >> 20));
    Ok(image)
}

/// A static busybox at /bin/busybox, and a link to it for each applet at the
/// path `busybox --list-full` gives, except `busybox` itself (a link over the
/// binary would replace it).
fn busybox(staging: &Path) -> Result<()> {
    let host = util::which("busybox").context("busybox is not on PATH: install busybox-static")?;
    if !libraries(&host)?.is_empty() {
        bail!("{} is linked dynamically: install busybox-static, whose busybox is static", host.display());
    }
    fs::copy(&host, staging.join("bin/busybox")).with_context(|| format!("copying {}", host.display()))?;
    let applets = capture(Command::new(&host).arg("--list-full"), "the applets to link to busybox")?;
    for applet in applets.lines().map(str::trim).filter(|applet| !applet.is_empty()) {
        let link = staging.join(applet);
        if link.file_name().is_some_and(|name| name == "busybox") || link.symlink_metadata().is_ok() {
            continue;
        }
        fs::create_dir_all(link.parent().context("an applet's path has a parent")?)?;
        symlink("/bin/busybox", &link).with_context(|| format!("linking {applet}"))?;
    }
    Ok(())
}

/// The shared libraries `program` loads, the dynamic loader included; none
/// for a static program.
fn libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd").arg(program).output().context("running ldd")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        if String::from_utf8_lossy(&output.stderr).contains("not a dynamic executable") || stdout.contains("statically")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", program.display(), String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(parse_ldd(&stdout))
}

/// The absolute paths in `ldd` output: after `=>`, or first on the line (the
/// loader); the vDSO has neither.
fn parse_ldd(output: &str) -> Vec<PathBuf> {
    output
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, resolved)) => resolved.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// `path` (absolute on the host) inside the staging tree.
fn under(staging: &Path, path: &Path) -> PathBuf {
    staging.join(path.strip_prefix("/").unwrap_or(path))
}

/// Write a file of the staging tree.
fn write(staging: &Path, relative: &str, contents: &str) -> Result<()> {
    let path = staging.join(relative);
    fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_with_the_loader_and_without_the_vdso() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let paths: Vec<PathBuf> =
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .iter()
                .map(PathBuf::from)
                .collect();
        assert_eq!(parse_ldd(output), paths);
    }
}
