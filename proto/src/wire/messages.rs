//! Messages of the native protocol and their encoding.
//!
//! Every message is a frame whose `kind` names it and whose payload is the
//! postcard encoding of its body (requests: a [`RequestHeader`] first).
//! Decoders ignore bytes after the body, so a later minor version may append
//! fields to a body without breaking older readers.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::frame::{Frame, FrameError, encode_frame_around, finish_frame, start_frame};
use super::leases::LeaseAck;
use super::locks::{LockRange, LockTested, TestLock};
use crate::ErrorCode;
use crate::api::EntryKind;

/// A session, named by the client (16 random bytes), so that setting one up
/// is itself replay-safe: the same id twice is the same session.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// An open file, valid on every node until closed or expired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HandleId(pub u64);

impl fmt::Display for HandleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "h{}", self.0)
    }
}

/// In front of every request. `seq` is 0 for requests that change nothing
/// (and for negotiate and session setup); every mutating request takes the
/// session's next sequence number and keeps it when it is retried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    pub session: SessionId,
    pub seq: u64,
}

/// Access wanted on an open handle (bit set).
pub mod access {
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const DELETE: u8 = 4;
}

/// What `Open` does depending on whether the file exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Open an existing file; `not_found` otherwise.
    Open,
    /// Create the file, or truncate an existing one (`O_CREAT|O_TRUNC`).
    Create,
    /// Create the file; `already_exists` if it exists (`O_CREAT|O_EXCL`).
    CreateNew,
    /// Truncate an existing file; `not_found` otherwise.
    Overwrite,
    /// Open an existing file or create an empty one (`O_CREAT`).
    OpenOrCreate,
}

