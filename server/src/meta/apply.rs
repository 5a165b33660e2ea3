//! The one function that changes metadata: [`apply`].
//!
//! It reads through a [`KvRead`] and records its writes in an [`Overlay`]; the
//! caller keeps the writes only if the command succeeded, so a failed command
//! changes nothing. It must stay deterministic: no clock, no randomness, no
//! I/O besides the reads it is given.

use cairn_proto::api::EntryKind;
use cairn_proto::{ContentHash, ErrorCode, FilePath, InodeId, ShareName};

use super::command::{Command, Precondition};
use super::keys;
use super::overlay::{KvRead, Overlay};
use super::records::{
    ChunkRecord, ChunkRef, Content, DirEntry, FileData, Inode, ShareRecord, TokenRecord, decode,
    encode,
};
use super::store::StoreError;

/// Default permission bits of directories created implicitly.
pub const DIR_MODE_DEFAULT: u32 = 0o755;

/// A command that was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MetaError {
    #[error("share '{0}' does not exist")]
    NoSuchShare(String),
    #[error("'{0}' does not exist")]
    NotFound(String),
    #[error("'{0}' already exists")]
    AlreadyExists(String),
    #[error("directory '{0}' is not empty")]
    NotEmpty(String),
    #[error("'{0}' is a directory")]
    IsDirectory(String),
    #[error("'{0}' is not a directory")]
    NotDirectory(String),
    #[error("precondition failed for '{0}'")]
    PreconditionFailed(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NoSession(String),
    #[error("handle {0} is not open")]
    StaleHandle(String),
    #[error("'{0}' is open by another handle that does not share this access")]
    SharingViolation(String),
    #[error("{0}")]
    LockConflict(String),
    /// Other sessions' leases must be broken first; never remembered in
    /// the replay table, so the open is tried again once they are.
    #[error("'{0}' is leased by other sessions")]
    LeasesHeld(String),
    #[error("'{0}' is a symbolic link")]
    IsSymlink(String),
    #[error("{0}")]
    TooMany(String),
}

impl MetaError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NoSuchShare(_) | Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::NotEmpty(_) => ErrorCode::NotEmpty,
            Self::IsDirectory(_) => ErrorCode::IsDirectory,
            Self::NotDirectory(_) => ErrorCode::NotDirectory,
            Self::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            Self::Invalid(_) => ErrorCode::InvalidPath,
            Self::Forbidden(_) => ErrorCode::Forbidden,
            Self::NoSession(_) => ErrorCode::NoSession,
            Self::StaleHandle(_) => ErrorCode::StaleHandle,
            Self::SharingViolation(_) => ErrorCode::SharingViolation,
            Self::LockConflict(_) => ErrorCode::LockConflict,
            Self::LeasesHeld(_) => ErrorCode::Unavailable,
            Self::IsSymlink(_) => ErrorCode::IsSymlink,
            Self::TooMany(_) => ErrorCode::TooMany,
        }
    }
}

/// Why `apply` stopped: the command was refused, or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a successful command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Applied {
    /// True if the command made a new entry rather than replacing one.
    pub created: bool,
    /// ETag and size of the file the command left at its target (renames).
    pub etag: Option<ContentHash>,
    pub size: u64,
    /// The handle an open made, and the file it opened.
    pub handle: Option<u64>,
    pub inode: Option<InodeId>,
    /// The lease an open granted.
    pub lease: u8,
    /// The opened file's attributes as the command left them, so the node
    /// that answers needs no read of its own (it may not have applied
    /// the command yet).
    pub mode: u32,
    pub nlink: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Applied {
    pub fn nothing() -> Self {
        Self {
            created: false,
            etag: None,
            size: 0,
            handle: None,
            inode: None,
            lease: 0,
            mode: 0,
            nlink: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        }
    }
}

