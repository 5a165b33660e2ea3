//! Applying a batch of commands as one atomic RocksDB write.
//!
//! Raft hands the state machine committed entries in batches; applying each
//! batch into one write batch keeps the metadata write rate independent of
//! the number of commands (group commit comes from Raft's own batching).

use rocksdb::WriteBatch;

use super::apply::{Applied, ApplyError};
use super::command::Command;
use super::keys;
use super::overlay::Overlay;
use super::sessions::apply_logged;
use super::store::{MetaStore, StoreError};

/// Applies `cmds` in order into one write batch, adds `extra` (the applied
/// log position, say) and writes it. A command that is refused changes
/// nothing (a sequenced one only records its refusal) and fails alone; a failed write commits none of the batch.
///
/// `sync` says whether the write waits for the disk. The state machine
/// does not: its input, the Raft log, is synced before anything is
/// acknowledged, and a lost apply is redone from the log at restart.
pub fn apply_batch(
    store: &MetaStore,
    cmds: &[&Command],
    extra: Vec<(Vec<u8>, Vec<u8>)>,
    sync: bool,
) -> Result<Vec<Result<Applied, ApplyError>>, StoreError> {
    let mut results = Vec::with_capacity(cmds.len());
    let mut overlay = Overlay::new(store);
    for cmd in cmds {
        let (result, writes) = apply_logged(&overlay, cmd);
        if let Some(writes) = writes {
            overlay.absorb(writes);
        }
        results.push(result);
    }
    if overlay.is_empty() && extra.is_empty() {
        return Ok(results);
    }
    let mut batch = WriteBatch::default();
    let mut breaks_changed = false;
    for (key, value) in overlay.into_pending() {
        breaks_changed |= key.first() == Some(&keys::LEASE_BREAK_PREFIX);
        match value {
            Some(v) => batch.put(key, v),
            None => batch.delete(key),
        }
    }
    for (key, value) in extra {
        batch.put(key, value);
    }
    store.write_batch(batch, sync)?;
    if breaks_changed {
        store.lease_records_changed();
    }
    Ok(results)
}
