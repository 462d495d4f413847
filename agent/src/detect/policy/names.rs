//! The agent's numbers for the policy's block entries: the kernel names the
//! entry that decided by number (the enforcer writes them into the maps),
//! and the judge turns the number back into the entry's id for the alert.

use std::sync::{Arc, PoisonError, RwLock};

/// The agent's numbers for block entries, by which the kernel names the
/// entry that decided. Numbers are never reused in a run, so an event
/// decided under an older policy still names its own entry.
#[derive(Clone, Debug, Default)]
pub struct BlockNames {
    ids: Arc<RwLock<Vec<String>>>,
}

impl BlockNames {
    /// The number of entry `id` (from 1), given one on first sight.
    pub fn number(&self, id: &str) -> u32 {
        let mut ids = self.ids.write().unwrap_or_else(PoisonError::into_inner);
        let at = ids.iter().position(|known| known == id).unwrap_or_else(|| {
            ids.push(id.to_owned());
            ids.len() - 1
        });
        u32::try_from(at + 1).unwrap_or(u32::MAX)
    }

    /// The id of entry `number`.
    pub fn id(&self, number: u32) -> Option<String> {
        let ids = self.ids.read().unwrap_or_else(PoisonError::into_inner);
        ids.get(usize::try_from(number).ok()?.checked_sub(1)?).cloned()
    }
}
