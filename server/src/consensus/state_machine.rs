//! The Raft state machine: committed commands applied by `apply_batch`,
//! with the applied log position and membership written in the same batch.

use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, ErrorSubject, ErrorVerb, RaftSnapshotBuilder, Snapshot};
use rocksdb::WriteBatch;
use tokio::io::AsyncSeekExt;

use super::lease::AppliedMark;
use super::snapshot::{self, SnapshotDir, SnapshotError, SnapshotMeta};
use super::{Entry, LogId, Outcomes, StorageError, StoredMembership, TypeConfig, io_error};
use crate::meta::apply::ApplyError;
use crate::meta::store::{MetaStore, StoreError};
use crate::meta::{Command, apply_batch, keys};

/// Errors inside the state machine, before openraft wraps them.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("bad applied-state record: {0}")]
    Decode(#[from] postcard::Error),
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the blocking task failed: {0}")]
    Join(String),
}

type Applied = (Option<LogId>, StoredMembership);

/// Most bytes of records written per batch while loading a snapshot.
const LOAD_BATCH_BYTES: usize = 4 << 20;

pub struct StateMachine {
    store: Arc<MetaStore>,
    snapshots: SnapshotDir,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// `last_applied` for the read lease (see `lease`).
    mark: Arc<AppliedMark>,
}

impl StateMachine {
    /// What this state machine has applied, kept current as it applies.
    pub fn applied_mark(&self) -> Arc<AppliedMark> {
        Arc::clone(&self.mark)
    }

    /// Opens the state machine over `store`, finishing a snapshot load that
    /// a crash interrupted.
    pub fn open(store: Arc<MetaStore>, snapshots: SnapshotDir) -> Result<Self, MachineError> {
        if store.db().get(keys::SNAPSHOT_LOADING)?.is_some() {
            tracing::warn!("an interrupted snapshot load is redone");
            load(&store, &snapshots.current())?;
        }
        let (last_applied, membership) = read_applied(&store)?;
        Ok(Self {
            store,
            snapshots,
            last_applied,
            membership,
            mark: Arc::new(AppliedMark::new(last_applied)),
        })
    }
}

fn read_applied(store: &MetaStore) -> Result<Applied, MachineError> {
    match store.db().get(keys::RAFT_APPLIED)? {
        Some(bytes) => Ok(postcard::from_bytes(&bytes)?),
        None => Ok((None, StoredMembership::default())),
    }
}

/// Replaces the whole state machine with the verified snapshot at `path`.
fn load(store: &MetaStore, path: &std::path::Path) -> Result<SnapshotMeta, MachineError> {
    let meta = snapshot::verify(path)?;
    let mut batch = WriteBatch::default();
    // In order within the batch: clear everything, then set the marker.
    batch.delete_range(&[0u8][..], &[0xffu8; 16][..]);
    batch.put(keys::SNAPSHOT_LOADING, b"1");
    store.write_batch(batch, true)?;
    let mut batch = WriteBatch::default();
    let mut pending = 0usize;
    snapshot::for_each_record(path, &mut |k, v| {
        pending += k.len() + v.len();
        batch.put(k, v);
        if pending >= LOAD_BATCH_BYTES {
            store
                .write_batch(std::mem::take(&mut batch), false)
                .map_err(|e| SnapshotError::Io(std::io::Error::other(e.to_string())))?;
            pending = 0;
        }
        Ok(())
    })?;
    let applied: Applied = (meta.last_log_id, meta.last_membership.clone());
    batch.put(keys::RAFT_APPLIED, postcard::to_stdvec(&applied)?);
    batch.delete(keys::SNAPSHOT_LOADING);
    store.write_batch(batch, true)?;
    Ok(meta)
}

fn sm_error(verb: ErrorVerb, e: MachineError) -> StorageError {
    io_error(ErrorSubject::StateMachine, verb, e)
}

fn snap_error(verb: ErrorVerb, e: MachineError) -> StorageError {
    io_error(ErrorSubject::Snapshot(None), verb, e)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, MachineError> + Send + 'static,
) -> Result<T, MachineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| MachineError::Join(e.to_string()))?
}

