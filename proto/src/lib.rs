//! Cairn's shared vocabulary: ids, validated paths, error codes and the JSON
//! bodies of the HTTP API.
//!
//! This crate does no I/O and has no clock: everything here is a pure function
//! of its input, so the server, the client and the tests agree on it.

pub mod api;
pub mod error;
pub mod extents;
pub mod ids;
pub mod path;
pub mod wire;

pub use error::ErrorCode;
pub use ids::{ContentHash, HashParseError, InodeId};
pub use path::{FilePath, PathError, ShareName};

/// Largest chunk of file content, in bytes. Chunks are named by their BLAKE3.
pub const CHUNK_SIZE_MAX: usize = 4 * 1024 * 1024;
