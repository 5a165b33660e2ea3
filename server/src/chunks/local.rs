//! Chunks as files on a local disk: `chunks/ab/abcd…` (two hex digits of
//! fan-out), written through `chunks/.tmp`.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use cairn_proto::{CHUNK_SIZE_MAX, ContentHash};

use super::{ChunkError, ChunkStore};

pub struct LocalChunkStore {
    root: PathBuf,
    tmp: PathBuf,
    /// Free bytes a new chunk never takes: the room metadata commits need.
    reserve: u64,
    /// Bytes of new chunks being written: each write counts the others'
    /// as taken, so writers checking at once cannot share the last room.
    writing: AtomicU64,
}

impl LocalChunkStore {
    /// Opens (creating if needed) the store under `root`, and removes temp
    /// files that a crash left behind: they were never renamed into place, so
    /// nothing can reference them. A new chunk that would leave less than
    /// `reserve` bytes free is refused ([`ChunkError::NoSpace`]), whoever
    /// sends it: an upload here, a peer's copy, a repair.
    pub fn open(root: &Path, reserve: u64) -> Result<Self, ChunkError> {
        let tmp = root.join(".tmp");
        fs::create_dir_all(&tmp).map_err(ChunkError::from_io)?;
        for entry in fs::read_dir(&tmp)? {
            let entry = entry?;
            tracing::debug!(path = %entry.path().display(), "removing leftover temp chunk");
            fs::remove_file(entry.path())?;
        }
        for i in 0..=255u8 {
            let dir = root.join(format!("{i:02x}"));
            if !dir.exists() {
                fs::create_dir(&dir).map_err(ChunkError::from_io)?;
            }
        }
        sync_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            tmp,
            reserve,
            writing: AtomicU64::new(0),
        })
    }

    fn path(&self, hash: &ContentHash) -> PathBuf {
        let hex = hash.to_hex();
        self.root.join(&hex[..2]).join(hex)
    }

    fn write_new(&self, hash: &ContentHash, data: &[u8], dest: &Path) -> Result<(), ChunkError> {
        let _room = self.take_room(data.len() as u64)?;
        let tmp = self
            .tmp
            .join(format!("{}.{:016x}", hash.to_hex(), rand::random::<u64>()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            // The content must be on disk before the name points at it, or a
            // crash could leave a complete-looking name over missing bytes.
            f.sync_all()?;
            fs::rename(&tmp, dest)?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(ChunkError::from_io(e));
        }
        // The rename is durable only once the directory holding it is synced.
        let parent = dest.parent().unwrap_or(&self.root);
        sync_dir(parent)
    }
}

/// Room taken for a chunk being written; given back when dropped.
struct Room<'a> {
    writing: &'a AtomicU64,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.writing.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl LocalChunkStore {
    /// Takes `bytes` of room for a new chunk, or refuses: what is free less
    /// what other writes are taking must cover it and the reserve. (A write
    /// under way is counted twice, in its room and in the space it has
    /// used already: the error is on the safe side.)
    fn take_room(&self, bytes: u64) -> Result<Room<'_>, ChunkError> {
        let room = Room {
            writing: &self.writing,
            bytes,
        };
        let taken = self.writing.fetch_add(bytes, Ordering::AcqRel) + bytes;
        if free_bytes(&self.root)? < self.reserve.saturating_add(taken) {
            return Err(ChunkError::NoSpace);
        }
        Ok(room)
    }
}

fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ChunkError::from_io)
}

impl ChunkStore for LocalChunkStore {
    fn put(&self, hash: &ContentHash, data: &[u8]) -> Result<(), ChunkError> {
        assert!(
            data.len() <= CHUNK_SIZE_MAX,
            "chunk of {} bytes",
            data.len()
        );
        debug_assert_eq!(ContentHash::of(data), *hash);
        let dest = self.path(hash);
        match fs::metadata(&dest) {
            Ok(m) if m.len() == data.len() as u64 => {
                // Same name, same content: deduplicated. Another writer may
                // have renamed it into place without yet syncing the
                // directory, so sync it before calling the chunk durable. A
                // damaged copy is caught by the hash check on every read.
                // Its time is refreshed: GC keeps a chunk for its grace
                // period after the last write, which covers an upload that
                // found it here and is about to reference it.
                File::options()
                    .write(true)
                    .open(&dest)
                    .and_then(|f| f.set_modified(SystemTime::now()))
                    .map_err(ChunkError::from_io)?;
                sync_dir(dest.parent().unwrap_or(&self.root))
            }
            // A copy of the wrong length is damaged: replace it with the
            // good bytes we hold.
            _ => self.write_new(hash, data, &dest),
        }
    }

