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

use super::{
    container_fs,
    kube::{self, PodInfo, PodStore},
    kubelet_volumes,
    token_files::{self, TokenFiles},
};
use crate::kernel::watchlist::{self, FileMaps, Wanted, WatchlistError};

/// Why the scanner stopped: the kernel's map refused an update, or a scan
/// (run on the blocking pool) panicked.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The watch map could not be updated.
    #[error(transparent)]
    Watchlist(#[from] WatchlistError),
    /// A scan panicked.
    #[error("scanner: {0}")]
    Panic(String),
}

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
    pub async fn scan_once(&mut self) -> Result<Arc<TokenFiles>, ScanError> {
        // The names first, before the walk of every namespace: a pod just
        // put on the node may start while it runs.
        self.sync_names()?;
        let node = self.node_view();
        let declared = node
            .as_ref()
            .map_or_else(Vec::new, |(mounts, pods)| kubelet_volumes::declared_token_paths(mounts, pods, &self.paths));
        let (proc, paths) = (self.proc.clone(), self.paths.clone());
        let found = tokio::task::spawn_blocking(move || token_files::scan(&proc, &paths, &declared))
            .await
            .map_err(|error| ScanError::Panic(error.to_string()))?;
        let wanted = Self::wanted(&found, node.as_ref());
        let (added, removed) = watchlist::sync_files(&mut self.maps, &wanted)?;
        if added + removed > 0 {
            tracing::debug!(added, removed, watched = found.len(), "token files rescanned");
        }
        Ok(Arc::new(found))
    }

    /// The node's mount table and the pods the API put here, read once
    /// per scan or mount change; `None` standalone.
    fn node_view(&self) -> Option<(String, Vec<Arc<PodInfo>>)> {
        let store = self.pods.as_ref()?;
        Some((container_fs::mountinfo_of(&self.proc, 1), store.snapshot()))
    }

    /// What the kernel must watch: the files `found` by a scan, the token
    /// volumes among them, and the custom projected tokens kubelet has
    /// mounted for the pods the API put here (`node`), each on its own
    /// volume.
    fn wanted(found: &TokenFiles, node: Option<&(String, Vec<Arc<PodInfo>>)>) -> Wanted {
        let mut volumes: std::collections::HashMap<u32, String> =
            found.iter().filter_map(|(key, file)| Some((key.dev, file.volume_name.clone()?))).collect();
        if let Some((mounts, pods)) = node {
            for (dev, name) in kubelet_volumes::custom_token_volumes(mounts, pods) {
                volumes.entry(dev).or_insert(name);
            }
        }
        Wanted { files: found.keys().copied().collect(), volumes }
    }

    /// The node's mount table changed: the last scan's files, with the
    /// custom projected volumes mounted now. No walk of the namespaces.
    fn follow_mounts(&mut self) -> Result<(), ScanError> {
        let wanted = Self::wanted(&self.current, self.node_view().as_ref());
        watchlist::sync_files(&mut self.maps, &wanted)?;
        Ok(())
    }

    /// Makes the kernel's token names the configured paths' file names;
    /// cheap, no walk of the node's processes. The names a pod spec
    /// declares (a custom projection's `path`) are not given to the
    /// kernel's layout match: it applies to every volume on the node, and
    /// no pod's author may choose what the agent matches outside that pod
    /// (a name such as `config.yaml` would make other pods' Secret files
    /// "tokens", and their readers killable by a block). Those tokens are
    /// watched on their own volume ([`Self::wanted`]) and found by a scan.
    fn sync_names(&mut self) -> Result<(), ScanError> {
        let names = self.paths.iter().filter_map(|path| Some(path.file_name()?.to_str()?.to_owned())).collect();
        watchlist::sync_names(&mut self.maps.names, &names)?;
        Ok(())
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
                    device = container_fs::kernel_dev_display(key.dev), inode = key.ino,
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
    ) -> Result<(), ScanError> {
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
