//! The exporter's acknowledged position: the sequence of the last alert the
//! collector accepted, kept in `<spool dir>/otlp.position` so a restarted
//! agent resumes right after it instead of sending the whole log again.
//!
//! Written atomically (a temporary file, fsynced, renamed over the old one,
//! then the directory fsynced): after a crash the file holds either the old
//! or the new position, never a torn one. An old position only means some
//! alerts are sent twice, which at-least-once delivery allows.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
};

/// The file's name inside the spool directory.
pub const POSITION_FILE: &str = "otlp.position";

/// Why the position could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PositionError {
    /// The filesystem refused.
    #[error("OTLP position: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// To which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file holds something other than a sequence number.
    #[error("OTLP position: {} holds `{text}`, not a sequence number", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What it holds (trimmed, at most 64 characters).
        text: String,
    },
}

/// The position file of one spool directory.
#[derive(Clone, Debug)]
pub struct Position {
    path: PathBuf,
}

impl Position {
    /// The position kept in `spool_dir` (the file need not exist yet).
    pub fn in_dir(spool_dir: &Path) -> Position {
        Position { path: spool_dir.join(POSITION_FILE) }
    }

    /// Where it is kept.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last acknowledged sequence; `None` when nothing was ever
    /// acknowledged (no file), so the exporter starts from the oldest alert.
    pub fn load(&self) -> Result<Option<u64>, PositionError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(self.io("reading", source)),
        };
        text.trim().parse().map(Some).map_err(|_| PositionError::Corrupt {
            path: self.path.clone(),
            text: text.trim().chars().take(64).collect(),
        })
    }

    /// Replaces the position with `sequence`, durably: when this returns, a
    /// crash or power loss leaves this value (or a later one) in the file.
    pub fn store(&self, sequence: u64) -> Result<(), PositionError> {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        let temp = self.path.with_extension("position.tmp");
        let write = || -> std::io::Result<()> {
            let mut file = File::create(&temp)?;
            file.write_all(format!("{sequence}\n").as_bytes())?;
            file.sync_all()
        };
        write().map_err(|source| PositionError::Io { op: "writing", path: temp.clone(), source })?;
        fs::rename(&temp, &self.path).map_err(|source| self.io("replacing", source))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(|source| PositionError::Io {
            op: "syncing",
            path: dir.to_owned(),
            source,
        })
    }

    fn io(&self, op: &'static str, source: std::io::Error) -> PositionError {
        PositionError::Io { op, path: self.path.clone(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_none_and_a_stored_position_reads_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let position = Position::in_dir(dir.path());
        assert_eq!(position.load().expect("absent"), None);
        position.store(41).expect("store");
        assert_eq!(position.load().expect("load"), Some(41));
        assert_eq!(fs::read_to_string(position.path()).expect("read"), "41\n");
        // A fresh handle (a restarted agent) sees the same.
        assert_eq!(Position::in_dir(dir.path()).load().expect("load"), Some(41));
    }

    #[test]
    fn a_store_replaces_the_file_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let position = Position::in_dir(dir.path());
        position.store(u64::MAX).expect("store");
        let before = fs::metadata(position.path()).expect("meta");
        position.store(7).expect("store");
        assert_eq!(position.load().expect("load"), Some(7), "shorter value, no leftover digits");
        let after = fs::metadata(position.path()).expect("meta");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(before.ino(), after.ino(), "renamed over, not rewritten in place");
        let names: Vec<String> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, [POSITION_FILE]);
    }

    #[test]
    fn garbage_is_reported_with_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let position = Position::in_dir(dir.path());
        fs::write(position.path(), "twelve\n").expect("write");
        let error = position.load().expect_err("not a number");
        assert!(matches!(&error, PositionError::Corrupt { text, .. } if text == "twelve"), "{error}");
        assert!(error.to_string().contains(POSITION_FILE), "{error}");
    }
}