    fn get(&self, hash: &ContentHash) -> Result<Vec<u8>, ChunkError> {
        let mut f = match File::open(self.path(hash)) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ChunkError::Missing(*hash));
            }
            Err(e) => return Err(e.into()),
        };
        let len = f.metadata()?.len();
        if len > CHUNK_SIZE_MAX as u64 {
            return Err(ChunkError::Oversize { hash: *hash, len });
        }
        let mut data = Vec::with_capacity(len as usize);
        f.read_to_end(&mut data)?;
        let actual = ContentHash::of(&data);
        if actual != *hash {
            return Err(ChunkError::Corrupt {
                hash: *hash,
                actual,
            });
        }
        Ok(data)
    }

    fn delete(&self, hash: &ContentHash) -> Result<(), ChunkError> {
        match fs::remove_file(self.path(hash)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn has(&self, hash: &ContentHash) -> bool {
        self.path(hash).exists()
    }

    fn for_each(&self, visit: &mut dyn FnMut(ContentHash, SystemTime)) -> Result<(), ChunkError> {
        for i in 0..=255u8 {
            let dir = self.root.join(format!("{i:02x}"));
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let Some(hash) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
                    tracing::warn!(path = %entry.path().display(), "stray file in chunk store");
                    continue;
                };
                let written = entry.metadata()?.modified()?;
                visit(hash, written);
            }
        }
        Ok(())
    }

    fn free_bytes(&self) -> Result<u64, ChunkError> {
        Ok(free_bytes(&self.root)?.saturating_sub(self.reserve))
    }

    fn total_bytes(&self) -> Result<u64, ChunkError> {
        let st = rustix::fs::statvfs(&self.root).map_err(|e| ChunkError::Io(e.into()))?;
        Ok(st.f_blocks.saturating_mul(st.f_frsize))
    }
}

/// Free bytes for unprivileged writers on the file system holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64, ChunkError> {
    let st = rustix::fs::statvfs(path).map_err(|e| ChunkError::Io(e.into()))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_dedup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalChunkStore::open(dir.path(), 0).unwrap();
        let data = vec![7u8; 100_000];
        let hash = ContentHash::of(&data);
        store.put(&hash, &data).unwrap();
        store.put(&hash, &data).unwrap();
        assert_eq!(store.get(&hash).unwrap(), data);
        let mut seen = Vec::new();
        store.for_each(&mut |h, _| seen.push(h)).unwrap();
        assert_eq!(seen, vec![hash]);

        // Flip one byte on disk: the read must fail, never return the bytes.
        let path = store.path(&hash);
        let mut bytes = fs::read(&path).unwrap();
        bytes[500] ^= 1;
        fs::write(&path, &bytes).unwrap();
        assert!(matches!(store.get(&hash), Err(ChunkError::Corrupt { .. })));

        store.delete(&hash).unwrap();
        assert!(matches!(store.get(&hash), Err(ChunkError::Missing(_))));
        store.delete(&hash).unwrap();
        assert!(store.free_bytes().unwrap() > 0);
        assert!(store.total_bytes().unwrap() >= store.free_bytes().unwrap());
    }

    #[test]
    fn open_clears_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        drop(LocalChunkStore::open(dir.path(), 0).unwrap());
        fs::write(dir.path().join(".tmp/leftover"), b"x").unwrap();
        drop(LocalChunkStore::open(dir.path(), 0).unwrap());
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
    }

    /// A chunk that would eat into the reserve is refused and leaves
    /// nothing behind; one already stored needs no room and is accepted.
    #[test]
    fn new_chunks_keep_out_of_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let old = vec![1u8; 4096];
        LocalChunkStore::open(dir.path(), 0)
            .unwrap()
            .put(&ContentHash::of(&old), &old)
            .unwrap();
        // A reserve of the whole disk: never free, however busy the machine.
        let disk = LocalChunkStore::open(dir.path(), 0)
            .unwrap()
            .total_bytes()
            .unwrap();
        let store = LocalChunkStore::open(dir.path(), disk).unwrap();
        let new = vec![2u8; 4096];
        let hash = ContentHash::of(&new);
        assert!(matches!(store.put(&hash, &new), Err(ChunkError::NoSpace)));
        assert!(matches!(store.get(&hash), Err(ChunkError::Missing(_))));
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
        store.put(&ContentHash::of(&old), &old).unwrap();
    }

    /// Writers checking at once cannot share the last room: with room for
    /// one chunk past the reserve, a second one is refused while the first
    /// is being written.
    #[test]
    fn writers_at_once_do_not_share_the_last_room() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        // Room for a chunk of a quarter of what is free, not two of them
        // (a margin on each side for other writers on this machine).
        let chunk = free / 4;
        let store = LocalChunkStore::open(dir.path(), free - chunk - chunk / 2).unwrap();
        let first = store.take_room(chunk).unwrap();
        assert!(matches!(store.take_room(chunk), Err(ChunkError::NoSpace)));
        drop(first);
        drop(store.take_room(chunk).unwrap());
    }
}