/// Open flags (bit set).
pub mod open_flags {
    /// Every write goes to the end of the file, whatever its offset.
    pub const APPEND: u8 = 1;
    /// Remove the file's name when this handle closes (needs delete
    /// access); handles still open keep reading it until they close.
    pub const DELETE_ON_CLOSE: u8 = 2;
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiate {
    /// Versions the client speaks; the server picks the highest it shares.
    pub versions: Vec<u16>,
    pub capabilities: u64,
    pub client: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    pub version: u16,
    pub capabilities: u64,
    /// Largest `Read.len` and `Write.data` the server accepts.
    pub max_read: u32,
    pub max_write: u32,
    /// How long handles outlive a lost connection.
    pub handle_timeout_ms: u64,
    /// Sequenced requests the server remembers per session.
    pub replay_window: u32,
    pub node_id: u64,
    /// The QUIC address of the metadata leader as this node knows it, if
    /// any. Appended after `node_id` (servers before it end the body
    /// there); a client may move its session there to save the node a
    /// forward per metadata request.
    #[serde(skip)]
    pub leader: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSetup {
    /// A share token (the same bearer tokens as the HTTP API).
    pub token: String,
    pub share: String,
    /// True when reclaiming a session after a lost connection: the session
    /// must still exist; false to create it (or find it, if this is a retry).
    pub resume: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReady {
    pub resumed: bool,
    pub writable: bool,
    /// Handles the session holds, after a resume.
    pub handles: Vec<HandleId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Open {
    pub path: String,
    pub disposition: Disposition,
    pub access: u8,
    /// What other handles may do at the same time (access bits).
    pub share_access: u8,
    pub flags: u8,
    /// Permission bits of a file this creates.
    pub mode: u32,
    /// The lease wanted (`lease` bits); the answer says what was granted.
    pub lease: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opened {
    pub handle: HandleId,
    pub created: bool,
    pub attr: Attr,
    /// The lease granted: at most the one asked for, less when other
    /// handles are open (`READ` needs no other writer, `WRITE` no other
    /// handle at all).
    pub lease: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Read {
    pub handle: HandleId,
    pub offset: u64,
    pub len: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    pub data: Bytes,
    /// True when the read reached the end of the file.
    pub eof: bool,
}

/// [`Data`] as it lies in a frame, decoded without copying the bytes.
#[derive(Deserialize)]
struct DataRef<'a> {
    data: &'a [u8],
    eof: bool,
}

/// Positional, so sending it again (after a failover) is harmless. On a
/// handle opened with `APPEND`, a write whose header has a sequence number
/// goes to the end of the file, and the node answers a repeat of that
/// number with the first answer; a write with `seq` 0 is positional there
/// too (a client resending an append whose offset it learnt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Write {
    pub handle: HandleId,
    pub offset: u64,
    pub data: Bytes,
}

/// [`Write`] as it lies in a frame, decoded without copying the bytes.
#[derive(Deserialize)]
struct WriteRef<'a> {
    handle: HandleId,
    offset: u64,
    data: &'a [u8],
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub count: u32,
    /// Where the data went (the end of the file, for an append).
    pub offset: u64,
    /// The file's size as this handle sees it (its writes included).
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReq {
    pub path: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetInfo {
    pub handle: HandleId,
    /// Truncate or extend (with zeros).
    pub size: Option<u64>,
    pub mtime_ns: Option<i64>,
    pub mode: Option<u32>,
}

/// Sets a file's or directory's mode and/or modification time by path
/// (directories have no handles; files are better changed through their
/// handle, after its writes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetPathInfo {
    pub path: String,
    pub mtime_ns: Option<i64>,
    pub mode: Option<u32>,
}

/// A byte-range lock on an open file. Locks of one handle never conflict
/// with each other; taking the same lock again is a no-op, so a retry is
/// harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub handle: HandleId,
    pub offset: u64,
    /// 0 means "to the end of any file" (every offset from `offset` on).
    pub len: u64,
    pub exclusive: bool,
    /// How long to wait for conflicting locks to go away (0: do not wait).
    pub wait_ms: u32,
}

/// Releases a lock taken with exactly this offset and length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlock {
    pub handle: HandleId,
    pub offset: u64,
    pub len: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadDir {
    pub path: String,
    /// Continue after this name (from the previous page's `next_after`).
    pub after: Option<String>,
    pub limit: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirPage {
    pub entries: Vec<Attr>,
    pub next_after: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mkdir {
    pub path: String,
    pub mode: u32,
}

/// Makes a symbolic link at `path` standing for `target` (any text of
/// 1 to 4,095 bytes without NUL; never resolved by the server). The parent
/// directory must exist; `already_exists` if the name does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    pub path: String,
    pub target: String,
}

/// The share's space, as the node answering sees its disk (every node
/// holds copies of the chunks, so one node's disk is what fits).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsStats {
    pub total_bytes: u64,
    /// Free for new files: the disk's free space less the reserve the
    /// server keeps for metadata (writes past it fail with
    /// `insufficient_storage`).
    pub free_bytes: u64,
}

/// What a symbolic link stands for (the answer to `ReadLink`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkTarget {
    pub target: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
    pub replace: bool,
}

/// A file's or directory's attributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub name: String,
    pub kind: EntryKind,
    pub inode: u64,
    pub size: u64,
    pub mode: u32,
    pub nlink: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Changes whenever the content does (files only).
    pub etag: Option<[u8; 32]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

/// A request body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    Negotiate(Negotiate),
    SessionSetup(SessionSetup),
    KeepAlive,
    Logoff,
    Open(Open),
    Read(Read),
    Write(Write),
    Flush(HandleId),
    Close(HandleId),
    Stat(PathReq),
    StatHandle(HandleId),
    SetInfo(SetInfo),
    ReadDir(ReadDir),
    Mkdir(Mkdir),
    Rename(Rename),
    Remove(PathReq),
    SetPathInfo(SetPathInfo),
    Symlink(Symlink),
    ReadLink(PathReq),
    StatFs,
    Lock(Lock),
    Unlock(Unlock),
    LeaseAck(LeaseAck),
    LockRange(LockRange),
    TestLock(TestLock),
}

/// A response body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Error(ErrorReply),
    Negotiated(Negotiated),
    SessionReady(SessionReady),
    Done,
    Opened(Opened),
    Data(Data),
    Written(Written),
    Attr(Attr),
    DirPage(DirPage),
    LinkTarget(LinkTarget),
    FsStats(FsStats),
    LockTested(LockTested),
}

/// Why a frame is not a message we can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    #[error("message {kind:#06x} does not decode: {message}")]
    Body { kind: u16, message: String },
}

