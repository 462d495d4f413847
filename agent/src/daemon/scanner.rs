//! The token-file scanner: finds the token files of every mount namespace
//! on the node (`metadata/token_files`) every `--rescan-interval-seconds`,
//! sooner when an open matched a token no scan had found or the pod store
//! changed, and keeps the kernel's watch maps in step. Between scans it
//! follows the node's mount table: a custom projected token kubelet
//! mounts for a pod is registered on that volume's device the moment the
//! volume appears, before the pod's container can run
//! (`metadata/kubelet_volumes`).

use std::{
    fs,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{watch, Notify},
};
use tokio_util::sync::CancellationToken;

use super::DaemonError;
use crate::{
    kernel::watchlist::{self, FileMaps, Wanted},
    metadata::{
        kube::{self, PodStore},
        kubelet_volumes,
        token_files::{self, TokenFiles},
    },
};

/// Rescans the node for token files and keeps the kernel map in step.
pub struct Scanner {
    paths: Vec<PathBuf>,
    proc: PathBuf,
    maps: FileMaps,
    current: Arc<TokenFiles>,
    pods: Option<PodStore>,
}

impl Scanner {
    /// A scanner of `paths` in every mount namespace listed under `proc`.
    /// With `pods`, each pod's token mounts (projected volumes at their own
    /// mountPath, legacy Secret tokens) are resolved too.
    pub fn new(paths: Vec<PathBuf>, proc: PathBuf, maps: FileMaps, pods: Option<PodStore>) -> Self {
        Scanner { paths, proc, maps, current: Arc::default(), pods }
    }

    /// One scan: find the files and update the kernel's map. The caller
    /// publishes the result to the enricher, then calls [`Self::announce`].
    pub async fn scan_once(&mut self) -> Result<Arc<TokenFiles>, DaemonError> {
        // The names first, before the walk of every namespace: a pod just
        // put on the node may start while it runs.
        let paths = self.sync_names()?;
        let proc = self.proc.clone();
        let found = tokio::task::spawn_blocking(move || token_files::scan(&proc, &paths))
            .await
            .map_err(|error| DaemonError::Panic(format!("scanner: {error}")))?;
        let wanted = self.wanted(&found);
        let (added, removed) = watchlist::sync_files(&mut self.maps, &wanted)?;
        if added + removed > 0 {
            tracing::debug!(added, removed, watched = found.len(), "token files rescanned");
        }
        Ok(Arc::new(found))
    }

    /// What the kernel must watch: the files `found` by a scan, the token
    /// volumes among them, and the custom projected tokens kubelet has
    /// mounted for the pods the API put here, each on its own volume.
    fn wanted(&self, found: &TokenFiles) -> Wanted {
        let mut volumes: std::collections::HashMap<u32, String> =
            found.iter().filter_map(|(key, file)| Some((key.dev, file.volume_name.clone()?))).collect();
        if let Some(store) = &self.pods {
            let node_mounts = fs::read_to_string(self.proc.join("1/mountinfo")).unwrap_or_default();
            for (dev, name) in kubelet_volumes::custom_token_volumes(&node_mounts, &store.snapshot()) {
                volumes.entry(dev).or_insert(name);
            }
        }
        Wanted { files: found.keys().copied().collect(), volumes }
    }

    /// The node's mount table changed: the last scan's files, with the
    /// custom projected volumes mounted now. No walk of the namespaces.
    fn follow_mounts(&mut self) -> Result<(), DaemonError> {
        let wanted = self.wanted(&self.current);
        watchlist::sync_files(&mut self.maps, &wanted)?;
        Ok(())
    }

    /// The paths to resolve (the configured ones and every pod's token
    /// mounts), after making the kernel's token names the configured
    /// paths' file names; cheap, no walk of the node's processes. The
    /// names a pod spec declares (a custom projection's `path`) are not
    /// given to the kernel's layout match: it applies to every volume on
    /// the node, and no pod's author may choose what the agent matches
    /// outside that pod (a name such as `config.yaml` would make other
    /// pods' Secret files "tokens", and their readers killable by a
    /// block). Those tokens are watched once a scan has found them.
    fn sync_names(&mut self) -> Result<Vec<PathBuf>, DaemonError> {
        let names = self.paths.iter().filter_map(|path| Some(path.file_name()?.to_str()?.to_owned())).collect();
        watchlist::sync_names(&mut self.maps.names, &names)?;
        let mut paths = self.paths.clone();
        for pod in self.pods.iter().flat_map(PodStore::snapshot) {
            for mount in pod.containers.iter().flat_map(|c| &c.token_mounts) {
                if let Some(path) = mount.token_path().map(PathBuf::from).filter(|p| !paths.contains(p)) {
                    paths.push(path);
                }
            }
        }
        Ok(paths)
    }

