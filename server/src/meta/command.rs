//! Metadata mutations as values.
//!
//! Every change to the namespace is a [`Command`] applied by one deterministic
//! function (`apply`). A command carries every input that is not in the store
//! (the time, the client's preconditions), so applying the same sequence of
//! commands to the same state always gives the same state: that is what lets
//! the command log be replicated.

use cairn_proto::wire::{Disposition, HandleId, LockKind, SessionId};
use cairn_proto::{ContentHash, FilePath, InodeId, ShareName};
use serde::{Deserialize, Serialize};

use super::records::{Access, FileData};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates a share with an empty root directory.
    CreateShare { share: ShareName, now_ns: i64 },
    /// Adds or replaces a bearer token (stored by its BLAKE3).
    PutToken {
        token_hash: ContentHash,
        share: ShareName,
        access: Access,
    },
    /// Revokes a bearer token.
    DeleteToken { token_hash: ContentHash },
    /// Creates or replaces a file, creating missing parent directories.
    PutFile {
        share: ShareName,
        path: FilePath,
        file: FileData,
        mode: u32,
        now_ns: i64,
        precondition: Precondition,
    },
    /// Creates a directory, creating missing parents.
    Mkdir {
        share: ShareName,
        path: FilePath,
        mode: u32,
        now_ns: i64,
    },
    /// Removes a file or an empty directory.
    Remove {
        share: ShareName,
        path: FilePath,
        now_ns: i64,
        precondition: Precondition,
    },
    /// Moves a file or directory, creating missing parents of `to`.
    Rename {
        share: ShareName,
        from: FilePath,
        to: FilePath,
        /// Replace what is at `to` (a file, or an empty directory when moving
        /// a directory), as POSIX rename(2) does.
        replace: bool,
        now_ns: i64,
    },
    /// Drops chunk records whose count is still zero, after GC deleted them.
    ForgetChunks { hashes: Vec<ContentHash> },
    // --- native protocol: sessions and durable handles. (New variants go
    // at the end: the log stores a variant's position.)
    /// Creates a session, or renews it if it exists: setting up the same
    /// session twice (a retry) is the same as once.
    OpenSession {
        session: SessionId,
        share: ShareName,
        writable: bool,
        now_ns: i64,
    },
    /// Sessions some node has a live connection for.
    RenewSessions {
        sessions: Vec<SessionId>,
        now_ns: i64,
    },
    /// Ends sessions not renewed for `timeout_ns`, closing their handles.
    ExpireSessions { now_ns: i64, timeout_ns: i64 },
    /// Ends a session (logoff), closing its handles.
    CloseSession { session: SessionId, now_ns: i64 },
    /// A session's mutating request: applied once; a second copy with the
    /// same sequence number gets the first one's result.
    Sequenced {
        session: SessionId,
        seq: u64,
        cmd: Box<Command>,
    },
    /// Opens (perhaps creates or truncates) a file, making a handle.
    OpenFile(OpenFile),
    /// Replaces an open file's content (flush, truncate), if it is still
    /// `base`: writers on other nodes are not overwritten unseen.
    SetContent {
        handle: HandleId,
        base: ContentHash,
        file: FileData,
        now_ns: i64,
    },
    /// Changes an open file's mode or modification time.
    SetAttr {
        handle: HandleId,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
        now_ns: i64,
    },
    /// Closes a handle. `settle` = (provisional, real): the file's ETag
    /// becomes the BLAKE3 of its content if it is still the provisional
    /// one its writer's flush gave it.
    CloseHandle {
        handle: HandleId,
        settle: Option<(ContentHash, ContentHash)>,
        now_ns: i64,
    },
    /// Takes a byte-range lock for a handle (again: a no-op).
    Lock {
        handle: HandleId,
        offset: u64,
        len: u64,
        exclusive: bool,
    },
    /// Releases the handle's lock with exactly this range.
    Unlock {
        handle: HandleId,
        offset: u64,
        len: u64,
    },
    /// Asks the holders of leases on `inode` that an open of `access` by
    /// `session` conflicts with to give them up (records the breaks).
    BreakLeases {
        inode: InodeId,
        session: SessionId,
        access: u8,
    },
    /// A holder acknowledges a break: its handle keeps at most `lease`.
    AckLease { handle: HandleId, lease: u8 },
    /// Sets the mode and/or modification time of what `path` names.
    SetPathAttr {
        share: ShareName,
        path: FilePath,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
        now_ns: i64,
    },
    /// Makes a symbolic link at `path` (whose parent must exist) standing
    /// for `target`.
    Symlink {
        share: ShareName,
        path: FilePath,
        target: String,
        now_ns: i64,
    },
    /// Several commands in one log entry (the leader's group commit):
    /// applied in order, each with its own result, exactly as if each had
    /// an entry of its own. Never nested.
    Batch(Vec<Command>),
    /// A node took `session` over on a new connection (a resume), under
    /// `binding`, a number no earlier binding of the session had; renews
    /// it. What nodes do under an earlier binding is fenced off from now
    /// on (see [`Command::Fenced`]).
    ///
    /// Only over `previous`, the binding the node read before: of two
    /// resumes racing (a client gave up on a slow one and went
    /// elsewhere), the one that commits second must not replace the
    /// first's binding, or the connection the client uses is fenced off.
    BindSession {
        session: SessionId,
        previous: u64,
        binding: u64,
        now_ns: i64,
    },
    /// `cmd`, if `session` is still under `binding` (0 for the binding it
    /// was set up with). A node that lost the session to a resume
    /// elsewhere, its flush still being committed, must not lay the
    /// writes it held over what the client wrote through the new node
    /// since (the client sent those writes again there anyway).
    ///
    /// `appends` are where the appends among the flushed writes went: a
    /// client that never got an append's answer sends it again, with its
    /// sequence number, perhaps to another node, which must answer it
    /// from here instead of appending it again.
    Fenced {
        session: SessionId,
        binding: u64,
        cmd: Box<Command>,
        appends: Vec<AppendPlaced>,
    },
    /// The ETag of `inode` becomes `real` (the BLAKE3 of its content) if
    /// it is still `provisional`, a chunk list's hash a native flush gave
    /// it; its mark as unsettled goes if it still names `provisional`.
    /// For files no closing writer settled (a session that logged off or
    /// expired with the file open).
    SettleEtag {
        inode: InodeId,
        provisional: ContentHash,
        real: ContentHash,
    },
    /// Sets what `owner` holds through `handle` on a range, POSIX style
    /// (see `meta::locks`). Again with the same arguments: a no-op.
    LockRange {
        handle: HandleId,
        owner: u64,
        offset: u64,
        len: u64,
        kind: LockKind,
    },
}

