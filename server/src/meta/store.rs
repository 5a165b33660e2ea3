//! The metadata store: RocksDB holding the state that `apply` builds.
//!
//! The default column family is the state machine: written only by the Raft
//! state machine (one batch per batch of committed entries). Readers take a
//! RocksDB snapshot so a lookup that reads several keys sees one applied
//! state, never half of a batch. The Raft log and vote live in their own
//! column families of the same database, so one WAL orders all of it.

use std::path::Path;
use std::sync::Arc;

use cairn_proto::api::EntryKind;
use cairn_proto::{ContentHash, FilePath, InodeId, ShareName};
use rocksdb::{
    ColumnFamily, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions,
};

use super::apply::{self, ApplyError, MetaError};
use super::keys;
use super::overlay::KvRead;
use super::records::{
    ChunkRecord, DirEntry, Inode, RecordError, ShareRecord, TokenRecord, decode, encode,
};

/// The metadata store failed; the request cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("corrupt metadata record at key {key}: {source}")]
    Corrupt { key: String, source: RecordError },
    #[error("a directory entry points at missing inode {0}")]
    Dangling(InodeId),
    #[error("inode numbers are exhausted")]
    InodesExhausted,
    #[error("metadata invariant broken: {0}")]
    Invariant(String),
    #[error("metadata schema version {found} is not supported (this build reads {SCHEMA_VERSION})")]
    Schema { found: u32 },
    #[error("column family {0} is missing")]
    MissingColumnFamily(&'static str),
}

impl StoreError {
    pub fn corrupt(key: &[u8], source: RecordError) -> Self {
        Self::Corrupt {
            key: escape(key),
            source,
        }
    }

    /// True if the disk under the store is full.
    pub fn is_no_space(&self) -> bool {
        matches!(self, Self::Rocks(e) if e.to_string().contains("No space left"))
    }
}

fn escape(key: &[u8]) -> String {
    key.iter()
        .flat_map(|b| std::ascii::escape_default(*b))
        .map(char::from)
        .collect()
}

/// Version of the key layout; bumped with a migration when it changes.
pub const SCHEMA_VERSION: u32 = 1;

/// A directory entry with the attributes of the inode it names (without its
/// content: see [`Inode::attributes_only`]).
#[derive(Clone, Debug)]
pub struct Listed {
    pub name: String,
    pub entry: DirEntry,
    pub inode: Inode,
}

/// Column family of the Raft log: big-endian index -> entry.
pub const CF_RAFT_LOG: &str = "raft_log";
/// Column family of the vote, the purged and committed log ids.
pub const CF_RAFT_STATE: &str = "raft_state";

pub struct MetaStore {
    db: DB,
    /// Bumped whenever applied commands change lease-break records, so the
    /// nodes' break pushers rescan only when there is something new.
    lease_epoch: std::sync::atomic::AtomicU64,
}

impl MetaStore {
    pub fn open(dir: &Path) -> Result<Arc<Self>, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_paranoid_checks(true);
        // Bound what RocksDB keeps in memory: a few write buffers, no more.
        opts.set_write_buffer_size(32 << 20);
        opts.set_max_write_buffer_number(3);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        // Applying a command looks up keys that are mostly absent (a new
        // name, a free replay slot): bloom filters, in the tables and in
        // the write buffers, answer those without walking either.
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        opts.set_block_based_table_factory(&table);
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.set_memtable_whole_key_filtering(true);
        opts.create_missing_column_families(true);
        let cfs = [
            rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
            CF_RAFT_LOG,
            CF_RAFT_STATE,
        ];
        let db = DB::open_cf(&opts, dir, cfs)?;
        let store = Self {
            db,
            lease_epoch: std::sync::atomic::AtomicU64::new(0),
        };
        store.check_schema()?;
        Ok(Arc::new(store))
    }

    fn check_schema(&self) -> Result<(), StoreError> {
        match self.db.get(keys::SCHEMA)? {
            None => {
                let mut batch = WriteBatch::default();
                batch.put(keys::SCHEMA, encode(&SCHEMA_VERSION));
                self.write(batch)?;
                Ok(())
            }
            Some(bytes) => {
                let found: u32 =
                    decode(&bytes).map_err(|e| StoreError::corrupt(keys::SCHEMA, e))?;
                if found == SCHEMA_VERSION {
                    Ok(())
                } else {
                    Err(StoreError::Schema { found })
                }
            }
        }
    }

    /// Writes `batch` atomically and waits until it is on disk (WAL fsynced).
    pub fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        self.write_batch(batch, true)
    }

    /// Writes `batch` atomically; with `sync`, returns once it is on disk.
    /// Without, it is ordered before every later write in the one WAL, so
    /// the next synced write makes it durable too.
    pub fn write_batch(&self, batch: WriteBatch, sync: bool) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)?;
        Ok(())
    }

    /// The database itself, for the Raft log store and snapshots.
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, name: &'static str) -> Result<&ColumnFamily, StoreError> {
        self.db
            .cf_handle(name)
            .ok_or(StoreError::MissingColumnFamily(name))
    }

    /// A consistent view of the committed state.
    pub fn snapshot(&self) -> Snapshot<'_> {
        Snapshot {
            snap: self.db.snapshot(),
            db: &self.db,
        }
    }

    pub fn token(&self, token_hash: &ContentHash) -> Result<Option<TokenRecord>, StoreError> {
        apply::get(self, &keys::token(token_hash))
    }

    pub fn share(&self, share: &ShareName) -> Result<Option<ShareRecord>, StoreError> {
        apply::get(self, &keys::share(share))
    }

    pub fn chunk_record(&self, hash: &ContentHash) -> Result<Option<ChunkRecord>, StoreError> {
        apply::get(self, &keys::chunk(hash))
    }

    /// Every chunk record, for checks and tests; bounded by `limit`.
    pub fn chunk_records(
        &self,
        limit: usize,
    ) -> Result<Vec<(ContentHash, ChunkRecord)>, StoreError> {
        self.scan_hashed(keys::CHUNK_PREFIX, limit)
    }

    /// Calls `visit` with every chunk that committed metadata references,
    /// as one consistent snapshot sees them, without collecting them.
    pub fn for_each_referenced_chunk(
        &self,
        visit: &mut dyn FnMut(ContentHash),
    ) -> Result<(), StoreError> {
        let snap = self.db.snapshot();
        let prefix = [keys::CHUNK_PREFIX];
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_upper_bound(keys::prefix_end(&prefix));
        for item in self
            .db
            .iterator_opt(IteratorMode::From(&prefix, Direction::Forward), ro)
        {
            let (k, v) = item?;
            let hash: [u8; 32] = k[1..]
                .try_into()
                .map_err(|_| StoreError::Invariant(format!("bad key {}", escape(&k))))?;
            let rec: ChunkRecord = decode(&v).map_err(|e| StoreError::corrupt(&k, e))?;
            if rec.refs > 0 {
                visit(ContentHash(hash));
            }
        }
        Ok(())
    }

    /// Every token (by hash); bounded by `limit`.
    pub fn tokens(&self, limit: usize) -> Result<Vec<(ContentHash, TokenRecord)>, StoreError> {
        self.scan_hashed(keys::TOKEN_PREFIX, limit)
    }

    /// Records keyed `tag | 32-byte hash`, in key order.
    fn scan_hashed<T: serde::de::DeserializeOwned>(
        &self,
        tag: u8,
        limit: usize,
    ) -> Result<Vec<(ContentHash, T)>, StoreError> {
        let prefix = [tag];
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_opt(IteratorMode::From(&prefix, Direction::Forward), ro)
        {
            let (k, v) = item?;
            if out.len() >= limit {
                break;
            }
            let hash: [u8; 32] = k[1..]
                .try_into()
                .map_err(|_| StoreError::Invariant(format!("bad key {}", escape(&k))))?;
            let rec = decode(&v).map_err(|e| StoreError::corrupt(&k, e))?;
            out.push((ContentHash(hash), rec));
        }
        Ok(out)
    }
}

