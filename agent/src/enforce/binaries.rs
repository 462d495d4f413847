//! Resolves block entries' `binaries` into the files the kernel judges: for
//! each [`BinaryScope`], each path (or glob) inside each covered
//! container's root, as the container's processes would resolve it, to the
//! `(s_dev, i_ino)` the kernel reads from `task->mm->exe_file`.
//!
//! The kernel compares identities, not names, so:
//! * a symlink or hard link to a listed file is that executable (busybox's
//!   applets are all busybox), and a name the process was started under
//!   does not matter;
//! * a copy of a listed file elsewhere is another file, not covered unless
//!   a glob names where it lies;
//! * a file that appears or is replaced at a listed path is covered from
//!   the next round (every `RECONCILE_INTERVAL`);
//! * the executable is the file the kernel runs: a script (`#!`) runs its
//!   interpreter, so listing a script covers nothing.
//!
//! Every round, each candidate path is resolved again (one `openat2` and
//! one `statx`), so a file replaced at a path, or behind a symlink, is
//! seen at once. A glob's candidates come from listing the directories its
//! wildcards stand for; that listing is kept while every directory it read
//! (or found missing) looks the same (inode, mtime, ctime) and at most
//! [`GLOB_REFRESH`], so a glob over a large directory is not listed four
//! times a second. Each (container, pattern) is resolved once per round,
//! however many scopes name it.

