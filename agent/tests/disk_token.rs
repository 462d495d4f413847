//! A token file on a disk: the kernel skips the device lookup for a disk's
//! files while no disk device is watched (`DISK_WATCHES`), so watching one
//! must turn that lookup on. Root only; run by `cargo xtask test`.

mod support;

use std::{fs, os::unix::fs::MetadataExt, path::Path, time::Duration};

use nix::sys::signal::Signal;
use support::agent::AgentProcess;
use tokenwatch_proto::v1::{alert::Evidence, Alert};

const TIMEOUT: Duration = Duration::from_secs(15);

/// The token reads among `alerts` of `path` by this process.
fn my_reads_of<'a>(alerts: &'a [Alert], path: &Path) -> Vec<&'a Alert> {
    let me = std::process::id();
    alerts
        .iter()
        .filter(|a| a.process.as_ref().is_some_and(|p| p.pid == me))
        .filter(|a| matches!(&a.evidence, Some(Evidence::TokenRead(r)) if Path::new(&r.requested_path) == path))
        .collect()
}

#[test]
#[ignore = "needs root: loads eBPF; run by cargo xtask test"]
fn a_token_on_a_disk_is_watched_and_its_neighbours_are_not() {
    let _serial = support::serialise();
    // The build directory is on the machine's disk, not a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let token = dir.path().join("token");
    let neighbour = dir.path().join("neighbour");
    fs::write(&token, "not-a-real-token").expect("write the token");
    fs::write(&neighbour, "nothing").expect("write the neighbour");
    let major = libc::major(fs::metadata(&token).expect("stat").dev());
    assert_ne!(major, 0, "{} must be on a device with a major number (a disk) for this test", dir.path().display());

    let agent = AgentProcess::start(&[
        "--standalone".into(),
        "--dedup-window-seconds".into(),
        "0".into(),
        "--token-path".into(),
        token.display().to_string(),
    ]);
    assert!(agent.wait_for_log(&["watching token file"], TIMEOUT), "{}", agent.stderr());
    fs::read(&neighbour).expect("read the neighbour");
    fs::read(&token).expect("read the token");
    let arrived = agent.wait_for_alerts(TIMEOUT, |alerts| !my_reads_of(alerts, &token).is_empty());
    let stopped = agent.stop(Signal::SIGTERM);
    assert!(arrived, "the read of a token on a disk was missed:\n{}", stopped.stderr);
    assert_eq!(my_reads_of(&stopped.alerts, &token).len(), 1, "one read, one alert");
    assert!(my_reads_of(&stopped.alerts, &neighbour).is_empty(), "the token's neighbour is not watched");
}
