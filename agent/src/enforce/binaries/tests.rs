//! Resolving `binaries` in a fake `/proc` whose process's root is a temp
//! directory: symlinks resolve inside the root, globs list directories,
//! and a file that appears is found in the next round.

use std::os::unix::fs::symlink;

use super::*;
use crate::metadata::container_fs::kernel_dev;

/// A fake `/proc` with process 7 whose root is `rootfs`, and that
/// process's mounts (this test's own: the temp directory is on one).
struct Scene {
    dir: tempfile::TempDir,
}

impl Scene {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let rootfs = dir.path().join("rootfs");
        for sub in ["usr/local/bin", "usr/bin", "tmp/bin/sub"] {
            fs::create_dir_all(rootfs.join(sub)).expect("mkdir");
        }
        let proc = dir.path().join("proc/7");
        fs::create_dir_all(&proc).expect("mkdir");
        symlink(&rootfs, proc.join("root")).expect("symlink");
        let mounts = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        fs::write(proc.join("mountinfo"), mounts).expect("write");
        Scene { dir }
    }

    fn rootfs(&self, path: &str) -> PathBuf {
        self.dir.path().join("rootfs").join(path)
    }

    fn file(&self, path: &str) -> (u32, u64) {
        fs::write(self.rootfs(path), "x").expect("write");
        let meta = fs::metadata(self.rootfs(path)).expect("stat");
        (kernel_dev(meta.dev()), meta.ino())
    }

    fn resolver(&self) -> Resolver {
        Resolver::new(self.dir.path().join("proc"))
    }
}

fn scope(block: u32, globs: &[&str], roots: &[u32]) -> BinaryScope {
    BinaryScope {
        cgroup: 100,
        slot: 1,
        block,
        globs: globs.iter().map(|g| Glob::new(g).expect("a valid glob")).collect(),
        roots: roots.to_vec(),
    }
}

fn files(keys: &BTreeMap<BinaryKey, u32>) -> Vec<(u32, u64, u32)> {
    keys.iter().map(|(k, block)| (k.dev, k.ino, *block)).collect()
}

#[test]
fn a_path_resolves_inside_the_containers_root_through_absolute_symlinks() {
    let scene = Scene::new();
    let kubectl = scene.file("usr/local/bin/kubectl");
    symlink("/usr/local/bin/kubectl", scene.rootfs("usr/bin/kubectl")).expect("symlink");
    let keys = scene.resolver().resolve(&[scope(3, &["/usr/bin/kubectl", "/usr/bin/missing"], &[7])]);
    assert_eq!(files(&keys), vec![(kubectl.0, kubectl.1, 3)]);
    let key = keys.keys().next().expect("one");
    assert_eq!((key.cgroup, key.slot), (100, 1), "scoped to the entry's cgroup and slot");
}

#[test]
fn a_glob_covers_each_matching_file_and_no_directory() {
    let scene = Scene::new();
    let cat = scene.file("tmp/bin/cat");
    let hidden = scene.file("tmp/bin/.x");
    scene.file("usr/bin/cat");
    let mut found = files(&scene.resolver().resolve(&[scope(1, &["/tmp/bin/*"], &[7])]));
    found.sort();
    let mut want = vec![(cat.0, cat.1, 1), (hidden.0, hidden.1, 1)];
    want.sort();
    assert_eq!(found, want, "`sub` is a directory, not an executable");
    let found = files(&scene.resolver().resolve(&[scope(1, &["/t?p/*/cat"], &[7])]));
    assert_eq!(found, vec![(cat.0, cat.1, 1)], "wildcards in directories too");
}

#[test]
fn a_file_that_appears_is_found_in_the_next_round() {
    let scene = Scene::new();
    let mut resolver = scene.resolver();
    let scopes = [scope(1, &["/tmp/bin/*"], &[7])];
    assert!(resolver.resolve(&scopes).is_empty());
    let dropped = scene.file("tmp/bin/kubectl");
    assert_eq!(files(&resolver.resolve(&scopes)), vec![(dropped.0, dropped.1, 1)], "the listing changed");
    assert_eq!(resolver.globs.len(), 1, "the result is kept for the next round");
    resolver.resolve(&[]);
    assert!(resolver.globs.is_empty(), "and dropped when no scope asks for it");
}

#[test]
fn the_first_scope_naming_a_file_wins_and_gone_containers_add_nothing() {
    let scene = Scene::new();
    let cat = scene.file("tmp/bin/cat");
    let keys = scene.resolver().resolve(&[scope(1, &["/tmp/bin/cat"], &[99, 7]), scope(2, &["/tmp/bin/*"], &[7])]);
    assert_eq!(files(&keys), vec![(cat.0, cat.1, 1)]);
}

#[test]
fn files_under_a_listed_directory_or_a_missing_one_are_found_in_the_next_round() {
    let scene = Scene::new();
    let mut resolver = scene.resolver();
    // `/tmp/*/kubectl`: `/tmp` does not change when a kubectl appears in
    // `/tmp/bin`; `/opt/tools/*`: the directory does not exist yet.
    let scopes = [scope(1, &["/tmp/*/kubectl", "/opt/tools/*"], &[7])];
    assert!(resolver.resolve(&scopes).is_empty());
    let kubectl = scene.file("tmp/bin/kubectl");
    assert_eq!(files(&resolver.resolve(&scopes)), vec![(kubectl.0, kubectl.1, 1)], "a candidate path, resolved again");
    fs::create_dir_all(scene.rootfs("opt/tools")).expect("mkdir");
    let tool = scene.file("opt/tools/cat");
    let mut found = files(&resolver.resolve(&scopes));
    found.sort();
    let mut want = vec![(kubectl.0, kubectl.1, 1), (tool.0, tool.1, 1)];
    want.sort();
    assert_eq!(found, want, "a directory found missing is looked at again");
    // Replaced behind a symlink: the new file, at once.
    fs::remove_file(scene.rootfs("tmp/bin/kubectl")).expect("rm");
    symlink("/opt/tools/cat", scene.rootfs("tmp/bin/kubectl")).expect("symlink");
    assert_eq!(files(&resolver.resolve(&scopes)), vec![(tool.0, tool.1, 1)]);
}