/// Applies `cmd`, recording its writes in `tx`.
pub fn apply<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    cmd: &Command,
) -> Result<Applied, ApplyError> {
    match cmd {
        Command::CreateShare { share, now_ns } => create_share(tx, share, *now_ns),
        Command::PutToken {
            token_hash,
            share,
            access,
        } => {
            load_share(tx, share)?;
            let rec = TokenRecord {
                share: share.clone(),
                access: *access,
            };
            tx.put(keys::token(token_hash), encode(&rec));
            Ok(Applied::nothing())
        }
        Command::DeleteToken { token_hash } => {
            tx.delete(keys::token(token_hash));
            Ok(Applied::nothing())
        }
        Command::PutFile {
            share,
            path,
            file,
            mode,
            now_ns,
            precondition,
        } => put_file(tx, share, path, file, *mode, *now_ns, precondition),
        Command::Mkdir {
            share,
            path,
            mode,
            now_ns,
        } => mkdir(tx, share, path, *mode, *now_ns),
        Command::Remove {
            share,
            path,
            now_ns,
            precondition,
        } => remove(tx, share, path, *now_ns, precondition),
        Command::Rename {
            share,
            from,
            to,
            replace,
            now_ns,
        } => rename(tx, share, from, to, *replace, *now_ns),
        Command::Batch(_) => {
            // The state machine unpacks a batch entry into its commands.
            Err(MetaError::Invalid("a batch is never nested in another command".into()).into())
        }
        Command::Sequenced { .. } => {
            // Its result must be kept even when it is a refusal, which only
            // `sessions::apply_logged` can do.
            Err(MetaError::Invalid("sequenced commands go through apply_logged".into()).into())
        }
        Command::OpenSession { .. }
        | Command::RenewSessions { .. }
        | Command::ExpireSessions { .. }
        | Command::CloseSession { .. }
        | Command::OpenFile(_)
        | Command::SetContent { .. }
        | Command::SetAttr { .. }
        | Command::CloseHandle { .. }
        | Command::Lock { .. }
        | Command::Unlock { .. }
        | Command::LockRange { .. }
        | Command::BindSession { .. }
        | Command::Fenced { .. } => super::sessions::apply_session_command(tx, cmd),
        Command::SettleEtag {
            inode,
            provisional,
            real,
        } => super::settle::settle(tx, *inode, provisional, real),
        Command::BreakLeases { .. } | Command::AckLease { .. } => {
            super::leases::apply_lease_command(tx, cmd)
        }
        Command::SetPathAttr {
            share,
            path,
            mode,
            mtime_ns,
            now_ns,
        } => set_path_attr(tx, share, path, *mode, *mtime_ns, *now_ns),
        Command::Symlink {
            share,
            path,
            target,
            now_ns,
        } => symlink(tx, share, path, target, *now_ns),
        Command::ForgetChunks { hashes } => {
            for hash in hashes {
                let key = keys::chunk(hash);
                if let Some(rec) = get::<ChunkRecord, _>(tx, &key)?
                    && rec.refs == 0
                {
                    tx.delete(key);
                }
            }
            Ok(Applied::nothing())
        }
    }
}

fn create_share<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let key = keys::share(share);
    if tx.get(&key)?.is_some() {
        return Err(MetaError::AlreadyExists(share.to_string()).into());
    }
    let root = allocate_inode(tx)?;
    let inode = new_dir(root, DIR_MODE_DEFAULT, now_ns);
    tx.put(keys::inode(root), encode(&inode));
    tx.put(
        key,
        encode(&ShareRecord {
            root,
            created_ns: now_ns,
        }),
    );
    Ok(Applied {
        created: true,
        ..Applied::nothing()
    })
}