impl MetaStore {
    /// Changes whenever lease-break records do.
    pub fn lease_epoch(&self) -> u64 {
        self.lease_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub(super) fn lease_records_changed(&self) {
        self.lease_epoch
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

impl KvRead for MetaStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key)?)
    }

    fn first_key_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        first_key(&self.db, ReadOptions::default(), start, end)
    }
}

/// The first key in `[start, end)` as `ro` sees the store.
fn first_key(
    db: &DB,
    mut ro: ReadOptions,
    start: &[u8],
    end: &[u8],
) -> Result<Option<Vec<u8>>, StoreError> {
    ro.set_iterate_upper_bound(end.to_vec());
    let mut it = db.iterator_opt(IteratorMode::From(start, Direction::Forward), ro);
    Ok(it.next().transpose()?.map(|(k, _)| k.into_vec()))
}

/// A point-in-time view for readers.
pub struct Snapshot<'a> {
    snap: rocksdb::SnapshotWithThreadMode<'a, DB>,
    db: &'a DB,
}

impl KvRead for Snapshot<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.snap.get(key)?)
    }

    fn first_key_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snap);
        first_key(self.db, ro, start, end)
    }
}

impl Snapshot<'_> {
    /// The inode at `path` in `share`.
    pub fn resolve(
        &self,
        share: &ShareName,
        path: &FilePath,
    ) -> Result<(InodeId, Inode), ApplyError> {
        let root = apply::load_share(self, share)?.root;
        let not_found = || MetaError::NotFound(path.to_string());
        let id = match path.split_last() {
            None => root,
            Some((parent_path, name)) => {
                let parent = apply::resolve_dir(self, root, &parent_path)?.ok_or_else(not_found)?;
                apply::lookup(self, parent, name)?
                    .ok_or_else(not_found)?
                    .inode
            }
        };
        Ok((id, apply::load_inode(self, id)?))
    }

    /// Up to `limit` entries of directory `dir` whose names sort after
    /// `after`, and whether more follow.
    pub fn list(
        &self,
        dir: InodeId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Listed>, bool), StoreError> {
        let prefix = keys::dir_prefix(dir);
        let start = match after {
            Some(name) => {
                let mut k = keys::dir_entry(dir, name);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut ro = ReadOptions::default();
        ro.set_snapshot(&self.snap);
        ro.set_iterate_upper_bound(keys::prefix_end(&prefix));
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self
            .db
            .iterator_opt(IteratorMode::From(&start, Direction::Forward), ro)
        {
            let (k, v) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            let name = std::str::from_utf8(&k[prefix.len()..])
                .map_err(|_| StoreError::Invariant(format!("non-UTF-8 name at {}", escape(&k))))?
                .to_owned();
            let entry: DirEntry = decode(&v).map_err(|e| StoreError::corrupt(&k, e))?;
            let inode = apply::load_inode(self, entry.inode)?;
            debug_assert_eq!(
                inode.kind == EntryKind::Directory,
                entry.kind == EntryKind::Directory
            );
            out.push(Listed {
                name,
                entry,
                inode: inode.attributes_only(),
            });
        }
        Ok((out, false))
    }
}
