//! Making the kernel hold a plan, changing only what differs, and never
//! recording as applied what the kernel refused: a map entry the kernel
//! would not take (a full map) is left out of what is applied, so the next
//! round writes it again; a fence that would not attach is tried again
//! with a growing pause ([`FenceRetries`]). Each failure is said once an
//! episode, not every round.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::PoisonError,
    time::{Duration, Instant},
};

use tokenwatch_common::POD_UID_LEN;

use super::{plan::Plan, Enforcer};

/// The first pause before a fence that failed is tried again.
const FENCE_RETRY_FIRST: Duration = Duration::from_secs(2);
/// The longest pause between two tries.
const FENCE_RETRY_MAX: Duration = Duration::from_secs(60);

impl Enforcer {
    /// Makes the kernel hold `plan`, changing only what differs.
    pub(super) fn apply(&mut self, mut plan: Plan) {
        // The kernel's switch goes on before an entry that blocks reads is
        // written and off after the last is removed: no entry is skipped.
        let blocks_reads = plan.blocks_reads();
        if blocks_reads {
            self.set_read_blocks(true);
        }
        // New executables before the cgroup entries that list them, stale
        // ones after, so a slot being renumbered never finds its files gone.
        let binaries = write_changed(&mut plan.binaries, &self.applied.binaries, |key, block| {
            self.maps.binaries.insert(key, *block, 0)
        });
        if binaries.refused > 0 && !self.binaries_refused {
            tracing::error!(
                refused = binaries.refused,
                held = plan.binaries.len(),
                "the enforcement binaries map is full: some listed executables are not covered"
            );
        }
        self.binaries_refused = binaries.refused > 0;
        let entries = write_changed(&mut plan.entries, &self.applied.entries, |cgroup, entry| {
            self.maps.cgroups.insert(cgroup, entry, 0)
        });
        for cgroup in self.applied.entries.keys().filter(|c| !plan.entries.contains_key(c)) {
            let _ = self.maps.cgroups.remove(cgroup);
        }
        let pods = write_changed(&mut plan.pods, &self.applied.pods, |uid, entry| {
            let spellings = uid_spellings(uid);
            let written = spellings.iter().try_for_each(|spelling| self.maps.pods.insert(spelling, entry, 0));
            if written.is_err() {
                // Half a pod is not recorded as applied, so none of it may
                // stay in the kernel: a later removal would not see it.
                for spelling in &spellings {
                    let _ = self.maps.pods.remove(spelling);
                }
            }
            written
        });
        for uid in self.applied.pods.keys().filter(|u| !plan.pods.contains_key(*u)) {
            for spelling in uid_spellings(uid) {
                let _ = self.maps.pods.remove(&spelling);
            }
        }
        let refused = entries.refused + pods.refused;
        if refused > 0 && !self.entries_refused {
            let error = entries.first_error.or(pods.first_error).unwrap_or_default();
            tracing::error!(
                refused,
                %error,
                "enforcement map updates refused: those cgroups and pods are not covered; retried every round"
            );
        } else if refused == 0 && self.entries_refused {
            tracing::info!("enforcement map updates accepted again: every planned entry is held");
        }
        self.entries_refused = refused > 0;
        for (cgroup, pid) in &plan.inits {
            if self.applied.inits.get(cgroup) != Some(pid) {
                let _ = self.maps.inits.insert(cgroup, pid, 0);
            }
        }
        for cgroup in self.applied.inits.keys().filter(|c| !plan.inits.contains_key(c)) {
            let _ = self.maps.inits.remove(cgroup);
        }
        for key in self.applied.binaries.keys().filter(|k| !plan.binaries.contains_key(k)) {
            let _ = self.maps.binaries.remove(key);
        }
        if !blocks_reads {
            self.set_read_blocks(false);
        }
        self.attach_fences(&plan);
        for (pod, block) in plan.covered.difference(&self.applied.covered) {
            tracing::info!(%pod, %block, "block entry covers pod");
        }
        for (pod, block) in self.applied.covered.difference(&plan.covered) {
            tracing::info!(%pod, %block, "block entry no longer covers pod");
        }
        let metrics = crate::metrics::global();
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        metrics.enforced_cgroups.set(count(plan.entries.len()));
        metrics.enforcement_fences.set(count(self.fences.len()));
        metrics.enforcement_binaries.set(count(plan.binaries.len()));
        self.applied = plan;
    }

