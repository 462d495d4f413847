//! The spool's small state file: a durable upper bound on the sequences handed out, so a sequence is never given to
//! two alerts.
//!
//! Records are written with `write(2)` and made durable only at a roll, `sync` or `close`. An agent crash loses
//! nothing (the page cache survives it), but a power loss can take the last records with it, after a subscriber
//! already saw them; counting on from the surviving segments would then give those sequences to new alerts, and the
//! subscriber, resuming after the highest it saw, would skip them. So before handing out sequence `n` the writer
//! makes sure the file says `reserved > n` (written and synced once every [`RESERVE`] alerts), together with the
//! kernel's boot id and whether the spool was closed cleanly. At open:
//!
//! - closed cleanly: `reserved` is the exact next sequence (also what keeps the count if the segments are gone);
//! - not closed, same kernel boot: the agent crashed but the page cache did not; the segments are exact;
//! - not closed, the node rebooted (or its boot id is unknown): sequences up to `reserved` may have been seen and
//!   lost, so counting resumes at `reserved` and readers are told the gap is lost.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::Path;

use super::SpoolError;

/// How many sequences one write of the state file reserves: one small synced write per this many alerts, and the
/// largest gap a power loss can leave.
pub(super) const RESERVE: u64 = 4096;
const FILE: &str = "state";
const TEMP: &str = "state.tmp";
const HEADER: &str = "tokenwatch-spool-state v1";

/// What the state file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct State {
    /// `/proc/sys/kernel/random/boot_id` when it was written ("" when unknown).
    pub kernel_boot: String,
    /// No sequence at or above this was handed out; the exact next sequence when `clean`.
    pub reserved: u64,
    /// Written by `close`: nothing was appended after it.
    pub clean: bool,
}

/// The running kernel's boot id, which changes at every boot of the node; "" when it cannot be read.
pub(super) fn kernel_boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// The state in `dir`; `None` when there is none or it cannot be understood (logged: the segments alone then decide).
pub(super) fn load(dir: &Path) -> Result<Option<State>, SpoolError> {
    let path = dir.join(FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == ErrorKind::InvalidData => String::new(),
        Err(e) => return Err(SpoolError::io("reading", &path, e)),
    };
    let state = parse(&text);
    if state.is_none() {
        tracing::warn!(path = %path.display(), "spool state file not understood; sequences continue from the segments");
    }
    Ok(state)
}

fn parse(text: &str) -> Option<State> {
    let mut lines = text.lines();
    if lines.next()? != HEADER {
        return None;
    }
    let (mut kernel_boot, mut reserved, mut clean) = (None, None, None);
    for line in lines {
        match line.split_once('=')? {
            ("kernel_boot", v) => kernel_boot = Some(v.to_owned()),
            ("reserved", v) => reserved = Some(v.parse().ok()?),
            ("clean", v) => clean = Some(v.parse().ok()?),
            _ => {}
        }
    }
    Some(State { kernel_boot: kernel_boot?, reserved: reserved?, clean: clean? })
}

/// Replaces the state durably: a synced temporary renamed over the old file, then the directory synced, so a crash
/// leaves the old state or the new one.
pub(super) fn store(dir: &Path, state: &State) -> Result<(), SpoolError> {
    let temp = dir.join(TEMP);
    let text =
        format!("{HEADER}\nkernel_boot={}\nreserved={}\nclean={}\n", state.kernel_boot, state.reserved, state.clean);
    let write = || -> std::io::Result<()> {
        let mut file = File::create(&temp)?;
        file.write_all(text.as_bytes())?;
        file.sync_data()
    };
    write().map_err(|e| SpoolError::io("writing", &temp, e))?;
    let path = dir.join(FILE);
    fs::rename(&temp, &path).map_err(|e| SpoolError::io("renaming into place", &path, e))?;
    sync_dir(dir)
}

/// Makes the directory's entries (new, renamed, removed files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SpoolError::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = State { kernel_boot: "abc".into(), reserved: 42, clean: true };
        store(dir.path(), &state).expect("store");
        assert_eq!(load(dir.path()).expect("load"), Some(state));
        fs::write(dir.path().join(FILE), "nonsense").expect("write");
        assert_eq!(load(dir.path()).expect("load"), None);
        assert_eq!(parse(&format!("{HEADER}\nkernel_boot=x\nreserved=z\nclean=false\n")), None);
    }
}