pub(super) fn body<'a, T: Deserialize<'a>>(
    kind: u16,
    bytes: &'a [u8],
) -> Result<(T, &'a [u8]), MessageError> {
    postcard::take_from_bytes(bytes).map_err(|e| MessageError::Body {
        kind,
        message: e.to_string(),
    })
}

/// `Negotiated`: its first fields, then `leader` if the server sent it.
fn negotiated(kind: u16, p: &[u8]) -> Result<Negotiated, MessageError> {
    let (mut n, rest): (Negotiated, _) = body(kind, p)?;
    if !rest.is_empty() {
        n.leader = body(kind, rest)?.0;
    }
    Ok(n)
}

pub(super) fn put<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing derived structs into a Vec cannot fail.
    if let Ok(v) = postcard::to_extend(value, std::mem::take(out)) {
        *out = v;
    }
}

/// Bytes of a frame beyond a write's data that it may still keep alive:
/// header, body fields and fields a newer peer appended.
const WRITE_VIEW_SLACK: usize = 4096;

/// Writes smaller than this are copied out of their frame whatever the
/// frame's size: cheap, and a view's share of its buffer stays small.
const WRITE_COPIED_BELOW: usize = 64 << 10;

/// A write's data: a view of the frame when it is large and most of the
/// frame (no copy on the hot path), else a copy. A view keeps the whole frame's buffer
/// alive while budgets count only the data, so a 1-byte write padded to
/// 4 MiB would otherwise hold 4 MiB per write.
fn write_data(payload: &Bytes, data: &[u8]) -> Bytes {
    if data.len() < WRITE_COPIED_BELOW || payload.len() - data.len() > WRITE_VIEW_SLACK {
        Bytes::copy_from_slice(data)
    } else {
        payload.slice_ref(data)
    }
}

impl Request {
    pub fn kind(&self) -> u16 {
        match self {
            Self::Negotiate(_) => 0x0001,
            Self::SessionSetup(_) => 0x0002,
            Self::KeepAlive => 0x0003,
            Self::Logoff => 0x0004,
            Self::Open(_) => 0x0010,
            Self::Read(_) => 0x0011,
            Self::Write(_) => 0x0012,
            Self::Flush(_) => 0x0013,
            Self::Close(_) => 0x0014,
            Self::Stat(_) => 0x0020,
            Self::StatHandle(_) => 0x0021,
            Self::SetInfo(_) => 0x0022,
            Self::ReadDir(_) => 0x0023,
            Self::Mkdir(_) => 0x0024,
            Self::Rename(_) => 0x0025,
            Self::Remove(_) => 0x0026,
            Self::SetPathInfo(_) => 0x0027,
            Self::Symlink(_) => 0x0028,
            Self::ReadLink(_) => 0x0029,
            Self::StatFs => 0x002A,
            Self::Lock(_) => 0x0030,
            Self::Unlock(_) => 0x0031,
            Self::LeaseAck(_) => 0x0032,
            Self::LockRange(_) => 0x0033,
            Self::TestLock(_) => 0x0034,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Negotiate(_) => "negotiate",
            Self::SessionSetup(_) => "session_setup",
            Self::KeepAlive => "keep_alive",
            Self::Logoff => "logoff",
            Self::Open(_) => "open",
            Self::Read(_) => "read",
            Self::Write(_) => "write",
            Self::Flush(_) => "flush",
            Self::Close(_) => "close",
            Self::Stat(_) => "stat",
            Self::StatHandle(_) => "stat_handle",
            Self::SetInfo(_) => "set_info",
            Self::ReadDir(_) => "read_dir",
            Self::Mkdir(_) => "mkdir",
            Self::Rename(_) => "rename",
            Self::Remove(_) => "remove",
            Self::SetPathInfo(_) => "set_path_info",
            Self::Symlink(_) => "symlink",
            Self::ReadLink(_) => "read_link",
            Self::StatFs => "stat_fs",
            Self::Lock(_) => "lock",
            Self::Unlock(_) => "unlock",
            Self::LeaseAck(_) => "lease_ack",
            Self::LockRange(_) => "lock_range",
            Self::TestLock(_) => "test_lock",
        }
    }