    /// Sets the kernel's read-block switch (`READ_BLOCKS_MAP`) when it
    /// differs; a refused write is said and tried again next round (off
    /// refused leaves opens walking for nothing, on refused would leave
    /// reads unblocked, so that one is an error).
    fn set_read_blocks(&mut self, on: bool) {
        if self.read_blocks == on {
            return;
        }
        match self.maps.read_blocks.set(0, u32::from(on), 0) {
            Ok(()) => self.read_blocks = on,
            Err(error) if on => {
                tracing::error!(%error, "the read-block switch could not be set: token reads are not blocked")
            }
            Err(error) => tracing::warn!(%error, "the read-block switch could not be cleared"),
        }
    }

    /// Drops the fences `plan` no longer asks for and attaches the new
    /// ones, and those that failed before once their pause is over.
    fn attach_fences(&mut self, plan: &Plan) {
        self.fences.retain(|dir, _| plan.fences.contains(dir));
        self.fence_retries.retain(|dir| plan.fences.contains(dir));
        let now = Instant::now();
        let due: Vec<PathBuf> = plan
            .fences
            .iter()
            .filter(|dir| !self.fences.contains_key(*dir) && self.fence_retries.is_due(dir, now))
            .cloned()
            .collect();
        for dir in due {
            let attached = std::fs::File::open(&dir).map_err(|e| e.to_string()).and_then(|file| {
                self.hooks.lock().unwrap_or_else(PoisonError::into_inner).attach_fence(&file).map_err(|e| e.to_string())
            });
            match attached {
                Ok(links) => {
                    match self.fence_retries.attached(&dir) {
                        Some(tries) => {
                            tracing::info!(cgroup = %dir.display(), tries, "connect fence attached after failing")
                        }
                        None => tracing::debug!(cgroup = %dir.display(), "connect fence attached"),
                    }
                    self.fences.insert(dir, links);
                }
                Err(error) => {
                    let (tries, pause) = self.fence_retries.failed(&dir, now);
                    if tries == 1 {
                        tracing::error!(cgroup = %dir.display(), %error, retry_in = ?pause, "connect fence not attached: connects from this pod are not refused");
                    } else {
                        tracing::warn!(cgroup = %dir.display(), %error, tries, retry_in = ?pause, "connect fence still not attached");
                    }
                }
            }
        }
    }
}

/// What [`write_changed`] could not write.
#[derive(Debug, Default)]
struct Refusals {
    refused: usize,
    first_error: Option<String>,
}

/// Writes each entry of `wanted` that `applied` does not hold as it is,
/// through `insert`. An entry the kernel refuses is taken out of `wanted`,
/// so it is not recorded as applied and the next round writes it again.
fn write_changed<K: Ord, V: PartialEq, E: std::fmt::Display>(
    wanted: &mut BTreeMap<K, V>,
    applied: &BTreeMap<K, V>,
    mut insert: impl FnMut(&K, &V) -> Result<(), E>,
) -> Refusals {
    let mut refusals = Refusals::default();
    wanted.retain(|key, value| {
        if applied.get(key) == Some(value) {
            return true;
        }
        match insert(key, value) {
            Ok(()) => true,
            Err(error) => {
                refusals.refused += 1;
                refusals.first_error.get_or_insert_with(|| error.to_string());
                false
            }
        }
    });
    refusals
}

/// Pod directories whose connect fence failed to attach: how many tries
/// failed and when the next is due. The pause doubles from
/// [`FENCE_RETRY_FIRST`] to [`FENCE_RETRY_MAX`].
#[derive(Debug, Default)]
pub(super) struct FenceRetries {
    failed: HashMap<PathBuf, (u32, Instant)>,
}

impl FenceRetries {
    /// Whether `dir` may be tried now: never failed, or its pause is over.
    fn is_due(&self, dir: &Path, now: Instant) -> bool {
        self.failed.get(dir).is_none_or(|(_, due)| now >= *due)
    }