use std::{
    cell::OnceCell,
    collections::{hash_map::Entry, BTreeMap, HashMap, HashSet},
    fs,
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tokenwatch_common::BinaryKey;

use super::plan::BinaryScope;
use crate::{
    detect::policy::Glob,
    metadata::container_fs::{kernel_file_key, mountinfo_of, open_dir, open_in_root, OFlags},
};

/// How long a glob's result is trusted while its directories look unchanged.
pub const GLOB_REFRESH: Duration = Duration::from_secs(10);
/// Files one glob may expand to in one container; more are left out, with
/// a warning (a glob that wide is a mistake, and the map is bounded).
pub const MAX_FILES_PER_GLOB: usize = 1024;
/// Candidate paths one glob may list in one container (most are usually
/// not regular files, or do not exist).
const MAX_CANDIDATES_PER_GLOB: usize = 4 * MAX_FILES_PER_GLOB;

/// Resolves scopes round after round, remembering globs' results.
pub struct Resolver {
    proc: PathBuf,
    globs: HashMap<(u32, String), Expansion>,
    /// Globs already warned about for being too wide.
    warned: HashSet<String>,
}

/// One glob's candidate paths in one container, and the directories they
/// were read from (`None`: the directory was missing).
struct Expansion {
    paths: Vec<PathBuf>,
    listed: Vec<(PathBuf, Option<DirStamp>)>,
    at: Instant,
}

/// What tells a directory's entries changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DirStamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// A container's root, opened once per round, and its mounts, read once
/// per round when a file is first keyed there.
struct Root {
    fd: OwnedFd,
    mountinfo: OnceCell<String>,
    pid: u32,
}

impl Resolver {
    /// A resolver reading processes under `proc` (normally `/proc`).
    pub fn new(proc: PathBuf) -> Self {
        Resolver { proc, globs: HashMap::new(), warned: HashSet::new() }
    }

    /// The kernel keys of every scope's files, each naming its entry (the
    /// first scope to name a key wins: scopes come in judging order).
    /// A container that is gone or a path that is missing adds nothing.
    pub fn resolve(&mut self, scopes: &[BinaryScope]) -> BTreeMap<BinaryKey, u32> {
        let mut keys = BTreeMap::new();
        let mut roots: HashMap<u32, Option<Root>> = HashMap::new();
        let mut resolved: HashMap<(u32, String), Vec<(u32, u64)>> = HashMap::new();
        for scope in scopes {
            for &pid in &scope.roots {
                let root = roots.entry(pid).or_insert_with(|| self.open_root(pid));
                let Some(root) = root.as_ref() else { continue };
                for glob in &scope.globs {
                    let pattern = glob.as_string();
                    let files = match resolved.entry((pid, pattern)) {
                        Entry::Occupied(known) => known.into_mut(),
                        Entry::Vacant(new) => {
                            let files = self.files(root, new.key().1.as_str());
                            new.insert(files)
                        }
                    };
                    for file in files.iter() {
                        keys.entry(scope.key(*file)).or_insert(scope.block);
                    }
                }
            }
        }
        self.globs.retain(|key, _| resolved.contains_key(key));
        keys
    }

    fn open_root(&self, pid: u32) -> Option<Root> {
        let fd = open_dir(&self.proc.join(pid.to_string()).join("root")).ok()?;
        Some(Root { fd, mountinfo: OnceCell::new(), pid })
    }

    /// The regular files `pattern` names in one container now.
    fn files(&mut self, root: &Root, pattern: &str) -> Vec<(u32, u64)> {
        if Glob::is_literal(pattern) {
            return self.key(root, Path::new(pattern)).into_iter().collect();
        }
        let paths = self.candidates(root, pattern);
        let files: Vec<(u32, u64)> = paths.iter().filter_map(|path| self.key(root, path)).collect();
        if files.len() > MAX_FILES_PER_GLOB && self.warned.insert(pattern.to_owned()) {
            tracing::warn!(
                binaries = pattern,
                found = files.len(),
                max = MAX_FILES_PER_GLOB,
                "a block entry's binaries glob matches too many files in a container: only the first are covered"
            );
        }
        files.into_iter().take(MAX_FILES_PER_GLOB).collect()
    }

    /// The kernel identity of the regular file at `path` in the container.
    fn key(&self, root: &Root, path: &Path) -> Option<(u32, u64)> {
        let fd = open_in_root(&root.fd, path, OFlags::PATH | OFlags::CLOEXEC)?;
        kernel_file_key(&fd, root.mountinfo.get_or_init(|| mountinfo_of(&self.proc, root.pid)))
    }

    /// A glob's candidate paths in one container, from the last listing
    /// while every directory it read looks the same.
    fn candidates(&mut self, root: &Root, pattern: &str) -> Vec<PathBuf> {
        let cache_key = (root.pid, pattern.to_owned());
        if let Some(known) = self.globs.get(&cache_key) {
            let fresh = known.at.elapsed() < GLOB_REFRESH
                && known.listed.iter().all(|(dir, stamp)| dir_stamp(root, dir) == *stamp);
            if fresh {
                return known.paths.clone();
            }
        }
        let mut listed = Vec::new();
        let paths = walk(root, pattern, &mut listed);
        if paths.len() > MAX_CANDIDATES_PER_GLOB && self.warned.insert(pattern.to_owned()) {
            tracing::warn!(
                binaries = pattern,
                found = paths.len(),
                max = MAX_CANDIDATES_PER_GLOB,
                "a block entry's binaries glob names too many paths in a container: only the first are looked at"
            );
        }
        let paths: Vec<PathBuf> = paths.into_iter().take(MAX_CANDIDATES_PER_GLOB).collect();
        self.globs.insert(cache_key, Expansion { paths: paths.clone(), listed, at: Instant::now() });
        paths
    }
}

/// Every path in the container that `pattern` may name, component by
/// component (a wildcard never spans a `/`; a literal component is
/// appended whether or not it exists, and resolved each round), with the
/// directories listed or found missing.
fn walk(root: &Root, pattern: &str, listed: &mut Vec<(PathBuf, Option<DirStamp>)>) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/")];
    for component in pattern.split('/').filter(|c| !c.is_empty()) {
        if Glob::is_literal(component) {
            paths.iter_mut().for_each(|path| path.push(component));
            continue;
        }
        // Every segment of a policy's pattern compiled when it was loaded.
        let Ok(glob) = Glob::new(component) else { return Vec::new() };
        let mut next = Vec::new();
        for dir in &paths {
            let Some((stamp, names)) = list(root, dir) else {
                listed.push((dir.clone(), None));
                continue;
            };
            listed.push((dir.clone(), Some(stamp)));
            next.extend(names.into_iter().filter(|name| glob.matches(name)).map(|name| dir.join(name)));
            if next.len() > MAX_CANDIDATES_PER_GLOB {
                break;
            }
        }
        next.sort();
        paths = next;
    }
    paths
}

/// A directory's stamp and entry names.
fn list(root: &Root, dir: &Path) -> Option<(DirStamp, Vec<String>)> {
    let fd = open_in_root(&root.fd, dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
    let file = fs::File::from(fd);
    let stamp = stamp_of(&file.metadata().ok()?);
    // The descriptor's own directory, whatever its path is on the host.
    let entries = fs::read_dir(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&file))).ok()?;
    let names = entries.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect();
    Some((stamp, names))
}

fn dir_stamp(root: &Root, dir: &Path) -> Option<DirStamp> {
    let fd = open_in_root(&root.fd, dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC)?;
    Some(stamp_of(&fs::File::from(fd).metadata().ok()?))
}

fn stamp_of(meta: &fs::Metadata) -> DirStamp {
    DirStamp {
        dev: meta.dev(),
        ino: meta.ino(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

#[cfg(test)]
mod tests;