/// Where an append went (see [`Command::Fenced`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendPlaced {
    /// The sequence number the append came with.
    pub seq: u64,
    pub offset: u64,
    /// The file's size after it, as the node answered.
    pub size: u64,
}

impl Command {
    /// The open handle a session command acts on: a session may only act
    /// on its own.
    pub fn handle(&self) -> Option<HandleId> {
        match self {
            Self::SetContent { handle, .. }
            | Self::SetAttr { handle, .. }
            | Self::CloseHandle { handle, .. }
            | Self::Lock { handle, .. }
            | Self::Unlock { handle, .. }
            | Self::LockRange { handle, .. } => Some(*handle),
            _ => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::CreateShare { .. } => "create_share",
            Self::PutToken { .. } => "put_token",
            Self::DeleteToken { .. } => "delete_token",
            Self::PutFile { .. } => "put_file",
            Self::Mkdir { .. } => "mkdir",
            Self::Remove { .. } => "remove",
            Self::Rename { .. } => "rename",
            Self::ForgetChunks { .. } => "forget_chunks",
            Self::OpenSession { .. } => "open_session",
            Self::RenewSessions { .. } => "renew_sessions",
            Self::ExpireSessions { .. } => "expire_sessions",
            Self::CloseSession { .. } => "close_session",
            Self::Sequenced { cmd, .. } | Self::Fenced { cmd, .. } => cmd.kind(),
            Self::BindSession { .. } => "bind_session",
            Self::OpenFile(_) => "open_file",
            Self::SetContent { .. } => "set_content",
            Self::SetAttr { .. } => "set_attr",
            Self::CloseHandle { .. } => "close_handle",
            Self::Lock { .. } => "lock",
            Self::Unlock { .. } => "unlock",
            Self::BreakLeases { .. } => "break_leases",
            Self::AckLease { .. } => "ack_lease",
            Self::SetPathAttr { .. } => "set_path_attr",
            Self::Symlink { .. } => "symlink",
            Self::Batch(_) => "batch",
            Self::SettleEtag { .. } => "settle_etag",
            Self::LockRange { .. } => "lock_range",
        }
    }
}

/// What [`Command::OpenFile`] carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    pub session: SessionId,
    pub share: ShareName,
    pub path: FilePath,
    pub disposition: Disposition,
    pub access: u8,
    pub share_access: u8,
    pub flags: u8,
    pub mode: u32,
    pub now_ns: i64,
    /// The lease wanted (`wire::lease` bits).
    pub lease: u8,
    /// Take conflicting leases away without waiting for their holders (the
    /// break timeout passed).
    pub force: bool,
}

/// A set of ETags in a conditional request: `*` or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagSet {
    Any,
    Tags(Vec<ContentHash>),
}