    /// Records a failed try at `now`: how many tries failed, and the pause
    /// before the next.
    fn failed(&mut self, dir: &Path, now: Instant) -> (u32, Duration) {
        let tries = self.failed.get(dir).map_or(0, |(tries, _)| *tries) + 1;
        let pause = FENCE_RETRY_FIRST.saturating_mul(1 << (tries - 1).min(16)).min(FENCE_RETRY_MAX);
        self.failed.insert(dir.to_owned(), (tries, now + pause));
        (tries, pause)
    }

    /// Forgets `dir` once its fence is attached: the tries it took, if any
    /// failed.
    fn attached(&mut self, dir: &Path) -> Option<u32> {
        self.failed.remove(dir).map(|(tries, _)| tries + 1)
    }

    /// Keeps only the directories `keep` holds.
    fn retain(&mut self, mut keep: impl FnMut(&Path) -> bool) {
        self.failed.retain(|dir, _| keep(dir));
    }
}

/// A pod uid as its cgroup's name spells it: dashed (kubelet's cgroupfs
/// driver) and with underscores (its systemd driver). None for a uid of
/// another length, which no cgroup name carries.
fn uid_spellings(uid: &str) -> Vec<[u8; POD_UID_LEN]> {
    let Ok(dashed) = <[u8; POD_UID_LEN]>::try_from(uid.as_bytes()) else { return Vec::new() };
    let underscored = dashed.map(|byte| if byte == b'-' { b'_' } else { byte });
    vec![dashed, underscored]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_is_spelt_as_both_kubelet_cgroup_drivers_spell_it() {
        let spellings = uid_spellings("3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b");
        assert_eq!(spellings[0], *b"3f0e1c2a-9b7d-4e61-8a2f-0c5d6e7f8a9b");
        assert_eq!(spellings[1], *b"3f0e1c2a_9b7d_4e61_8a2f_0c5d6e7f8a9b");
        assert!(uid_spellings("not-a-uid").is_empty());
    }

    #[test]
    fn a_refused_entry_is_not_recorded_as_applied_and_is_written_again() {
        let mut kernel: BTreeMap<u64, u32> = BTreeMap::new();
        let mut insert = |key: &u64, value: &u32| {
            if kernel.len() >= 2 && !kernel.contains_key(key) {
                return Err("map full");
            }
            kernel.insert(*key, *value);
            Ok(())
        };
        let plan: BTreeMap<u64, u32> = [(1, 10), (2, 20), (3, 30)].into();
        let mut applied = plan.clone();
        let refusals = write_changed(&mut applied, &BTreeMap::new(), &mut insert);
        assert_eq!((refusals.refused, refusals.first_error.as_deref()), (1, Some("map full")));
        assert_eq!(applied, [(1, 10), (2, 20)].into(), "what the kernel holds, not what was planned");
        // Room again: the next round writes only what is missing.
        let mut insert = |key: &u64, value: &u32| {
            assert_eq!(*key, 3, "only the refused entry is written again");
            kernel.insert(*key, *value);
            Ok::<(), &str>(())
        };
        let mut next = plan.clone();
        assert_eq!(write_changed(&mut next, &applied, &mut insert).refused, 0);
        assert_eq!(next, plan);
        assert_eq!(kernel, plan);
    }

    #[test]
    fn a_fence_that_failed_is_tried_again_after_a_growing_pause() {
        let dir = Path::new("/sys/fs/cgroup/kubepods/pod1");
        let mut retries = FenceRetries::default();
        let start = Instant::now();
        assert!(retries.is_due(dir, start), "never failed: due at once");
        assert_eq!(retries.failed(dir, start), (1, FENCE_RETRY_FIRST));
        assert!(!retries.is_due(dir, start + Duration::from_secs(1)));
        assert!(retries.is_due(dir, start + FENCE_RETRY_FIRST));
        let (tries, pause) = retries.failed(dir, start + FENCE_RETRY_FIRST);
        assert_eq!((tries, pause), (2, FENCE_RETRY_FIRST * 2));
        for _ in 0..10 {
            retries.failed(dir, start);
        }
        assert_eq!(retries.failed(dir, start).1, FENCE_RETRY_MAX, "the pause stops growing");
        assert_eq!(retries.attached(dir), Some(14), "attached on the 14th try");
        assert!(retries.is_due(dir, start), "forgotten once attached");
        retries.failed(dir, start);
        retries.retain(|d| d != dir);
        assert!(retries.is_due(dir, start), "a pod gone is forgotten");
    }
}
