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
        let unified = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.join("cgroup.controllers").exists() || p.join("cgroup.procs").exists() && is_cgroup2(p));
        let memory = PathBuf::from("/sys/fs/cgroup/memory");
        let mut cgroup = TestCgroup { name: name.clone(), dirs: Vec::new(), has_v2: false, has_v1_memory: false };
        if let Some(root) = unified {
            let dir = root.join(&name);
            fs::create_dir_all(&dir).expect("create unified cgroup");
            cgroup.dirs.push(dir);
            cgroup.has_v2 = true;
        }
        if memory.join("cgroup.procs").exists() {
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

    /// The `cgroup.procs` files a process writes itself into, joined by ':'.
    pub fn procs_files(&self) -> String {
        self.dirs.iter().map(|d| d.join("cgroup.procs").display().to_string()).collect::<Vec<_>>().join(":")
    }
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