impl TagSet {
    fn matches(&self, current: Option<Option<ContentHash>>) -> bool {
        match (self, current) {
            (TagSet::Any, cur) => cur.is_some(),
            (TagSet::Tags(tags), Some(Some(tag))) => tags.contains(&tag),
            (TagSet::Tags(_), _) => false,
        }
    }
}

/// `If-Match` / `If-None-Match`, checked atomically with the change.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub if_match: Option<TagSet>,
    pub if_none_match: Option<TagSet>,
}

impl Precondition {
    /// `current` is `None` when nothing exists at the path, `Some(None)` for
    /// a directory (which has no ETag) and `Some(Some(tag))` for a file.
    pub fn holds(&self, current: Option<Option<ContentHash>>) -> bool {
        self.holds_if_match(current) && self.holds_if_none_match(current)
    }

    pub fn holds_if_match(&self, current: Option<Option<ContentHash>>) -> bool {
        self.if_match.as_ref().is_none_or(|s| s.matches(current))
    }

    pub fn holds_if_none_match(&self, current: Option<Option<ContentHash>>) -> bool {
        self.if_none_match
            .as_ref()
            .is_none_or(|s| !s.matches(current))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::records::{Content, decode, encode};
    use proptest::prelude::*;

    fn path_strategy() -> impl Strategy<Value = FilePath> {
        proptest::collection::vec("[a-z0-9 ._-]{1,12}", 0..4)
            .prop_filter_map("dot segments", |v| FilePath::parse(&v.join("/")).ok())
    }

    fn command_strategy() -> impl Strategy<Value = Command> {
        let share = || Just(ShareName::parse("s").expect("valid share"));
        let tags = proptest::option::of(prop_oneof![
            Just(TagSet::Any),
            proptest::collection::vec(any::<[u8; 32]>().prop_map(ContentHash), 0..3)
                .prop_map(TagSet::Tags),
        ]);
        prop_oneof![
            (share(), any::<i64>())
                .prop_map(|(share, now_ns)| Command::CreateShare { share, now_ns }),
            (
                share(),
                path_strategy(),
                proptest::collection::vec(any::<u8>(), 0..64),
                any::<u32>(),
                any::<i64>(),
                tags.clone(),
                tags
            )
                .prop_map(
                    |(share, path, data, mode, now_ns, if_match, if_none_match)| Command::PutFile {
                        share,
                        path,
                        file: FileData {
                            size: data.len() as u64,
                            etag: ContentHash::of(&data),
                            content_type: Some("application/octet-stream".into()),
                            content: Content::Inline(data),
                        },
                        mode,
                        now_ns,
                        precondition: Precondition {
                            if_match,
                            if_none_match
                        },
                    }
                ),
            (
                share(),
                path_strategy(),
                path_strategy(),
                any::<bool>(),
                any::<i64>()
            )
                .prop_map(|(share, from, to, replace, now_ns)| Command::Rename {
                    share,
                    from,
                    to,
                    replace,
                    now_ns
                }),
            proptest::collection::vec(any::<[u8; 32]>().prop_map(ContentHash), 0..5)
                .prop_map(|hashes| Command::ForgetChunks { hashes }),
        ]
    }

    proptest! {
        /// Commands will be the replicated log's entries: they must survive
        /// the versioned encoding unchanged, and garbage must not decode
        /// into a panic.
        #[test]
        fn command_encoding_round_trips(cmd in command_strategy()) {
            prop_assert_eq!(decode::<Command>(&encode(&cmd)).unwrap(), cmd);
        }

        #[test]
        fn decoding_garbage_commands_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode::<Command>(&bytes);
        }
    }

    #[test]
    fn preconditions() {
        let a = ContentHash::of(b"a");
        let b = ContentHash::of(b"b");
        let create_only = Precondition {
            if_none_match: Some(TagSet::Any),
            ..Default::default()
        };
        assert!(create_only.holds(None));
        assert!(!create_only.holds(Some(Some(a))));
        assert!(!create_only.holds(Some(None)));
        let if_a = Precondition {
            if_match: Some(TagSet::Tags(vec![a])),
            ..Default::default()
        };
        assert!(if_a.holds(Some(Some(a))));
        assert!(!if_a.holds(Some(Some(b))));
        assert!(!if_a.holds(None));
        let must_exist = Precondition {
            if_match: Some(TagSet::Any),
            ..Default::default()
        };
        assert!(must_exist.holds(Some(Some(b))));
        assert!(!must_exist.holds(None));
        let not_b = Precondition {
            if_none_match: Some(TagSet::Tags(vec![b])),
            ..Default::default()
        };
        assert!(not_b.holds(None) && not_b.holds(Some(Some(a))) && !not_b.holds(Some(Some(b))));
        assert!(Precondition::default().holds(None));
    }
}
