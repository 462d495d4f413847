//! Debian's cloud kernels, fetched with apt in a state of its own under
//! `target/vmtest/apt/<suite>/`, so that the machine's own sources, lists and
//! package cache stay exactly as they are (ARCHITECTURE.md, "Build
//! machines"). Each suite's newest `linux-image-<abi>-cloud-amd64` is what
//! the metapackage `linux-image-cloud-amd64` depends on; only its
//! `boot/vmlinuz-*` is kept.
//! `cargo xtask fixtures` takes its 6.1 kernel from here too.

use std::cmp::Ordering;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{capture, sources};
use crate::util::{self, say};

/// The metapackage that depends on each suite's current cloud kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// The file in a suite's `kernel/` directory naming the package its vmlinuz
/// came from, to tell a cached kernel from a newer one.
const PACKAGE_RECORD: &str = "package";

/// One unpacked kernel image.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// Its `vmlinuz-<release>`.
    pub vmlinuz: PathBuf,
    /// The Debian package it came from (`linux-image-6.1.0-57-cloud-amd64`).
    pub package: String,
}

/// The newest cloud kernel of Debian's `suite`, downloaded and unpacked
/// unless it already is. Without the network (apt-get update fails) a kernel
/// unpacked earlier is used, with a warning.
pub fn vmlinuz(root: &Path, suite: &str) -> Result<Fetched> {
    let dir = root.join("target/vmtest/apt").join(suite);
    let cached = cached(&dir);
    match fresh(&dir, suite, cached.as_ref()) {
        Ok(fetched) => Ok(fetched),
        Err(err) => match cached {
            Some(fetched) => {
                say(format!(
                    "vmtest: WARNING: could not look for a newer {suite} kernel ({err:#}); using the one \
                     fetched earlier, {}",
                    fetched.package
                ));
                Ok(fetched)
            }
            None => Err(err.context(format!("fetching {suite}'s cloud kernel, and none was fetched before"))),
        },
    }
}

/// The kernel unpacked by an earlier run, if its files are whole.
fn cached(dir: &Path) -> Option<Fetched> {
    let kernel = dir.join("kernel");
    let package = fs::read_to_string(kernel.join(PACKAGE_RECORD)).ok()?.trim().to_owned();
    let vmlinuz = find_file(&kernel, "vmlinuz-", "").ok()?;
    Some(Fetched { vmlinuz, package })
}

/// Refresh the suite's lists, and download and unpack its newest kernel
/// unless `cached` is that one already.
fn fresh(dir: &Path, suite: &str, cached: Option<&Fetched>) -> Result<Fetched> {
    for sub in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(dir.join(sub)).with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let list = dir.join("sources.list");
    let archives = sources::machine_archives()?;
    fs::write(&list, archives.sources_list(suite)).with_context(|| format!("writing {}", list.display()))?;

    let options = apt_options(dir, &list);
    util::run(
        // A list that cannot be fetched fails the update (apt only warns by
        // default): offline, the kernel fetched earlier is then used.
        Command::new("apt-get").args(&options).args(["-q", "update", "--error-on=any"]),
        &format!("refreshing the package lists of {suite} in apt's own state, the machine's untouched"),
    )?;
    let depends = capture(
        Command::new("apt-cache").args(&options).args(["depends", METAPACKAGE]),
        &format!("which versioned kernel {suite}'s {METAPACKAGE} is"),
    )?;
    let package = kernel_package(&depends).with_context(|| format!("no kernel among the dependencies:\n{depends}"))?;
    if let Some(fetched) = cached.filter(|fetched| fetched.package == package) {
        say(format!("vmtest: {package} is unpacked already ({})", fetched.vmlinuz.display()));
        return Ok(fetched.clone());
    }

    let debs = dir.join("debs");
    clear(&debs)?;
    util::run(
        Command::new("apt-get").args(&options).args(["-q", "download", &package]).current_dir(&debs),
        &format!("the newest {suite} cloud kernel"),
    )?;
    let deb = find_file(&debs, "", ".deb")?;
    let unpacked = dir.join("unpacked");
    clear(&unpacked)?;
    util::run(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked),
        "unpacking the package; only its boot/vmlinuz-* is kept",
    )?;
    let image = find_file(&unpacked.join("boot"), "vmlinuz-", "")?;
    let kernel = dir.join("kernel");
    clear(&kernel)?;
    let vmlinuz = kernel.join(image.file_name().context("vmlinuz has a file name")?);
    fs::copy(&image, &vmlinuz).with_context(|| format!("copying {} to {}", image.display(), vmlinuz.display()))?;
    fs::write(kernel.join(PACKAGE_RECORD), format!("{package}\n")).context("recording the kernel's package")?;
    for done in [&unpacked, &debs] {
        fs::remove_dir_all(done).with_context(|| format!("removing {}", done.display()))?;
    }
    Ok(Fetched { vmlinuz, package })
}