fn put_file<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    path: &FilePath,
    file: &FileData,
    mode: u32,
    now_ns: i64,
    precondition: &Precondition,
) -> Result<Applied, ApplyError> {
    let Some((parent_path, name)) = path.split_last() else {
        return Err(MetaError::IsDirectory(path.to_string()).into());
    };
    let root = load_share(tx, share)?.root;
    let existing = match resolve_dir(tx, root, &parent_path)? {
        Some(parent) => lookup(tx, parent, name)?.map(|e| (parent, e)),
        None => None,
    };
    let current = match existing {
        Some((_, entry)) => Some(load_inode(tx, entry.inode)?),
        None => None,
    };
    if !precondition.holds(current.as_ref().map(Inode::etag)) {
        return Err(MetaError::PreconditionFailed(path.to_string()).into());
    }
    if current.as_ref().is_some_and(Inode::is_dir) {
        return Err(MetaError::IsDirectory(path.to_string()).into());
    }
    let parent = resolve_or_create_dir(tx, root, &parent_path, now_ns)?;
    if let Some((_, old)) = existing {
        drop_inode(tx, old.inode, now_ns)?;
    }
    for chunk in file.content.chunks() {
        add_chunk_ref(tx, chunk)?;
    }
    let inode = Inode {
        kind: EntryKind::File,
        mode,
        nlink: 1,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        parent,
        file: Some(file.clone()),
    };
    add_inode(tx, parent, name, &inode, now_ns)?;
    Ok(Applied {
        created: existing.is_none(),
        ..Applied::nothing()
    })
}

fn mkdir<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    path: &FilePath,
    mode: u32,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let root = load_share(tx, share)?.root;
    let Some((parent_path, name)) = path.split_last() else {
        return Err(MetaError::AlreadyExists(path.to_string()).into());
    };
    let parent = resolve_or_create_dir(tx, root, &parent_path, now_ns)?;
    if lookup(tx, parent, name)?.is_some() {
        return Err(MetaError::AlreadyExists(path.to_string()).into());
    }
    create_dir(tx, parent, name, mode, now_ns)?;
    Ok(Applied {
        created: true,
        ..Applied::nothing()
    })
}

/// Longest symbolic link target, in bytes (Linux's PATH_MAX less the NUL).
pub const SYMLINK_TARGET_MAX: usize = 4095;

