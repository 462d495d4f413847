//! Cgroups made for one test, on the unified hierarchy and on the v1 memory
//! hierarchy where the machine has them, removed on drop.

use std::{fs, path::PathBuf};

/// One cgroup directory per hierarchy, all with the same leaf name.
pub struct TestCgroup {
    /// The leaf name.
    pub name: String,
    /// Directories made, unified first.
    pub dirs: Vec<PathBuf>,
    /// Whether a unified (v2) directory is among them.
    pub has_v2: bool,
    /// Whether a v1 memory directory is among them.
    pub has_v1_memory: bool,
}

impl TestCgroup {
    /// Makes `tokenwatch-test-<pid>-<tag>` in every hierarchy present.
    pub fn create(tag: &str) -> TestCgroup {
        TestCgroup::create_at(&format!("tokenwatch-test-{}-{tag}", std::process::id()))
    }

    /// A cgroup at `name` (a path relative to each hierarchy's root).
    fn create_at(name: &str) -> TestCgroup {
        let name = name.to_owned();
        let (unified, memory) = roots();
        let mut cgroup = TestCgroup { name: name.clone(), dirs: Vec::new(), has_v2: false, has_v1_memory: false };
        if let Some(root) = unified {
            let dir = root.join(&name);
            fs::create_dir_all(&dir).expect("create unified cgroup");
            cgroup.dirs.push(dir);
            cgroup.has_v2 = true;
        }
        if let Some(memory) = memory {
            let dir = memory.join(&name);
            fs::create_dir_all(&dir).expect("create v1 memory cgroup");
            cgroup.dirs.push(dir);
            cgroup.has_v1_memory = true;
        }
        assert!(!cgroup.dirs.is_empty(), "no cgroup hierarchy found under /sys/fs/cgroup");
        cgroup
    }

    /// A cgroup `leaf` inside a cgroup `parent`, both named exactly so (as a
    /// runtime with the systemd driver names them), on every hierarchy
    /// found. `dirs` lists the parents, then the leaves: a process joins
    /// the leaf last, and drop removes the leaves first.
    pub fn create_nested(parent: &str, leaf: &str) -> TestCgroup {
        let mut outer = TestCgroup::create_at(parent);
        let mut inner = TestCgroup::create_at(&format!("{parent}/{leaf}"));
        let mut dirs = std::mem::take(&mut outer.dirs);
        dirs.append(&mut inner.dirs);
        TestCgroup { name: leaf.to_owned(), dirs, has_v2: outer.has_v2, has_v1_memory: outer.has_v1_memory }
    }

    /// A cgroup at the path `levels` (outermost first, each named exactly
    /// so, as kubelet's systemd driver nests
    /// `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid>.slice/
    /// cri-containerd-<id>.scope`), on every hierarchy found. `dirs` lists
    /// the levels this call made, outermost first (the leaf always): a
    /// process joins the leaf last, and drop removes only what was made,
    /// innermost first.
    pub fn create_path(levels: &[&str]) -> TestCgroup {
        assert!(!levels.is_empty(), "a cgroup path needs a leaf");
        let mut dirs = Vec::new();
        let mut path = String::new();
        let (mut has_v2, mut has_v1_memory) = (false, false);
        for (at, level) in levels.iter().enumerate() {
            path = if path.is_empty() { (*level).to_owned() } else { format!("{path}/{level}") };
            let (unified, memory) = roots();
            let existed = unified.iter().chain(&memory).all(|root| root.join(&path).is_dir());
            let mut made = TestCgroup::create_at(&path);
            (has_v2, has_v1_memory) = (made.has_v2, made.has_v1_memory);
            // Taken out, so dropping `made` removes nothing.
            let made_dirs = std::mem::take(&mut made.dirs);
            if !existed || at + 1 == levels.len() {
                dirs.extend(made_dirs);
            }
        }
        let name = levels[levels.len() - 1].to_owned();
        TestCgroup { name, dirs, has_v2, has_v1_memory }
    }

    /// The leaf's directory on the unified hierarchy, if there is one.
    pub fn unified_dir(&self) -> Option<&std::path::Path> {
        self.has_v2.then(|| self.dirs.iter().rev().find(|d| is_cgroup2(d))).flatten().map(PathBuf::as_path)
    }

    /// The `cgroup.procs` files a process writes itself into, joined by ':'.
    pub fn procs_files(&self) -> String {
        self.dirs.iter().map(|d| d.join("cgroup.procs").display().to_string()).collect::<Vec<_>>().join(":")
    }
}

/// The unified hierarchy's root and the v1 memory hierarchy's, where
/// present.
fn roots() -> (Option<PathBuf>, Option<PathBuf>) {
    let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists() || p.join("cgroup.procs").exists() && is_cgroup2(p));
    let memory = PathBuf::from("/sys/fs/cgroup/memory");
    (unified, memory.join("cgroup.procs").exists().then_some(memory))
}

fn is_cgroup2(path: &std::path::Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for dir in self.dirs.iter().rev() {
            // Fails only while a process is still inside: the actor is
            // reaped before this runs.
            let _ = fs::remove_dir(dir);
        }
    }
}
