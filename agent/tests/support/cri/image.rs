//! The harness's image, built without a registry: a rootfs of
//! `/bin/busybox` (busybox-static) and a symlink per applet in `/bin`
//! (never `busybox` onto itself), `/tmp`, `/run`, `/var/run -> ../run` as in
//! most distribution images, and a minimal `/etc/passwd`; made into an OCI
//! image with `umoci` (init, new, unpack, copy in, repack, config) whose
//! default command is `sleep infinity`; archived with `tar`; imported with
//! `ctr images import` into containerd's `k8s.io` namespace (the one CRI
//! uses) as [`IMAGE`](super::IMAGE), and tagged as
//! [`SANDBOX_IMAGE`](super::SANDBOX_IMAGE) too, so the same image serves as
//! the pause image.

use std::{
    fs,
    os::unix::fs::{symlink, PermissionsExt},
    path::Path,
    process::Command,
    time::Duration,
};

use k8s_cri::v1::{ImageSpec, ImageStatusRequest};

use super::super::wait_for;
use super::{daemon::Containerd, IMAGE, SANDBOX_IMAGE};

/// The statically linked busybox of Debian's `busybox-static`.
const BUSYBOX: &str = "/bin/busybox";
/// The umoci tag, which `ctr import --base-name` appends to the name.
const TAG: &str = "1";
/// The image's PATH.
const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `program` with `args`; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {program} (cargo xtask setup installs it): {e}"));
    assert!(
        output.status.success(),
        "`{program} {}` failed ({}):\n{}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Fills `rootfs` (an unpacked, empty image) with busybox and its applets.
fn populate(rootfs: &Path) {
    let bin = rootfs.join("bin");
    for dir in ["bin", "etc", "tmp", "run", "var", "proc", "sys", "dev", "root"] {
        fs::create_dir_all(rootfs.join(dir)).unwrap_or_else(|e| panic!("creating {dir} in the rootfs: {e}"));
    }
    fs::set_permissions(rootfs.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod /tmp");
    symlink("../run", rootfs.join("var/run")).expect("symlinking /var/run -> ../run");
    fs::copy(BUSYBOX, bin.join("busybox")).unwrap_or_else(|e| panic!("copying {BUSYBOX} (busybox-static): {e}"));
    let list = Command::new(BUSYBOX).arg("--list").output().expect("running busybox --list");
    let applets = String::from_utf8_lossy(&list.stdout).into_owned();
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/')) {
        symlink("busybox", bin.join(applet)).unwrap_or_else(|e| panic!("symlinking /bin/{applet}: {e}"));
    }
    assert!(bin.join("sh").exists() && bin.join("cat").exists(), "busybox --list named no sh or cat: {applets}");
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        .expect("writing /etc/passwd");
    fs::write(rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").expect("writing /etc/group");
}

/// Builds the image under `<containerd dir>/image`, imports it, and waits
/// until CRI lists it under both names.
pub(super) fn build_and_import(containerd: &Containerd) {
    let work = containerd.dir().join("image");
    let layout = work.join("oci");
    let bundle = work.join("bundle");
    let archive = work.join("busybox.tar");
    fs::create_dir_all(&work).expect("creating the image directory");
    let image = format!("{}:{TAG}", layout.display());
    let (image, bundle_arg) = (image.as_str(), bundle.to_str().expect("a UTF-8 path"));

    run("umoci", &["init", "--layout", layout.to_str().expect("a UTF-8 path")]);
    run("umoci", &["new", "--image", image]);
    run("umoci", &["unpack", "--image", image, bundle_arg]);
    populate(&bundle.join("rootfs"));
    run("umoci", &["repack", "--image", image, bundle_arg]);
    run(
        "umoci",
        &[
            "config",
            "--image",
            image,
            "--config.env",
            PATH,
            "--config.workingdir",
            "/",
            "--config.cmd",
            "sleep",
            "--config.cmd",
            "infinity",
        ],
    );
    run("tar", &["-C", layout.to_str().expect("a UTF-8 path"), "-cf", archive.to_str().expect("a UTF-8 path"), "."]);

    let socket = containerd.socket().to_str().expect("a UTF-8 path");
    let base = IMAGE.rsplit_once(':').map_or(IMAGE, |(base, _)| base);
    assert_eq!(format!("{base}:{TAG}"), IMAGE, "IMAGE must end in :{TAG}");
    let archive = archive.to_str().expect("a UTF-8 path");
    run("ctr", &["-a", socket, "-n", "k8s.io", "images", "import", "--base-name", base, archive]);
    run("ctr", &["-a", socket, "-n", "k8s.io", "images", "tag", IMAGE, SANDBOX_IMAGE]);

    // CRI learns of images through containerd's events: wait until it knows
    // both names, or RunPodSandbox would try to pull the sandbox image.
    wait_until_listed(containerd, &[IMAGE, SANDBOX_IMAGE]);
}

/// Imports an OCI archive holding image `name` (as `buildah push
/// oci-archive:FILE:NAME` writes it) and waits until CRI lists it.
pub fn import_archive(containerd: &Containerd, archive: &std::path::Path, name: &str) {
    let socket = containerd.socket().to_str().expect("a UTF-8 path");
    run("ctr", &["-a", socket, "-n", "k8s.io", "images", "import", archive.to_str().expect("a UTF-8 path")]);
    wait_until_listed(containerd, &[name]);
}

/// Waits until CRI's ImageStatus knows every name.
fn wait_until_listed(containerd: &Containerd, names: &[&str]) {
    for &name in names {
        let known = wait_for(Duration::from_secs(10), || {
            let mut images = containerd.image_client();
            let request = ImageStatusRequest {
                image: Some(ImageSpec { image: name.to_owned(), ..Default::default() }),
                verbose: false,
            };
            let answer = containerd.try_call(Duration::from_secs(5), images.image_status(request)).ok()?;
            answer.image.map(|_| ())
        });
        assert!(known.is_some(), "CRI does not list {name} after ctr import; containerd's log:\n{}", containerd.log());
    }
}