/// Refuses a link target no file system would store. Checked again by the
/// request paths before commit, so a bad one never reaches the log.
pub fn check_link_target(target: &str) -> Result<(), MetaError> {
    if target.is_empty() || target.len() > SYMLINK_TARGET_MAX || target.contains('\0') {
        return Err(MetaError::Invalid(format!(
            "a link target must be 1 to {SYMLINK_TARGET_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

fn symlink<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    path: &FilePath,
    target: &str,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    check_link_target(target)?;
    let root = load_share(tx, share)?.root;
    let Some((parent_path, name)) = path.split_last() else {
        return Err(MetaError::AlreadyExists(path.to_string()).into());
    };
    let parent = resolve_dir(tx, root, &parent_path)?
        .ok_or_else(|| MetaError::NotFound(parent_path.to_string()))?;
    if lookup(tx, parent, name)?.is_some() {
        return Err(MetaError::AlreadyExists(path.to_string()).into());
    }
    // The target is the link's content, as POSIX has it: its size is the
    // target's length and nothing else needs a place to live.
    let bytes = target.as_bytes().to_vec();
    let inode = Inode {
        kind: EntryKind::Symlink,
        mode: 0o777,
        nlink: 1,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        parent,
        file: Some(FileData {
            size: bytes.len() as u64,
            etag: ContentHash::of(&bytes),
            content_type: None,
            content: Content::Inline(bytes),
        }),
    };
    let id = add_inode(tx, parent, name, &inode, now_ns)?;
    Ok(Applied {
        created: true,
        inode: Some(id),
        ..Applied::nothing()
    })
}

fn remove<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    path: &FilePath,
    now_ns: i64,
    precondition: &Precondition,
) -> Result<Applied, ApplyError> {
    let root = load_share(tx, share)?.root;
    let Some((parent_path, name)) = path.split_last() else {
        return Err(MetaError::Invalid("the root of a share cannot be removed".into()).into());
    };
    let (parent, entry) = resolve_entry(tx, root, &parent_path, name, path)?;
    let inode = load_inode(tx, entry.inode)?;
    if !precondition.holds(Some(inode.etag())) {
        return Err(MetaError::PreconditionFailed(path.to_string()).into());
    }
    if inode.is_dir() && has_entries(tx, entry.inode)? {
        return Err(MetaError::NotEmpty(path.to_string()).into());
    }
    unlink(tx, parent, name, entry, now_ns)?;
    drop_inode(tx, entry.inode, now_ns)?;
    Ok(Applied {
        created: false,
        ..Applied::nothing()
    })
}

fn rename<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    from: &FilePath,
    to: &FilePath,
    replace: bool,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let root = load_share(tx, share)?.root;
    let (Some((from_parent_path, from_name)), Some((to_parent_path, to_name))) =
        (from.split_last(), to.split_last())
    else {
        return Err(MetaError::Invalid("the root of a share cannot be renamed".into()).into());
    };
    let (from_parent, entry) = resolve_entry(tx, root, &from_parent_path, from_name, from)?;
    if from == to {
        let inode = load_inode(tx, entry.inode)?;
        return Ok(Applied {
            created: false,
            etag: inode.etag(),
            size: inode.size(),
            ..Applied::nothing()
        });
    }
    if entry.kind == EntryKind::Directory && to.starts_with(from) {
        return Err(MetaError::Invalid(format!("cannot move '{from}' into itself")).into());
    }
    let to_parent = resolve_or_create_dir(tx, root, &to_parent_path, now_ns)?;
    let target = lookup(tx, to_parent, to_name)?;
    if let Some(old) = target {
        check_replaceable(tx, entry, old, replace, to)?;
        unlink(tx, to_parent, to_name, old, now_ns)?;
        drop_inode(tx, old.inode, now_ns)?;
    }
    unlink(tx, from_parent, from_name, entry, now_ns)?;
    link(tx, to_parent, to_name, entry, now_ns)?;
    let mut inode = load_inode(tx, entry.inode)?;
    inode.parent = to_parent;
    inode.ctime_ns = now_ns;
    tx.put(keys::inode(entry.inode), encode(&inode));
    Ok(Applied {
        created: target.is_none(),
        etag: inode.etag(),
        size: inode.size(),
        ..Applied::nothing()
    })
}

/// rename(2)'s rules for what may be replaced.
fn set_path_attr<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    share: &ShareName,
    path: &FilePath,
    mode: Option<u32>,
    mtime_ns: Option<i64>,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let root = load_share(tx, share)?.root;
    let id = match path.split_last() {
        None => root,
        Some((parent_path, name)) => {
            let not_found = || MetaError::NotFound(path.to_string());
            let parent = resolve_dir(tx, root, &parent_path)?.ok_or_else(not_found)?;
            lookup(tx, parent, name)?.ok_or_else(not_found)?.inode
        }
    };
    let mut inode = load_inode(tx, id)?;
    if let Some(m) = mode {
        inode.mode = m & 0o7777;
    }
    if let Some(t) = mtime_ns {
        inode.mtime_ns = t;
    }
    inode.ctime_ns = now_ns;
    tx.put(keys::inode(id), encode(&inode));
    Ok(Applied {
        inode: Some(id),
        ..Applied::nothing()
    })
}

fn check_replaceable<R: KvRead + ?Sized>(
    tx: &Overlay<'_, R>,
    moving: DirEntry,
    old: DirEntry,
    replace: bool,
    to: &FilePath,
) -> Result<(), ApplyError> {
    let to = to.to_string();
    if !replace {
        return Err(MetaError::AlreadyExists(to).into());
    }
    match (moving.kind, old.kind) {
        (EntryKind::File | EntryKind::Symlink, EntryKind::Directory) => {
            Err(MetaError::IsDirectory(to).into())
        }
        (EntryKind::Directory, EntryKind::File | EntryKind::Symlink) => {
            Err(MetaError::NotDirectory(to).into())
        }
        (EntryKind::Directory, EntryKind::Directory) if has_entries(tx, old.inode)? => {
            Err(MetaError::NotEmpty(to).into())
        }
        _ => Ok(()),
    }
}

// --- lookups -------------------------------------------------------------

/// Reads and decodes one record.
pub(super) fn get<T: serde::de::DeserializeOwned, R: KvRead + ?Sized>(
    tx: &R,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match tx.get(key)? {
        Some(bytes) => Ok(Some(
            decode(&bytes).map_err(|e| StoreError::corrupt(key, e))?,
        )),
        None => Ok(None),
    }
}

pub(super) fn load_share<R: KvRead + ?Sized>(
    tx: &R,
    share: &ShareName,
) -> Result<ShareRecord, ApplyError> {
    get(tx, &keys::share(share))?.ok_or_else(|| MetaError::NoSuchShare(share.to_string()).into())
}

/// An inode that a directory entry points at must exist.
pub fn load_inode<R: KvRead + ?Sized>(tx: &R, id: InodeId) -> Result<Inode, StoreError> {
    let key = keys::inode(id);
    get(tx, &key)?.ok_or(StoreError::Dangling(id))
}

pub(super) fn lookup<R: KvRead + ?Sized>(
    tx: &R,
    dir: InodeId,
    name: &str,
) -> Result<Option<DirEntry>, StoreError> {
    get(tx, &keys::dir_entry(dir, name))
}

/// Walks `path` from `root`. `None` if a directory on the way is missing;
/// `NotDirectory` if a file is in the way.
pub(super) fn resolve_dir<R: KvRead + ?Sized>(
    tx: &R,
    root: InodeId,
    path: &FilePath,
) -> Result<Option<InodeId>, ApplyError> {
    let mut dir = root;
    for name in path.segments() {
        match lookup(tx, dir, name)? {
            Some(DirEntry {
                inode,
                kind: EntryKind::Directory,
            }) => dir = inode,
            Some(_) => return Err(MetaError::NotDirectory(path.to_string()).into()),
            None => return Ok(None),
        }
    }
    Ok(Some(dir))
}

fn resolve_entry<R: KvRead + ?Sized>(
    tx: &R,
    root: InodeId,
    parent_path: &FilePath,
    name: &str,
    full: &FilePath,
) -> Result<(InodeId, DirEntry), ApplyError> {
    let not_found = || MetaError::NotFound(full.to_string());
    let parent = resolve_dir(tx, root, parent_path)?.ok_or_else(not_found)?;
    let entry = lookup(tx, parent, name)?.ok_or_else(not_found)?;
    Ok((parent, entry))
}

fn has_entries<R: KvRead + ?Sized>(tx: &R, dir: InodeId) -> Result<bool, StoreError> {
    let prefix = keys::dir_prefix(dir);
    Ok(tx
        .first_key_in(&prefix, &keys::prefix_end(&prefix))?
        .is_some())
}

// --- changes -------------------------------------------------------------

pub(super) fn allocate_inode<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
) -> Result<InodeId, StoreError> {
    let next = get::<u64, _>(tx, keys::NEXT_INODE)?.unwrap_or(1);
    let following = next.checked_add(1).ok_or(StoreError::InodesExhausted)?;
    tx.put(keys::NEXT_INODE.to_vec(), encode(&following));
    Ok(InodeId(next))
}

