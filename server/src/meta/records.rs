//! On-disk metadata records and their versioned encoding.
//!
//! Every value starts with a one-byte format version, then a postcard body.
//! Decoding never panics: a record we cannot read is a [`RecordError`], which
//! the store reports as corruption instead of guessing.

use cairn_proto::api::EntryKind;
use cairn_proto::wire::SessionId;
use cairn_proto::{ContentHash, InodeId, ShareName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Format version written in front of every record.
pub const RECORD_VERSION: u8 = 1;

/// A metadata value that could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("empty record")]
    Empty,
    #[error("record format version {0} is not supported (this build reads {RECORD_VERSION})")]
    Version(u8),
    #[error("record body does not decode: {0}")]
    Body(#[from] postcard::Error),
}

/// Serializes `value` with the version byte in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = vec![RECORD_VERSION];
    // Writing postcard into a Vec only fails if `T`'s Serialize impl fails,
    // which none of our derived records do.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => panic!("metadata record failed to serialize: {e}"),
    }
}

/// Decodes a value written by [`encode`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    let (&version, body) = bytes.split_first().ok_or(RecordError::Empty)?;
    if version != RECORD_VERSION {
        return Err(RecordError::Version(version));
    }
    Ok(postcard::from_bytes(body)?)
}

/// One share: a named tree with its own root directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareRecord {
    pub root: InodeId,
    pub created_ns: i64,
}

/// What a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    Read,
    ReadWrite,
}

impl Access {
    pub fn can_write(self) -> bool {
        matches!(self, Self::ReadWrite)
    }
}

/// A bearer token, stored by the BLAKE3 of its text so the store never holds
/// usable secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub share: ShareName,
    pub access: Access,
}

/// A piece of a file's content, stored in the chunk store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub hash: ContentHash,
    pub len: u32,
}

/// Where a file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// Small files live in the metadata itself. (As bytes, not a sequence of
    /// numbers: same encoding, but one copy instead of a call per byte.)
    Inline(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Larger ones are a list of chunks, in order.
    Chunks(Vec<ChunkRef>),
}

impl Content {
    pub fn chunks(&self) -> &[ChunkRef] {
        match self {
            Self::Inline(_) => &[],
            Self::Chunks(c) => c,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Self::Inline(b) => b.len() as u64,
            Self::Chunks(c) => c.iter().map(|c| u64::from(c.len)).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A file or directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    pub kind: EntryKind,
    pub mode: u32,
    pub nlink: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// The directory holding this one; used to refuse moving a directory
    /// into its own subtree. Files keep their first parent.
    pub parent: InodeId,
    pub file: Option<FileData>,
}

/// What only files have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    pub size: u64,
    pub etag: ContentHash,
    pub content_type: Option<String>,
    pub content: Content,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Directory
    }

    pub fn etag(&self) -> Option<ContentHash> {
        self.file.as_ref().map(|f| f.etag)
    }

    pub fn size(&self) -> u64 {
        self.file.as_ref().map_or(0, |f| f.size)
    }

    /// The attributes without the content (inline bytes, chunk list), so a
    /// page of thousands of entries does not hold thousands of files' data.
    pub fn attributes_only(mut self) -> Self {
        if let Some(f) = self.file.as_mut() {
            f.content = Content::Chunks(Vec::new());
        }
        self
    }
}

/// A name in a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub inode: InodeId,
    pub kind: EntryKind,
}

/// How many files reference a chunk. At zero the record stays, stamped with
/// the time, so GC can wait out its grace period before deleting the chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRecord {
    pub refs: u64,
    pub unreferenced_since_ns: i64,
}

/// A native-protocol session: replicated, so any node can resume it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub share: ShareName,
    pub writable: bool,
    pub created_ns: i64,
    /// Last time a node said a client holds it; expiry counts from here.
    pub renewed_ns: i64,
}

/// A byte-range lock (its inode, handle and offset are in the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// 0: to the end of any file.
    pub len: u64,
    pub exclusive: bool,
}

impl LockRecord {
    /// One past the last byte covered.
    pub fn end(&self, offset: u64) -> u64 {
        if self.len == 0 {
            u64::MAX
        } else {
            offset.saturating_add(self.len)
        }
    }
}

/// An open file of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandleRecord {
    pub session: SessionId,
    pub inode: InodeId,
    /// `wire::access` bits granted, and what other handles may do.
    pub access: u8,
    pub share_access: u8,
    pub flags: u8,
    /// The directory and name it was opened by (for delete-on-close).
    pub parent: InodeId,
    pub name: String,
    /// The lease it holds (`wire::lease` bits); a pending break lowers it
    /// only once acknowledged.
    pub lease: u8,
}

/// A lease break its holder has not acknowledged yet (the session and
/// handle are in the key: `B | session | handle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBreakRecord {
    pub from: u8,
    pub to: u8,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_version_check() {
        let rec = ChunkRecord {
            refs: 3,
            unreferenced_since_ns: -1,
        };
        let bytes = encode(&rec);
        assert_eq!(bytes[0], RECORD_VERSION);
        assert_eq!(decode::<ChunkRecord>(&bytes).unwrap(), rec);
        let mut future = bytes.clone();
        future[0] = 9;
        assert!(matches!(
            decode::<ChunkRecord>(&future),
            Err(RecordError::Version(9))
        ));
        assert!(matches!(
            decode::<ChunkRecord>(&[]),
            Err(RecordError::Empty)
        ));
    }

    #[test]
    fn inline_content_encoding_is_pinned() {
        // Version byte, variant 0, varint length 3, the bytes: changing this
        // changes the on-disk format and needs a new RECORD_VERSION.
        assert_eq!(encode(&Content::Inline(vec![7, 8, 9])), [1, 0, 3, 7, 8, 9]);
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode::<Inode>(&bytes);
            let _ = decode::<DirEntry>(&bytes);
            let _ = decode::<ShareRecord>(&bytes);
            let _ = decode::<TokenRecord>(&bytes);
        }

        #[test]
        fn inode_round_trip(size in any::<u64>(), mode in any::<u32>(), data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let ino = Inode {
                kind: EntryKind::File,
                mode,
                nlink: 1,
                mtime_ns: 5,
                ctime_ns: 6,
                parent: InodeId(1),
                file: Some(FileData {
                    size,
                    etag: ContentHash::of(&data),
                    content_type: Some("text/plain".into()),
                    content: Content::Inline(data),
                }),
            };
            prop_assert_eq!(decode::<Inode>(&encode(&ino)).unwrap(), ino);
        }
    }
}