    /// Logs each file `found` holds that the last scan did not, once the
    /// enricher has `found`: after the line, a read of the file is
    /// attributed to that namespace's pod. A file whose device and inode a
    /// gone pod's file had (a new tmpfs reuses both) is new too.
    pub fn announce(&mut self, found: &Arc<TokenFiles>) {
        for (key, file) in found.iter() {
            let before = self.current.get(key).map(|seen| (seen.mount_ns, seen.pid));
            if before != Some((file.mount_ns, file.pid)) {
                tracing::info!(
                    path = %file.path.display(), mount_ns = file.mount_ns, pid = file.pid,
                    device = format!("{}:{}", key.dev >> 20, key.dev & 0xf_ffff), inode = key.ino,
                    "watching token file"
                );
            }
        }
        self.current = Arc::clone(found);
    }

    /// Rescans every `interval`, and when `rescan` is notified (an open
    /// matched a token no scan had found) or the pod store changes, at most
    /// once per [`MIN_WOKEN_RESCAN_GAP`], until cancelled, publishing each
    /// result: a pod the API put on the node is looked for soon after
    /// kubelet starts it.
    pub async fn run(
        mut self,
        interval: Duration,
        snapshots: watch::Sender<Arc<TokenFiles>>,
        rescan: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Result<(), DaemonError> {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut pod_changes = self.pods.as_ref().map(PodStore::changes);
        let mut woken_not_before = Instant::now();
        let mut mounts = self.pods.as_ref().and_then(|_| mount_table(&self.proc));
        loop {
            let mounts_changed = async {
                match mounts.as_ref() {
                    Some(table) => table.ready(Interest::PRIORITY).await.map(|mut ready| ready.clear_ready()).is_ok(),
                    None => std::future::pending().await,
                }
            };
            // Reads of a file no scan can find (its namespace gone) must
            // not keep the scanner busy: an ask waits out the gap.
            let asked = async {
                tokio::time::sleep_until(woken_not_before.into()).await;
                rescan.notified().await;
            };
            let woken = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = ticker.tick() => false,
                () = asked => true,
                followed = mounts_changed => {
                    if !followed {
                        mounts = None;
                    }
                    self.follow_mounts()?;
                    continue;
                }
                () = kube::next_change(&mut pod_changes) => {
                    if Instant::now() < woken_not_before {
                        continue;
                    }
                    true
                }
            };
            let found = self.scan_once().await?;
            snapshots.send_replace(Arc::clone(&found));
            self.announce(&found);
            if woken {
                woken_not_before = Instant::now() + MIN_WOKEN_RESCAN_GAP;
                ticker.reset();
            }
        }
    }
}

/// The least time between two scans not due to the interval.
const MIN_WOKEN_RESCAN_GAP: Duration = Duration::from_millis(250);

/// The node's mount table (`<proc>/1/mountinfo`), which the kernel marks
/// ready for priority reading (`POLLPRI`) on every mount or unmount in the
/// node's mount namespace; `None`, said once, where it cannot be watched.
fn mount_table(proc: &std::path::Path) -> Option<AsyncFd<fs::File>> {
    let path = proc.join("1/mountinfo");
    let opened = fs::File::open(&path).and_then(|file| {
        // SAFETY: a `File` owns its descriptor and keeps it, open and the
        // same, until the `AsyncFd` that owns the `File` drops it.
        unsafe { AsyncFd::register_with_interest(file, Interest::PRIORITY) }.map_err(|error| error.into_parts().1)
    });
    match opened {
        Ok(table) => Some(table),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot follow the node's mount table: custom projected tokens are watched from the next scan");
            None
        }
    }
}