    /// True for requests that change state and so must carry a sequence
    /// number. (Writes are positional and flushes idempotent: they are
    /// safe to resend without one.)
    pub fn is_sequenced(&self) -> bool {
        matches!(
            self,
            Self::Open(_)
                | Self::Close(_)
                | Self::SetInfo(_)
                | Self::Mkdir(_)
                | Self::Rename(_)
                | Self::Remove(_)
                | Self::SetPathInfo(_)
                | Self::Symlink(_)
                | Self::Unlock(_)
        )
    }

    /// The whole frame for this request.
    pub fn encode(&self, header: &RequestHeader) -> Result<Vec<u8>, FrameError> {
        let hint = match self {
            Self::Write(w) => w.data.len() + 64,
            _ => 256,
        };
        let mut payload = start_frame(self.kind(), hint);
        put(header, &mut payload);
        match self {
            Self::Negotiate(b) => put(b, &mut payload),
            Self::SessionSetup(b) => put(b, &mut payload),
            Self::KeepAlive | Self::Logoff | Self::StatFs => {}
            Self::Open(b) => put(b, &mut payload),
            Self::Read(b) => put(b, &mut payload),
            Self::Write(b) => put(b, &mut payload),
            Self::Flush(h) | Self::Close(h) | Self::StatHandle(h) => put(h, &mut payload),
            Self::Stat(b) | Self::Remove(b) | Self::ReadLink(b) => put(b, &mut payload),
            Self::SetInfo(b) => put(b, &mut payload),
            Self::ReadDir(b) => put(b, &mut payload),
            Self::Mkdir(b) => put(b, &mut payload),
            Self::Rename(b) => put(b, &mut payload),
            Self::SetPathInfo(b) => put(b, &mut payload),
            Self::Symlink(b) => put(b, &mut payload),
            Self::Lock(b) => put(b, &mut payload),
            Self::Unlock(b) => put(b, &mut payload),
            Self::LeaseAck(b) => put(b, &mut payload),
            Self::LockRange(b) => put(b, &mut payload),
            Self::TestLock(b) => put(b, &mut payload),
        }
        finish_frame(&mut payload)?;
        Ok(payload)
    }

    /// The same bytes as [`Request::encode`], in pieces to send in order:
    /// a write's data goes out as it is, without being copied into a frame.
    pub fn encode_chunks(&self, header: &RequestHeader) -> Result<Vec<Bytes>, FrameError> {
        let Self::Write(w) = self else {
            return Ok(vec![Bytes::from(self.encode(header)?)]);
        };
        // The body's fields in order; the data's length prefix ends it.
        let mut prefix = Vec::with_capacity(64);
        put(header, &mut prefix);
        put(&w.handle, &mut prefix);
        put(&w.offset, &mut prefix);
        put(&(w.data.len() as u64), &mut prefix);
        Ok(encode_frame_around(self.kind(), &prefix, w.data.clone(), &[])?.to_vec())
    }

    pub fn decode(frame: &Frame) -> Result<(RequestHeader, Self), MessageError> {
        let kind = frame.kind;
        let (header, rest): (RequestHeader, _) = body(kind, &frame.payload)?;
        let req = match kind {
            0x0001 => Self::Negotiate(body(kind, rest)?.0),
            0x0002 => Self::SessionSetup(body(kind, rest)?.0),
            0x0003 => Self::KeepAlive,
            0x0004 => Self::Logoff,
            0x0010 => Self::Open(body(kind, rest)?.0),
            0x0011 => Self::Read(body(kind, rest)?.0),
            0x0012 => {
                let w: WriteRef = body(kind, rest)?.0;
                Self::Write(Write {
                    handle: w.handle,
                    offset: w.offset,
                    data: write_data(&frame.payload, w.data),
                })
            }
            0x0013 => Self::Flush(body(kind, rest)?.0),
            0x0014 => Self::Close(body(kind, rest)?.0),
            0x0020 => Self::Stat(body(kind, rest)?.0),
            0x0021 => Self::StatHandle(body(kind, rest)?.0),
            0x0022 => Self::SetInfo(body(kind, rest)?.0),
            0x0023 => Self::ReadDir(body(kind, rest)?.0),
            0x0024 => Self::Mkdir(body(kind, rest)?.0),
            0x0025 => Self::Rename(body(kind, rest)?.0),
            0x0026 => Self::Remove(body(kind, rest)?.0),
            0x0027 => Self::SetPathInfo(body(kind, rest)?.0),
            0x0028 => Self::Symlink(body(kind, rest)?.0),
            0x0029 => Self::ReadLink(body(kind, rest)?.0),
            0x002A => Self::StatFs,
            0x0030 => Self::Lock(body(kind, rest)?.0),
            0x0031 => Self::Unlock(body(kind, rest)?.0),
            0x0032 => Self::LeaseAck(body(kind, rest)?.0),
            0x0033 => Self::LockRange(body(kind, rest)?.0),
            0x0034 => Self::TestLock(body(kind, rest)?.0),
            other => return Err(MessageError::UnknownKind(other)),
        };
        Ok((header, req))
    }
}

