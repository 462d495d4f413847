//! The token's own tmpfs, mounted for the benchmark and unmounted after.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// A tmpfs mounted at a directory; unmounted on drop.
pub struct TokenVolume {
    dir: PathBuf,
}

impl TokenVolume {
    /// Unmounts what an interrupted run left at `dir`, if anything.
    pub fn clear_stale(dir: &Path) {
        let _ = Command::new("umount").arg(dir).stderr(Stdio::null()).status();
    }

    /// Mounts a small tmpfs at `dir` (created if missing).
    pub fn mount(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tokenwatch-bench"])
            .arg(dir)
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!("mounting a tmpfs at {} failed ({status})", dir.display());
        }
        Ok(TokenVolume { dir: dir.to_owned() })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TokenVolume {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}
