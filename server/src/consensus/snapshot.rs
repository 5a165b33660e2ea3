//! Snapshot files: the whole state machine as one stream, so a lagging or
//! new node catches up without the log entries that were purged.
//!
//! Layout: `CAIRNSN1`, u32 length + postcard [`SnapshotMeta`], then records
//! `u32 key length | u32 value length | key | value`, then an end marker
//! (key length `u32::MAX`), then the BLAKE3 of every byte before it. The
//! hash is checked before a received snapshot replaces anything.
//!
//! A snapshot is written from a RocksDB checkpoint (hard links of the live
//! files, taken between two applies), so building one never pauses writes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use rocksdb::{DB, IteratorMode, Options};

use super::{NodeId, NodeInfo};
use crate::meta::store::{CF_RAFT_LOG, CF_RAFT_STATE};

pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;

const MAGIC: &[u8; 8] = b"CAIRNSN1";
const END: u32 = u32::MAX;
/// Largest key or value a snapshot may hold (records are far smaller).
const RECORD_MAX: u32 = 64 << 20;
const META_MAX: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error("snapshot encoding: {0}")]
    Encode(#[from] postcard::Error),
    #[error("not a Cairn snapshot (bad magic)")]
    Magic,
    #[error("snapshot record of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("snapshot checksum mismatch: the file is damaged or truncated")]
    Checksum,
}

/// Writes every key of the default column family of the checkpoint at
/// `checkpoint` into `out` (synced), headed by the metadata `make_meta`
/// reads from the checkpoint itself.
pub fn write_from_checkpoint(
    checkpoint: &Path,
    make_meta: impl FnOnce(&DB) -> Result<SnapshotMeta, SnapshotError>,
    out: &Path,
) -> Result<SnapshotMeta, SnapshotError> {
    let cfs = [
        rocksdb::DEFAULT_COLUMN_FAMILY_NAME,
        CF_RAFT_LOG,
        CF_RAFT_STATE,
    ];
    let db = DB::open_cf_for_read_only(&Options::default(), checkpoint, cfs, false)?;
    let meta = &make_meta(&db)?;
    let file = File::create(out)?;
    let mut w = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
    w.write_all(MAGIC)?;
    let meta_bytes = postcard::to_stdvec(meta)?;
    write_u32(&mut w, len_u32(meta_bytes.len())?)?;
    w.write_all(&meta_bytes)?;
    for item in db.iterator(IteratorMode::Start) {
        let (k, v) = item?;
        write_u32(&mut w, len_u32(k.len())?)?;
        write_u32(&mut w, len_u32(v.len())?)?;
        w.write_all(&k)?;
        w.write_all(&v)?;
    }
    write_u32(&mut w, END)?;
    let hash = w.hasher.finalize();
    let mut inner = w.inner;
    inner.write_all(hash.as_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(meta.clone())
}

/// The metadata at the head of the snapshot at `path`.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut r = BufReader::new(File::open(path)?);
    read_header(&mut r)
}

fn read_header(r: &mut impl Read) -> Result<SnapshotMeta, SnapshotError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(SnapshotError::Magic);
    }
    let len = read_u32(r)?;
    if len > META_MAX {
        return Err(SnapshotError::TooLarge(len));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(postcard::from_bytes(&buf)?)
}

/// Checks the whole file against its trailing hash, reading it once.
pub fn verify(path: &Path) -> Result<SnapshotMeta, SnapshotError> {
    let mut r = HashingReader::new(BufReader::with_capacity(1 << 20, File::open(path)?));
    let meta = read_header(&mut r)?;
    while next_record(&mut r)?.is_some() {}
    let expected = r.hasher.finalize();
    let mut trailer = [0u8; 32];
    r.inner.read_exact(&mut trailer)?;
    if trailer != *expected.as_bytes() {
        return Err(SnapshotError::Checksum);
    }
    Ok(meta)
}

/// Calls `visit` with every record of a snapshot already [`verify`]-ed.
pub fn for_each_record(
    path: &Path,
    visit: &mut dyn FnMut(Vec<u8>, Vec<u8>) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let mut r = BufReader::with_capacity(1 << 20, File::open(path)?);
    read_header(&mut r)?;
    while let Some((k, v)) = next_record(&mut r)? {
        visit(k, v)?;
    }
    Ok(())
}

type Record = (Vec<u8>, Vec<u8>);

fn next_record(r: &mut impl Read) -> Result<Option<Record>, SnapshotError> {
    let klen = read_u32(r)?;
    if klen == END {
        return Ok(None);
    }
    let vlen = read_u32(r)?;
    for len in [klen, vlen] {
        if len > RECORD_MAX {
            return Err(SnapshotError::TooLarge(len));
        }
    }
    let mut k = vec![0u8; klen as usize];
    r.read_exact(&mut k)?;
    let mut v = vec![0u8; vlen as usize];
    r.read_exact(&mut v)?;
    Ok(Some((k, v)))
}

fn len_u32(len: usize) -> Result<u32, SnapshotError> {
    u32::try_from(len)
        .ok()
        .filter(|l| *l <= RECORD_MAX.max(META_MAX))
        .ok_or(SnapshotError::TooLarge(u32::MAX))
}

fn write_u32(w: &mut impl Write, v: u32) -> std::io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R) -> Self {
        Self {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The snapshot directory: `current` is the last complete snapshot; others
/// are being built or received.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        // Leftovers of builds or receptions a crash interrupted.
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            if name != "current" {
                let path = entry.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn current(&self) -> PathBuf {
        self.dir.join("current")
    }

    /// A fresh path for a snapshot or checkpoint in progress.
    pub fn scratch(&self, what: &str) -> PathBuf {
        self.dir
            .join(format!("{what}-{:016x}", rand::random::<u64>()))
    }

    /// Makes the complete, synced file at `path` the current snapshot.
    pub fn promote(&self, path: &Path) -> std::io::Result<()> {
        std::fs::rename(path, self.current())?;
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trip_and_damage_detected() {
        let dir = tempfile::tempdir().unwrap();
        let db_dir = dir.path().join("db");
        let store = crate::meta::MetaStore::open(&db_dir).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put(b"Ka", b"1");
        batch.put(b"Kb", vec![7u8; 100_000]);
        store.write(batch).unwrap();
        let ckpt = dir.path().join("ckpt");
        rocksdb::checkpoint::Checkpoint::new(store.db())
            .unwrap()
            .create_checkpoint(&ckpt)
            .unwrap();
        let out = dir.path().join("snap");
        let meta = SnapshotMeta::default();
        write_from_checkpoint(&ckpt, |_| Ok(SnapshotMeta::default()), &out).unwrap();
        assert_eq!(verify(&out).unwrap(), meta);
        let mut seen = Vec::new();
        for_each_record(&out, &mut |k, v| {
            seen.push((k, v.len()));
            Ok(())
        })
        .unwrap();
        assert!(seen.contains(&(b"Ka".to_vec(), 1)));
        assert!(seen.contains(&(b"Kb".to_vec(), 100_000)));

        // One flipped byte in the middle, or a lost tail, is refused.
        let mut bytes = std::fs::read(&out).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&out, &bytes).unwrap();
        assert!(verify(&out).is_err());
        bytes[mid] ^= 1;
        bytes.truncate(bytes.len() - 10);
        std::fs::write(&out, &bytes).unwrap();
        assert!(verify(&out).is_err());
    }
}