impl Response {
    pub fn kind(&self) -> u16 {
        match self {
            Self::Error(_) => 0x8000,
            Self::Negotiated(_) => 0x8001,
            Self::SessionReady(_) => 0x8002,
            Self::Done => 0x8003,
            Self::Opened(_) => 0x8010,
            Self::Data(_) => 0x8011,
            Self::Written(_) => 0x8012,
            Self::Attr(_) => 0x8020,
            Self::DirPage(_) => 0x8023,
            Self::LinkTarget(_) => 0x8029,
            Self::FsStats(_) => 0x802A,
            Self::LockTested(_) => 0x8034,
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Error(ErrorReply {
            code,
            message: message.into(),
        })
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let hint = match self {
            Self::Data(d) => d.data.len() + 64,
            _ => 256,
        };
        let mut payload = start_frame(self.kind(), hint);
        match self {
            Self::Error(b) => put(b, &mut payload),
            Self::Negotiated(b) => {
                put(b, &mut payload);
                put(&b.leader, &mut payload);
            }
            Self::SessionReady(b) => put(b, &mut payload),
            Self::Done => {}
            Self::Opened(b) => put(b, &mut payload),
            Self::Data(b) => put(b, &mut payload),
            Self::Written(b) => put(b, &mut payload),
            Self::Attr(b) => put(b, &mut payload),
            Self::DirPage(b) => put(b, &mut payload),
            Self::LinkTarget(b) => put(b, &mut payload),
            Self::FsStats(b) => put(b, &mut payload),
            Self::LockTested(b) => put(b, &mut payload),
        }
        finish_frame(&mut payload)?;
        Ok(payload)
    }

    /// The same bytes as [`Response::encode`], in pieces to send in order:
    /// a read's data goes out as it is, without being copied into a frame.
    pub fn encode_chunks(&self) -> Result<Vec<Bytes>, FrameError> {
        let Self::Data(d) = self else {
            return Ok(vec![Bytes::from(self.encode()?)]);
        };
        let mut prefix = Vec::with_capacity(16);
        put(&(d.data.len() as u64), &mut prefix);
        let suffix = [u8::from(d.eof)];
        Ok(encode_frame_around(self.kind(), &prefix, d.data.clone(), &suffix)?.to_vec())
    }

    pub fn decode(frame: &Frame) -> Result<Self, MessageError> {
        let kind = frame.kind;
        let p = &frame.payload[..];
        Ok(match kind {
            0x8000 => Self::Error(body(kind, p)?.0),
            0x8001 => Self::Negotiated(negotiated(kind, p)?),
            0x8002 => Self::SessionReady(body(kind, p)?.0),
            0x8003 => Self::Done,
            0x8010 => Self::Opened(body(kind, p)?.0),
            0x8011 => {
                let d: DataRef = body(kind, p)?.0;
                Self::Data(Data {
                    data: frame.payload.slice_ref(d.data),
                    eof: d.eof,
                })
            }
            0x8012 => Self::Written(body(kind, p)?.0),
            0x8020 => Self::Attr(body(kind, p)?.0),
            0x8023 => Self::DirPage(body(kind, p)?.0),
            0x8029 => Self::LinkTarget(body(kind, p)?.0),
            0x802A => Self::FsStats(body(kind, p)?.0),
            0x8034 => Self::LockTested(body(kind, p)?.0),
            other => return Err(MessageError::UnknownKind(other)),
        })
    }
}

#[cfg(test)]
mod tests;
