//! The Raft log and vote in RocksDB column families of the metadata store.
//!
//! Appends, truncations, purges and votes are synced before they are
//! reported done: Raft counts a node's acknowledgement as a promise that
//! the entry survives a crash.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, RaftLogReader, Vote};
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Entry, LogId, NodeId, StorageError, TypeConfig, io_error};
use crate::meta::store::{CF_RAFT_LOG, CF_RAFT_STATE, MetaStore, StoreError};

const VOTE: &[u8] = b"vote";
const PURGED: &[u8] = b"last_purged";
const COMMITTED: &[u8] = b"committed";

/// Errors inside the log store, before openraft wraps them.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("bad Raft record: {0}")]
    Decode(#[from] postcard::Error),
    #[error("bad Raft log key ({0} bytes)")]
    Key(usize),
    #[error("the blocking task failed: {0}")]
    Join(String),
}

/// The Raft log store. Clones share the database; openraft serializes all
/// writes through one of them.
#[derive(Clone)]
pub struct LogStore {
    store: Arc<MetaStore>,
}

impl LogStore {
    pub fn new(store: Arc<MetaStore>) -> Self {
        Self { store }
    }

    fn get_state<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, LogError> {
        let cf = self.store.cf(CF_RAFT_STATE)?;
        match self.store.db().get_cf(cf, key)? {
            Some(bytes) => Ok(Some(postcard::from_bytes(&bytes)?)),
            None => Ok(None),
        }
    }

    fn put_state<T: Serialize>(&self, key: &[u8], value: &T, sync: bool) -> Result<(), LogError> {
        let cf = self.store.cf(CF_RAFT_STATE)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(cf, key, postcard::to_stdvec(value)?);
        Ok(self.store.write_batch(batch, sync)?)
    }

    fn last_entry(&self) -> Result<Option<LogId>, LogError> {
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let mut it = self.store.db().iterator_cf(cf, IteratorMode::End);
        match it.next().transpose()? {
            Some((_, v)) => Ok(Some(postcard::from_bytes::<Entry>(&v)?.log_id)),
            None => Ok(None),
        }
    }

    fn read_range(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, LogError> {
        let cf = self.store.cf(CF_RAFT_LOG)?;
        let mut ro = ReadOptions::default();
        if let Some(end) = end {
            ro.set_iterate_upper_bound(end.to_be_bytes());
        }
        let from = start.to_be_bytes();
        let it =
            self.store
                .db()
                .iterator_cf_opt(cf, ro, IteratorMode::From(&from, Direction::Forward));
        let mut out = Vec::new();
        for item in it {
            let (k, v) = item?;
            if k.len() != 8 {
                return Err(LogError::Key(k.len()));
            }
            out.push(postcard::from_bytes(&v)?);
        }
        Ok(out)
    }

    /// Runs blocking RocksDB work off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Self) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| LogError::Join(e.to_string()))?
    }
}

fn log_error(e: LogError) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn read_error(e: LogError) -> StorageError {
    io_error(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.checked_add(1),
        Bound::Excluded(&e) => Some(e),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = bounds(&range);
        self.blocking(move |s| s.read_range(start, end))
            .await
            .map_err(read_error)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged: Option<LogId> = self.get_state(PURGED).map_err(read_error)?;
        let last = self.last_entry().map_err(read_error)?.or(purged);
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |s| s.put_state(VOTE, &vote, true))
            .await
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_state(VOTE)
            .map_err(|e| io_error(ErrorSubject::Vote, ErrorVerb::Read, e))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // A hint for restarts (apply sooner); losing it is harmless.
        self.put_state(COMMITTED, &committed, false)
            .map_err(log_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self
            .get_state::<Option<LogId>>(COMMITTED)
            .map_err(read_error)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let written = self
            .blocking(move |s| {
                let cf = s.store.cf(CF_RAFT_LOG)?;
                let mut batch = WriteBatch::default();
                for e in &entries {
                    batch.put_cf(cf, e.log_id.index.to_be_bytes(), postcard::to_stdvec(e)?);
                }
                // Synced: the callback tells Raft these entries are durable.
                Ok(s.store.write_batch(batch, true)?)
            })
            .await;
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(log_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |s| {
            let cf = s.store.cf(CF_RAFT_LOG)?;
            let mut batch = WriteBatch::default();
            batch.delete_range_cf(cf, log_id.index.to_be_bytes(), u64::MAX.to_be_bytes());
            batch.delete_cf(cf, u64::MAX.to_be_bytes());
            Ok(s.store.write_batch(batch, true)?)
        })
        .await
        .map_err(log_error)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |s| {
            let log = s.store.cf(CF_RAFT_LOG)?;
            let state = s.store.cf(CF_RAFT_STATE)?;
            let mut batch = WriteBatch::default();
            batch.put_cf(state, PURGED, postcard::to_stdvec(&log_id)?);
            let end = log_id.index.saturating_add(1);
            batch.delete_range_cf(log, 0u64.to_be_bytes(), end.to_be_bytes());
            // Synced, which also makes every earlier state-machine write
            // durable: purged entries can no longer be re-applied.
            Ok(s.store.write_batch(batch, true)?)
        })
        .await
        .map_err(log_error)
    }
}