/// Applies one batch of committed entries; a store failure is fatal for
/// the state machine (continuing would let this node diverge). A
/// [`Command::Batch`] entry's commands are applied one by one like the
/// entries around them.
fn apply_entries(
    store: &MetaStore,
    entries: &[Entry],
    mut applied: Applied,
) -> Result<(Vec<Outcomes>, Applied), MachineError> {
    let mut cmds: Vec<&Command> = Vec::new();
    // Commands each entry carries (none: blank and membership entries).
    let mut counts = Vec::with_capacity(entries.len());
    for e in entries {
        applied.0 = Some(e.log_id);
        match &e.payload {
            EntryPayload::Blank => counts.push(0),
            EntryPayload::Normal(Command::Batch(batch)) => {
                counts.push(batch.len());
                cmds.extend(batch);
            }
            EntryPayload::Normal(cmd) => {
                counts.push(1);
                cmds.push(cmd);
            }
            EntryPayload::Membership(m) => {
                applied.1 = StoredMembership::new(Some(e.log_id), m.clone());
                counts.push(0);
            }
        }
    }
    let extra = vec![(keys::RAFT_APPLIED.to_vec(), postcard::to_stdvec(&applied)?)];
    let mut results = apply_batch(store, &cmds, extra, false)?.into_iter();
    let mut outcomes = Vec::with_capacity(entries.len());
    for count in counts {
        if count == 0 {
            outcomes.push(vec![Ok(crate::meta::Applied::nothing())]);
            continue;
        }
        let mut each = Vec::with_capacity(count);
        for result in results.by_ref().take(count) {
            each.push(match result {
                Ok(a) => Ok(a),
                Err(ApplyError::Meta(e)) => Err(e),
                Err(ApplyError::Store(e)) => return Err(e.into()),
            });
        }
        outcomes.push(each);
    }
    Ok((outcomes, applied))
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> Result<Applied, StorageError> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcomes>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let store = Arc::clone(&self.store);
        let applied = (self.last_applied, self.membership.clone());
        let (outcomes, applied) = blocking(move || apply_entries(&store, &entries, applied))
            .await
            .map_err(|e| sm_error(ErrorVerb::Write, e))?;
        (self.last_applied, self.membership) = applied;
        self.mark.set(self.last_applied);
        Ok(outcomes)
    }

    async fn get_snapshot_builder(&mut self) -> Builder {
        Builder {
            store: Arc::clone(&self.store),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let path = self.snapshots.scratch("incoming");
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, e.into()))?;
        // Only the open handle is needed; unlinking now means an abandoned
        // transfer leaves nothing behind.
        tokio::fs::remove_file(&path)
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, e.into()))?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut data: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        let path = self.snapshots.scratch("received");
        let copied = async {
            data.seek(std::io::SeekFrom::Start(0)).await?;
            let mut out = tokio::fs::File::create(&path).await?;
            tokio::io::copy(&mut data, &mut out).await?;
            out.sync_all().await?;
            Ok::<_, std::io::Error>(())
        }
        .await;
        copied.map_err(|e| snap_error(ErrorVerb::Write, e.into()))?;
        let store = Arc::clone(&self.store);
        let snapshots = self.snapshots.clone();
        let loaded = blocking(move || {
            snapshot::verify(&path)?;
            snapshots.promote(&path)?;
            load(&store, &snapshots.current())
        })
        .await
        .map_err(|e| snap_error(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta, "installed a snapshot from the leader");
        self.last_applied = loaded.last_log_id;
        self.mark.set(self.last_applied);
        self.membership = loaded.last_membership;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let path = self.snapshots.current();
        if !path.exists() {
            return Ok(None);
        }
        let meta = snapshot::read_meta(&path).map_err(|e| snap_error(ErrorVerb::Read, e.into()))?;
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| snap_error(ErrorVerb::Read, e.into()))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(file),
        }))
    }
}

/// Builds a snapshot from a checkpoint of the store.
pub struct Builder {
    store: Arc<MetaStore>,
    snapshots: SnapshotDir,
}

impl Builder {
    fn build(&self) -> Result<(SnapshotMeta, std::fs::File), MachineError> {
        let checkpoint = self.snapshots.scratch("checkpoint");
        rocksdb::checkpoint::Checkpoint::new(self.store.db())?.create_checkpoint(&checkpoint)?;
        let out = self.snapshots.scratch("building");
        let written = snapshot::write_from_checkpoint(
            &checkpoint,
            |db| {
                // Nothing applied yet: an empty snapshot.
                let (last_log_id, last_membership): Applied = match db.get(keys::RAFT_APPLIED)? {
                    Some(bytes) => postcard::from_bytes(&bytes)?,
                    None => (None, StoredMembership::default()),
                };
                let id = match last_log_id {
                    Some(l) => format!(
                        "{}-{}-{:08x}",
                        l.leader_id.term,
                        l.index,
                        rand::random::<u32>()
                    ),
                    None => format!("empty-{:08x}", rand::random::<u32>()),
                };
                Ok(SnapshotMeta {
                    last_log_id,
                    last_membership,
                    snapshot_id: id,
                })
            },
            &out,
        );
        let removed = std::fs::remove_dir_all(&checkpoint);
        let meta = written?;
        removed?;
        // Opened before the rename, so a snapshot installed meanwhile
        // cannot swap the file under this one's metadata.
        let file = std::fs::File::open(&out)?;
        self.snapshots.promote(&out)?;
        Ok((meta, file))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let this = Builder {
            store: Arc::clone(&self.store),
            snapshots: self.snapshots.clone(),
        };
        let (meta, file) = blocking(move || this.build())
            .await
            .map_err(|e| snap_error(ErrorVerb::Write, e))?;
        tracing::info!(snapshot = %meta, "built a metadata snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(file)),
        })
    }
}
