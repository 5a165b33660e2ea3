//! JSON bodies of the HTTP API, shared by the server and the client.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Every error response: `{"error": code, "message": text}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
}

/// File, directory or symbolic link. (New kinds go at the end: stored
/// records and the native protocol carry a kind's position.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    File,
    Directory,
    /// A name standing for a path (its target, stored as the link's
    /// content). Cairn never follows links itself: clients do, as a
    /// mount's kernel does.
    Symlink,
}

/// What `GET ?stat` returns, and each entry of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stat {
    /// The last path segment; empty for a share's root.
    pub name: String,
    pub kind: EntryKind,
    pub inode: u64,
    /// Content length in bytes (0 for directories).
    pub size: u64,
    /// POSIX permission bits, e.g. 0o644.
    pub mode: u32,
    pub nlink: u32,
    /// Modification and change times, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// BLAKE3 of the content, hex (files only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub content_type: Option<String>,
}

/// A page of a directory listing, entries in byte order of their names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub path: String,
    pub entries: Vec<Stat>,
    /// Pass as `after=` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next_after: Option<String>,
}

/// The body of a successful PUT, mkdir or rename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub path: String,
    /// True if nothing existed at `path` before.
    pub created: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub etag: Option<String>,
    pub size: u64,
}

/// `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub node_id: u64,
    pub version: String,
}