fn new_dir(parent: InodeId, mode: u32, now_ns: i64) -> Inode {
    Inode {
        kind: EntryKind::Directory,
        mode,
        nlink: 2,
        mtime_ns: now_ns,
        ctime_ns: now_ns,
        parent,
        file: None,
    }
}

fn create_dir<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    parent: InodeId,
    name: &str,
    mode: u32,
    now_ns: i64,
) -> Result<InodeId, StoreError> {
    add_inode(tx, parent, name, &new_dir(parent, mode, now_ns), now_ns)
}

/// Like `mkdir -p`: walks `path`, creating the directories that are missing.
pub(super) fn resolve_or_create_dir<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    root: InodeId,
    path: &FilePath,
    now_ns: i64,
) -> Result<InodeId, ApplyError> {
    let mut dir = root;
    for name in path.segments() {
        dir = match lookup(tx, dir, name)? {
            Some(DirEntry {
                inode,
                kind: EntryKind::Directory,
            }) => inode,
            Some(_) => return Err(MetaError::NotDirectory(path.to_string()).into()),
            None => create_dir(tx, dir, name, DIR_MODE_DEFAULT, now_ns)?,
        };
    }
    Ok(dir)
}

/// Stores `inode` under a new inode number and names it `name` in `parent`.
pub(super) fn add_inode<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    parent: InodeId,
    name: &str,
    inode: &Inode,
    now_ns: i64,
) -> Result<InodeId, StoreError> {
    let id = allocate_inode(tx)?;
    tx.put(keys::inode(id), encode(inode));
    let entry = DirEntry {
        inode: id,
        kind: inode.kind,
    };
    link(tx, parent, name, entry, now_ns)?;
    Ok(id)
}