/// apt's options for the state under `dir`: its own sources, lists and
/// cache, and an empty dpkg status so nothing installed here matters.
fn apt_options(dir: &Path, list: &Path) -> Vec<OsString> {
    let mut options: Vec<OsString> = Vec::new();
    let mut set = |key: &str, value: &Path| {
        options.push("-o".into());
        let mut option = OsString::from(format!("{key}="));
        option.push(value);
        options.push(option);
    };
    set("Dir::Etc::SourceList", list);
    set("Dir::Etc::SourceParts", Path::new("/dev/null"));
    set("Dir::State::Lists", &dir.join("lists"));
    set("Dir::Cache", &dir.join("cache"));
    set("Dir::State::status", Path::new("/dev/null"));
    if util::is_root() {
        // As root apt drops to `_apt` to download, which cannot write here.
        set("APT::Sandbox::User", Path::new("root"));
    }
    options
}

/// The newest `linux-image-*` that `apt-cache depends` lists as a dependency.
fn kernel_package(depends: &str) -> Option<String> {
    depends
        .lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(|name| name.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|name| name.starts_with("linux-image-") && *name != METAPACKAGE)
        .max_by(|a, b| natural_cmp(a, b))
        .map(str::to_owned)
}

/// Compares names with their digit runs as numbers (`6.1.0-57` > `6.1.0-9`).
fn natural_cmp(a: &str, b: &str) -> Ordering {
    /// The name in runs of digits (as numbers) and of other characters.
    fn runs(text: &str) -> Vec<(u64, &str)> {
        let mut runs = Vec::new();
        let mut rest = text;
        while let Some(first) = rest.chars().next() {
            let digit = first.is_ascii_digit();
            let end = rest.find(|c: char| c.is_ascii_digit() != digit).unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            runs.push(if digit { (run.parse().unwrap_or(u64::MAX), "") } else { (0, run) });
            rest = tail;
        }
        runs
    }
    runs(a).cmp(&runs(b))
}

/// Empty `dir` (creating it if need be).
fn clear(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The one file in `dir` whose name starts with `prefix` and ends with `suffix`.
fn find_file(dir: &Path, prefix: &str, suffix: &str) -> Result<PathBuf> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            return Ok(entry.path());
        }
    }
    bail!("no {prefix}*{suffix} in {}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_versioned_kernel_of_the_metapackage() {
        let depends = "linux-image-cloud-amd64\n  Depends: linux-image-5.10.0-46-cloud-amd64\n";
        assert_eq!(kernel_package(depends).as_deref(), Some("linux-image-5.10.0-46-cloud-amd64"));
        let two = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-9-cloud-amd64\n\
                   linux-image-cloud-amd64\n |Depends: <linux-image-6.1.0-57-cloud-amd64>\n  Depends: dummy\n";
        assert_eq!(kernel_package(two).as_deref(), Some("linux-image-6.1.0-57-cloud-amd64"));
        assert_eq!(kernel_package("linux-image-cloud-amd64\n"), None);
    }

    #[test]
    fn digit_runs_compare_as_numbers() {
        assert_eq!(natural_cmp("6.12.118+deb13", "6.12.9+deb13"), Ordering::Greater);
        assert_eq!(natural_cmp("5.10.0-46", "5.10.0-46"), Ordering::Equal);
    }
}
