//! Other ways to get a token's fd without the `open*` call a rule expects:
//! an `O_PATH` fd reopened through `/proc/self/fd/N`, an fd copied out of
//! another process with `pidfd_getfd(2)`, and `open_by_handle_at(2)` from
//! the node (it needs `CAP_DAC_READ_SEARCH`, which a pod's container lacks).

use std::{
    ffi::CString,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    time::Duration,
};

use nix::sys::signal::Signal;
use tokenwatch_proto::v1::{alert::Evidence, Alert, TokenRead};

use super::{
    scene::{self, reads_in, Scene},
    support::{
        self,
        cri::{PodSpec, SA_MOUNT},
    },
    ALERT_TIMEOUT,
};

fn read_of(alert: &Alert) -> &TokenRead {
    match &alert.evidence {
        Some(Evidence::TokenRead(read)) => read,
        _ => panic!("a token read: {alert:?}"),
    }
}

/// `open_by_handle_at(2)` of `path` from this (host) process: a handle from
/// `name_to_handle_at(2)`, then an open with no path at all.
fn open_by_handle(path: &std::path::Path) -> std::fs::File {
    const MAX_HANDLE_SZ: usize = 128;
    // struct file_handle { u32 handle_bytes; i32 handle_type; u8 f_handle[]; }
    let mut handle = [0u32; 2 + MAX_HANDLE_SZ / 4];
    handle[0] = MAX_HANDLE_SZ as u32;
    let mut mount_id = 0i32;
    let c_path = CString::new(path.as_os_str().as_bytes()).expect("a C path");
    // SAFETY: valid path, a buffer of MAX_HANDLE_SZ bytes after the header.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c_path.as_ptr(),
            handle.as_mut_ptr(),
            &raw mut mount_id,
            0,
        )
    };
    assert_eq!(rc, 0, "name_to_handle_at: {}", std::io::Error::last_os_error());
    let mount = std::fs::File::open(path.parent().expect("a directory")).expect("open the volume's directory");
    // SAFETY: a valid mount fd and the handle filled above.
    let fd =
        unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount.as_raw_fd(), handle.as_mut_ptr(), libc::O_RDONLY) };
    assert!(fd >= 0, "open_by_handle_at: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh descriptor we own.
    unsafe { std::os::fd::FromRawFd::from_raw_fd(fd as i32) }
}

#[test]
#[ignore = "needs root: runs containerd pods and loads eBPF; run by cargo xtask test"]
fn opath_reopen_pidfd_getfd_and_open_by_handle_at_are_caught() {
    let _serial = support::serialise();
    let scene = Scene::start();
    let pod = scene.run_pod(&PodSpec::new("fdthief-5d8f7c9b4-q1w2e"));
    let agent = scene.agent(&[&pod]);
    let token = format!("{SA_MOUNT}/token");
    let reopener = scene.act(&pod, &["opath-reopen", &token]);
    let thief = scene.act(&pod, &["steal-fd", &token]);
    let mut file = open_by_handle(&pod.volume().real_token_path());
    std::io::Read::read_to_end(&mut file, &mut Vec::new()).expect("read the token by handle");

    // This test's own read from the node (another agent on the machine,
    // scanning mount namespaces, is a node process too).
    let harvests = |alerts: &[Alert]| -> Vec<Alert> {
        alerts
            .iter()
            .filter(|a| a.rule == "node-token-harvest")
            .filter(|a| a.process.as_ref().is_some_and(|p| p.pid == std::process::id()))
            .cloned()
            .collect()
    };
    let arrived = agent
        .wait_for_alerts(ALERT_TIMEOUT, |alerts| reads_in(alerts, &pod).len() >= 4 && !harvests(alerts).is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "alerts missing:\n{}\nlog:\n{}", scene::describe(&stopped.alerts), stopped.stderr);
    let reads = reads_in(&stopped.alerts, &pod);
    let of = |ns_pid: u32| -> Vec<&TokenRead> {
        reads.iter().filter(|a| a.process.as_ref().is_some_and(|p| p.ns_pid == ns_pid)).map(|a| read_of(a)).collect()
    };
    // The O_PATH open and the reopen through /proc/self/fd are both opens.
    let reopened = of(reopener);
    assert_eq!(reopened.len(), 2, "{}", scene::describe(&stopped.alerts));
    assert!(reopened[0].flags.contains("O_PATH"), "{:?}", reopened[0]);
    assert!(reopened[1].requested_path.starts_with("/proc/self/fd/"), "{:?}", reopened[1]);
    assert!(reopened[1].resolved_path.ends_with("/token"), "{:?}", reopened[1]);
    // The thief's child opened it; the thief itself only copied the fd.
    let stolen = of(thief);
    assert_eq!(stolen.len(), 1, "{}", scene::describe(&stopped.alerts));
    assert_eq!(stolen[0].syscall, "pidfd_getfd");
    assert!(stolen[0].resolved_path.ends_with("/token"), "{:?}", stolen[0]);
    assert_eq!(stolen[0].owner_pod, pod.spec().name);
    let child = reads
        .iter()
        .filter(|a| a.process.as_ref().is_some_and(|p| p.parents.first().is_some_and(|pp| pp.ns_pid == thief)))
        .count();
    assert_eq!(child, 1, "the child's own open: {}", scene::describe(&stopped.alerts));

    let harvest = harvests(&stopped.alerts);
    assert_eq!(harvest.len(), 1, "{}", scene::describe(&stopped.alerts));
    let read = read_of(&harvest[0]);
    assert_eq!((read.syscall.as_str(), read.requested_path.as_str()), ("open_by_handle_at", ""));
    assert_eq!(read.owner_pod, pod.spec().name);
}