/// Adds `name -> entry` to `dir`, keeping the directory's times and link
/// count (2 + subdirectories) right.
fn link<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    dir: InodeId,
    name: &str,
    entry: DirEntry,
    now_ns: i64,
) -> Result<(), StoreError> {
    tx.put(keys::dir_entry(dir, name), encode(&entry));
    touch_dir(tx, dir, now_ns, subdir_count(entry))
}

/// Removes `name` from `dir`; the inverse of [`link`].
pub(super) fn unlink<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    dir: InodeId,
    name: &str,
    entry: DirEntry,
    now_ns: i64,
) -> Result<(), StoreError> {
    tx.delete(keys::dir_entry(dir, name));
    touch_dir(tx, dir, now_ns, -subdir_count(entry))
}

/// What an entry adds to its directory's link count.
fn subdir_count(entry: DirEntry) -> i32 {
    i32::from(entry.kind == EntryKind::Directory)
}

fn touch_dir<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    dir: InodeId,
    now_ns: i64,
    nlink_delta: i32,
) -> Result<(), StoreError> {
    let mut inode = load_inode(tx, dir)?;
    inode.mtime_ns = now_ns;
    inode.ctime_ns = now_ns;
    inode.nlink = inode.nlink.saturating_add_signed(nlink_delta);
    tx.put(keys::inode(dir), encode(&inode));
    Ok(())
}

/// Deletes an inode that no entry names any more, releasing its chunks.
pub(super) fn drop_inode<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    id: InodeId,
    now_ns: i64,
) -> Result<(), StoreError> {
    let mut inode = load_inode(tx, id)?;
    if super::sessions::is_open(tx, id)? {
        // Unlinked while open: the handles keep reading it; the last close
        // drops it for real.
        inode.nlink = 0;
        inode.ctime_ns = now_ns;
        tx.put(keys::inode(id), encode(&inode));
        return Ok(());
    }
    if let Some(file) = &inode.file {
        for chunk in file.content.chunks() {
            release_chunk_ref(tx, &chunk.hash, now_ns)?;
        }
    }
    tx.delete(keys::inode(id));
    tx.delete(keys::unsettled(id));
    Ok(())
}

pub(super) fn add_chunk_ref<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    chunk: &ChunkRef,
) -> Result<(), StoreError> {
    let key = keys::chunk(&chunk.hash);
    let mut rec = get::<ChunkRecord, _>(tx, &key)?.unwrap_or(ChunkRecord {
        refs: 0,
        unreferenced_since_ns: 0,
    });
    rec.refs += 1;
    rec.unreferenced_since_ns = 0;
    tx.put(key, encode(&rec));
    Ok(())
}

pub(super) fn release_chunk_ref<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    hash: &ContentHash,
    now_ns: i64,
) -> Result<(), StoreError> {
    let key = keys::chunk(hash);
    let Some(mut rec) = get::<ChunkRecord, _>(tx, &key)? else {
        return Err(StoreError::Invariant(format!(
            "chunk {hash} released but has no record"
        )));
    };
    if rec.refs == 0 {
        return Err(StoreError::Invariant(format!(
            "chunk {hash} released below zero"
        )));
    }
    rec.refs -= 1;
    if rec.refs == 0 {
        rec.unreferenced_since_ns = now_ns;
    }
    tx.put(key, encode(&rec));
    Ok(())
}
