//! Chunk storage: pieces of file content of at most 4 MiB, named by BLAKE3.
//!
//! [`ChunkStore`] is the seam between the data path and where bytes live
//! (local disk now; object stores and simulated stores later). [`Pins`] keeps
//! garbage collection away from chunks that an upload is about to reference.

mod cache;
mod local;
mod pins;

use std::time::SystemTime;

use cairn_proto::ContentHash;

pub use cache::ChunkCache;
pub use local::LocalChunkStore;
pub use pins::{PinGuard, Pins};

/// Why a chunk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("chunk {0} is missing")]
    Missing(ContentHash),
    /// The bytes on disk do not hash to the chunk's name. Never returned as data.
    #[error("chunk {hash} is corrupt: its content hashes to {actual}")]
    Corrupt {
        hash: ContentHash,
        actual: ContentHash,
    },
    #[error("chunk {hash} is corrupt: {len} bytes is over the chunk size limit")]
    Oversize { hash: ContentHash, len: u64 },
    #[error("no space left for chunk data")]
    NoSpace,
    /// Too few replicas could be reached; retryable.
    #[error("{0}")]
    Unavailable(String),
    #[error("chunk store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl ChunkError {
    /// The same kind of error, for reporting a local failure again after
    /// a fallback also failed (`std::io::Error` is not `Clone`).
    pub fn clone_kind(&self) -> Self {
        match self {
            Self::Missing(h) => Self::Missing(*h),
            Self::Corrupt { hash, actual } => Self::Corrupt {
                hash: *hash,
                actual: *actual,
            },
            Self::Oversize { hash, len } => Self::Oversize {
                hash: *hash,
                len: *len,
            },
            Self::NoSpace => Self::NoSpace,
            Self::Unavailable(m) => Self::Unavailable(m.clone()),
            Self::Io(e) => Self::Io(std::io::Error::new(e.kind(), e.to_string())),
        }
    }

    pub fn from_io(e: std::io::Error) -> Self {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            Self::NoSpace
        } else {
            Self::Io(e)
        }
    }
}

/// Where chunks live. Methods block; call them from blocking threads.
pub trait ChunkStore: Send + Sync + 'static {
    /// Makes `data` durable under `hash` (its BLAKE3) unless already present.
    /// Returns only once the chunk would survive a power loss.
    fn put(&self, hash: &ContentHash, data: &[u8]) -> Result<(), ChunkError>;

    /// [`ChunkStore::put`] of bytes the caller shares: a store that sends
    /// copies to peers sends these without copying them first.
    fn put_shared(&self, hash: &ContentHash, data: bytes::Bytes) -> Result<(), ChunkError> {
        self.put(hash, &data)
    }

    /// Reads a chunk and checks its hash; a mismatch is an error, not data.
    fn get(&self, hash: &ContentHash) -> Result<Vec<u8>, ChunkError>;

    fn delete(&self, hash: &ContentHash) -> Result<(), ChunkError>;

    /// True if a copy is stored here (unverified: a cheap existence check).
    fn has(&self, hash: &ContentHash) -> bool;

    /// Calls `visit` with every stored chunk and when it was written.
    fn for_each(&self, visit: &mut dyn FnMut(ContentHash, SystemTime)) -> Result<(), ChunkError>;

    /// Bytes free for new chunks: the file system's free space less the
    /// reserve kept for metadata (0: new chunks are refused).
    fn free_bytes(&self) -> Result<u64, ChunkError>;

    /// Size of the file system the chunks live on, in bytes.
    fn total_bytes(&self) -> Result<u64, ChunkError>;
}
