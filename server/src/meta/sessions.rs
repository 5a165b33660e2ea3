//! Native-protocol sessions, durable handles and the replay table, as
//! metadata: every node applies the same commands, so any node can resume a
//! session whose connection was lost, and a retried request is answered
//! from the table instead of being applied twice.

use cairn_proto::api::EntryKind;
use cairn_proto::wire::{Disposition, HandleId, SessionId, access, open_flags};
use cairn_proto::{ContentHash, FilePath, InodeId, ShareName};

use super::apply::{
    Applied, ApplyError, MetaError, add_chunk_ref, add_inode, apply, drop_inode, get, load_inode,
    load_share, lookup, release_chunk_ref, resolve_dir, unlink,
};
use super::command::{AppendPlaced, Command, OpenFile};
use super::keys;
use super::leases;
use super::locks;
use super::overlay::{KvRead, Overlay, keys_under};
use super::records::{Content, FileData, HandleRecord, Inode, SessionRecord, encode};
use super::store::StoreError;

/// Sequenced requests remembered per session. Clients keep fewer than this
/// many in flight, so a retry always finds its first answer.
pub const REPLAY_WINDOW: u64 = 1024;

/// Handles one session may hold open at once (as an SMB server's default
/// limit of open files per session): every handle is metadata on every
/// node, kept while the session lives.
#[cfg(not(test))]
pub const HANDLES_PER_SESSION_MAX: u32 = 16_384;
#[cfg(test)]
pub const HANDLES_PER_SESSION_MAX: u32 = 64;

/// Writes one command made, to be kept whatever its result.
pub type Writes = std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Applies `cmd` over `base`. Returns its result and the writes to keep:
/// `None` when nothing changes, which is every refusal except that of a
/// sequenced request (its refusal is remembered, so a retry gets it too).
pub fn apply_logged<R: KvRead + ?Sized>(
    base: &R,
    cmd: &Command,
) -> (Result<Applied, ApplyError>, Option<Writes>) {
    match cmd {
        Command::Sequenced { session, seq, cmd } => sequenced(base, session, *seq, cmd),
        _ => {
            let mut tx = Overlay::new(base);
            match apply(&mut tx, cmd) {
                Ok(applied) => (Ok(applied), Some(tx.into_pending())),
                Err(e) => (Err(e), None),
            }
        }
    }
}

fn sequenced<R: KvRead + ?Sized>(
    base: &R,
    session: &SessionId,
    seq: u64,
    cmd: &Command,
) -> (Result<Applied, ApplyError>, Option<Writes>) {
    let mut tx = Overlay::new(base);
    match get::<Result<Applied, MetaError>, _>(&tx, &keys::replay(session, seq)) {
        Ok(Some(first)) => return (first.map_err(ApplyError::from), None),
        Ok(None) => {}
        Err(e) => return (Err(e.into()), None),
    }
    match load_session(&tx, session) {
        Ok(_) => {}
        Err(e) => return (Err(e), None),
    }
    if matches!(cmd, Command::Sequenced { .. }) {
        return (
            Err(MetaError::Invalid("nested sequenced command".into()).into()),
            None,
        );
    }
    let result = owns_handle(&tx, session, cmd).and_then(|()| {
        let mut inner = Overlay::new(&tx);
        apply(&mut inner, cmd).map(|a| (a, inner.into_pending()))
    });
    let outcome = match result {
        Ok((applied, writes)) => {
            tx.absorb(writes);
            Ok(applied)
        }
        // Not an answer but "not yet": the open comes again once the
        // leases are broken, with the same sequence number.
        Err(ApplyError::Meta(e @ MetaError::LeasesHeld(_))) => return (Err(e.into()), None),
        Err(ApplyError::Meta(e)) => Err(e),
        Err(e @ ApplyError::Store(_)) => return (Err(e), None),
    };
    // Below the floor the window has passed: kept, it would never go.
    match floor(&tx, &keys::replays_floor(session)) {
        Ok(f) if seq >= f => tx.put(keys::replay(session, seq), encode(&outcome)),
        Ok(_) => {}
        Err(e) => return (Err(e.into()), None),
    }
    if let Err(e) = forget_replays_before(&mut tx, session, seq) {
        return (Err(e.into()), None);
    }
    (outcome.map_err(ApplyError::from), Some(tx.into_pending()))
}

/// The binding `session` is under (see `Command::BindSession`).
pub fn session_binding<R: KvRead + ?Sized>(tx: &R, session: &SessionId) -> Result<u64, StoreError> {
    Ok(match tx.get(&keys::session_binding(session))? {
        // Unreadable: no binding a node holds matches it.
        Some(v) => keys::trailing_u64(&v).unwrap_or(u64::MAX),
        None => 0,
    })
}

fn fenced<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    session: &SessionId,
    binding: u64,
    cmd: &Command,
) -> Result<Applied, ApplyError> {
    if matches!(
        cmd,
        Command::Sequenced { .. } | Command::Fenced { .. } | Command::Batch(_)
    ) {
        return Err(MetaError::Invalid(format!("{} cannot be fenced", cmd.kind())).into());
    }
    if session_binding(tx, session)? != binding {
        // Not `stale_handle`: the handle is open, this node is the one
        // that lost it.
        return Err(MetaError::NoSession(format!(
            "session {session} was resumed on another connection"
        ))
        .into());
    }
    apply(tx, cmd)
}

/// Remembers where `appends` went, for the replay window: repeats of
/// their sequence numbers are answered from here (see [`placed_append`]).
fn record_appends<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    session: &SessionId,
    appends: &[AppendPlaced],
) -> Result<(), StoreError> {
    let Some(last) = appends.iter().map(|a| a.seq).max() else {
        return Ok(());
    };
    let kept_from = floor(tx, &keys::appends_floor(session))?;
    for a in appends.iter().filter(|a| a.seq >= kept_from) {
        let mut v = Vec::with_capacity(16);
        v.extend_from_slice(&a.offset.to_be_bytes());
        v.extend_from_slice(&a.size.to_be_bytes());
        tx.put(keys::append(session, a.seq), v);
    }
    match last.checked_sub(REPLAY_WINDOW - 1) {
        Some(oldest_kept) => forget_below(
            tx,
            keys::appends_floor(session),
            |s| keys::append(session, s),
            oldest_kept,
        ),
        None => Ok(()),
    }
}

/// The number below which a window's keys are gone (see [`forget_below`]).
fn floor<R: KvRead + ?Sized>(tx: &R, floor_key: &[u8]) -> Result<u64, StoreError> {
    Ok(tx
        .get(floor_key)?
        .and_then(|v| keys::trailing_u64(&v))
        .unwrap_or(0))
}

/// Deletes the keys `key(s)` for every `s` below `oldest_kept`, scanning
/// only from where the last call stopped (kept at `floor_key`). From 0,
/// each scan would step over the tombstones of every deletion before it:
/// a long session's requests slowed down as it went on.
fn forget_below<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    floor_key: Vec<u8>,
    key: impl Fn(u64) -> Vec<u8>,
    oldest_kept: u64,
) -> Result<(), StoreError> {
    let floor = floor(tx, &floor_key)?;
    if oldest_kept <= floor {
        return Ok(());
    }
    let (mut start, end) = (key(floor), key(oldest_kept));
    while let Some(k) = tx.first_key_in(&start, &end)? {
        start = k.clone();
        start.push(0);
        tx.delete(k);
    }
    tx.put(floor_key, oldest_kept.to_be_bytes().to_vec());
    Ok(())
}

/// Where the append `seq` of `session` went, as (offset, size after), if
/// a flush made it durable.
pub fn placed_append<R: KvRead + ?Sized>(
    tx: &R,
    session: &SessionId,
    seq: u64,
) -> Result<Option<(u64, u64)>, StoreError> {
    let Some(v) = tx.get(&keys::append(session, seq))? else {
        return Ok(None);
    };
    let offset = v
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes);
    let size = v
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes);
    Ok(offset.zip(size))
}

/// Deletes the session's replay entries that fell out of the window
/// ending at `seq`: all of them, not only `seq - REPLAY_WINDOW`. Numbers
/// that record nothing (appends, refused requests, gaps a client leaves)
/// would otherwise leave the entries they should have pushed out for the
/// session's whole life. Usually one entry or none.
fn forget_replays_before<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    session: &SessionId,
    seq: u64,
) -> Result<(), StoreError> {
    let Some(oldest_kept) = seq.checked_sub(REPLAY_WINDOW - 1) else {
        return Ok(());
    };
    forget_below(
        tx,
        keys::replays_floor(session),
        |s| keys::replay(session, s),
        oldest_kept,
    )
}

/// Applies the session and handle commands.
pub(super) fn apply_session_command<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    cmd: &Command,
) -> Result<Applied, ApplyError> {
    match cmd {
        Command::OpenSession {
            session,
            share,
            writable,
            now_ns,
        } => open_session(tx, session, share, *writable, *now_ns),
        Command::RenewSessions { sessions, now_ns } => {
            for id in sessions {
                if let Some(mut rec) = get::<SessionRecord, _>(tx, &keys::session(id))? {
                    rec.renewed_ns = rec.renewed_ns.max(*now_ns);
                    tx.put(keys::session(id), encode(&rec));
                }
            }
            Ok(Applied::nothing())
        }
        Command::ExpireSessions { now_ns, timeout_ns } => {
            for (id, rec) in all_sessions(tx)? {
                if expired(&rec, *now_ns, *timeout_ns) {
                    close_session(tx, &id, *now_ns)?;
                }
            }
            Ok(Applied::nothing())
        }
        Command::CloseSession { session, now_ns } => {
            load_session(tx, session)?;
            close_session(tx, session, *now_ns)?;
            Ok(Applied::nothing())
        }
        Command::BindSession {
            session,
            previous,
            binding,
            now_ns,
        } => {
            let mut rec = load_session(tx, session)?;
            if session_binding(tx, session)? != *previous {
                return Err(MetaError::PreconditionFailed(format!(
                    "session {session} was resumed on another connection meanwhile"
                ))
                .into());
            }
            rec.renewed_ns = rec.renewed_ns.max(*now_ns);
            tx.put(keys::session(session), encode(&rec));
            tx.put(
                keys::session_binding(session),
                binding.to_be_bytes().to_vec(),
            );
            Ok(Applied::nothing())
        }
        Command::Fenced {
            session,
            binding,
            cmd,
            appends,
        } => {
            let applied = fenced(tx, session, *binding, cmd)?;
            record_appends(tx, session, appends)?;
            Ok(applied)
        }
        Command::OpenFile(args) => open_file(tx, args),
        Command::SetContent {
            handle,
            base,
            file,
            now_ns,
        } => set_content(tx, *handle, base, file, *now_ns),
        Command::SetAttr {
            handle,
            mode,
            mtime_ns,
            now_ns,
        } => {
            let h = writable_handle(tx, *handle)?;
            let mut inode = load_inode(tx, h.inode)?;
            if let Some(m) = mode {
                inode.mode = *m & 0o7777;
            }
            if let Some(t) = mtime_ns {
                inode.mtime_ns = *t;
            }
            inode.ctime_ns = *now_ns;
            tx.put(keys::inode(h.inode), encode(&inode));
            Ok(applied_for(h.inode, &inode))
        }
        Command::CloseHandle {
            handle,
            settle,
            now_ns,
        } => close_handle(tx, *handle, settle.as_ref(), *now_ns),
        Command::Lock {
            handle,
            offset,
            len,
            exclusive,
        } => locks::lock(tx, *handle, *offset, *len, *exclusive),
        Command::Unlock {
            handle,
            offset,
            len,
        } => locks::unlock(tx, *handle, *offset, *len),
        Command::LockRange {
            handle,
            owner,
            offset,
            len,
            kind,
        } => locks::lock_range(tx, *handle, *owner, (*offset, *len), *kind),
        other => {
            Err(MetaError::Invalid(format!("{} is not a session command", other.kind())).into())
        }
    }
}

/// Refuses a command on another session's handle (as stale: to this
/// session the handle does not exist). Nodes check too, from their own
/// metadata, but the log is where it cannot be raced.
fn owns_handle<R: KvRead + ?Sized>(
    tx: &R,
    session: &SessionId,
    cmd: &Command,
) -> Result<(), ApplyError> {
    let Some(handle) = cmd.handle() else {
        return Ok(());
    };
    if load_handle(tx, handle)?.session == *session {
        Ok(())
    } else {
        Err(MetaError::StaleHandle(handle.to_string()).into())
    }
}

/// True if any handle has `inode` open.
pub(super) fn is_open<R: KvRead + ?Sized>(tx: &R, inode: InodeId) -> Result<bool, StoreError> {
    let prefix = keys::open_handles(inode);
    Ok(tx
        .first_key_in(&prefix, &keys::prefix_end(&prefix))?
        .is_some())
}

pub fn load_session<R: KvRead + ?Sized>(
    tx: &R,
    id: &SessionId,
) -> Result<SessionRecord, ApplyError> {
    get(tx, &keys::session(id))?
        .ok_or_else(|| MetaError::NoSession(format!("session {id} does not exist")).into())
}

pub fn load_handle<R: KvRead + ?Sized>(tx: &R, id: HandleId) -> Result<HandleRecord, ApplyError> {
    get(tx, &keys::handle(id))?.ok_or_else(|| MetaError::StaleHandle(id.to_string()).into())
}

fn writable_handle<R: KvRead + ?Sized>(tx: &R, id: HandleId) -> Result<HandleRecord, ApplyError> {
    let h = load_handle(tx, id)?;
    if h.access & access::WRITE == 0 {
        return Err(MetaError::Forbidden(format!("handle {id} is not open for writing")).into());
    }
    Ok(h)
}

fn applied_for(id: InodeId, inode: &Inode) -> Applied {
    Applied {
        etag: inode.etag(),
        size: inode.size(),
        inode: Some(id),
        mode: inode.mode,
        nlink: inode.nlink,
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
        ..Applied::nothing()
    }
}

fn open_session<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    id: &SessionId,
    share: &ShareName,
    writable: bool,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    load_share(tx, share)?;
    let key = keys::session(id);
    let existing = get::<SessionRecord, _>(tx, &key)?;
    let created = existing.is_none();
    let rec = match existing {
        Some(rec) if rec.share != *share => {
            return Err(MetaError::Invalid(format!(
                "session {id} belongs to share '{}'",
                rec.share
            ))
            .into());
        }
        // The same setup again (its answer was lost): harmless. With a
        // token of other access it would leave the session's opens and the
        // connection's path operations allowed different things.
        Some(rec) if rec.writable != writable => {
            return Err(MetaError::Forbidden(format!(
                "session {id} was set up with a token of other access"
            ))
            .into());
        }
        // Resumed since: a connection set up anew would carry no binding,
        // and every request on its handles would get `no_session`.
        Some(_) if session_binding(tx, id)? != 0 => {
            return Err(MetaError::AlreadyExists(format!("session {id}")).into());
        }
        Some(rec) => SessionRecord {
            renewed_ns: rec.renewed_ns.max(now_ns),
            ..rec
        },
        None => SessionRecord {
            share: share.clone(),
            writable,
            created_ns: now_ns,
            renewed_ns: now_ns,
        },
    };
    tx.put(key, encode(&rec));
    Ok(Applied {
        created,
        ..Applied::nothing()
    })
}

/// True if `ExpireSessions { now_ns, timeout_ns }` would end a session:
/// the leader asks first, so a quiet cluster's log does not grow by an
/// entry every few seconds.
pub fn any_expired<R: KvRead + ?Sized>(
    tx: &R,
    now_ns: i64,
    timeout_ns: i64,
) -> Result<bool, StoreError> {
    let tx = Overlay::new(tx);
    Ok(all_sessions(&tx)?
        .iter()
        .any(|(_, rec)| expired(rec, now_ns, timeout_ns)))
}

fn expired(rec: &SessionRecord, now_ns: i64, timeout_ns: i64) -> bool {
    rec.renewed_ns.saturating_add(timeout_ns) < now_ns
}

fn all_sessions<R: KvRead + ?Sized>(
    tx: &Overlay<'_, R>,
) -> Result<Vec<(SessionId, SessionRecord)>, StoreError> {
    let prefix = [keys::SESSION_PREFIX];
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.to_vec();
    let mut out = Vec::new();
    while let Some(key) = tx.first_key_in(&start, &end)? {
        let id: [u8; 16] = key[1..]
            .try_into()
            .map_err(|_| StoreError::Invariant("bad session key".into()))?;
        if let Some(rec) = get::<SessionRecord, _>(tx, &key)? {
            out.push((SessionId(id), rec));
        }
        start = key;
        start.push(0);
    }
    Ok(out)
}

fn close_session<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    id: &SessionId,
    now_ns: i64,
) -> Result<(), ApplyError> {
    for key in keys_under(tx, &keys::session_handles(id))? {
        if let Some(h) = keys::trailing_u64(&key) {
            close_handle(tx, HandleId(h), None, now_ns)?;
        }
    }
    for key in keys_under(tx, &keys::replays(id))? {
        tx.delete(key);
    }
    for key in keys_under(tx, &keys::appends(id))? {
        tx.delete(key);
    }
    tx.delete(keys::replays_floor(id));
    tx.delete(keys::appends_floor(id));
    tx.delete(keys::session_binding(id));
    tx.delete(keys::session_handle_count(id));
    tx.delete(keys::session(id));
    Ok(())
}

/// How many handles `session` holds (as counted since the count was kept).
fn handle_count<R: KvRead + ?Sized>(tx: &R, session: &SessionId) -> Result<u32, StoreError> {
    Ok(get::<u32, _>(tx, &keys::session_handle_count(session))?.unwrap_or(0))
}

fn set_handle_count<R: KvRead + ?Sized>(tx: &mut Overlay<'_, R>, session: &SessionId, n: u32) {
    let key = keys::session_handle_count(session);
    if n == 0 {
        tx.delete(key);
    } else {
        tx.put(key, encode(&n));
    }
}

fn empty_file() -> FileData {
    FileData {
        size: 0,
        etag: ContentHash::of(b""),
        content_type: None,
        content: Content::Inline(Vec::new()),
    }
}

fn open_file<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    a: &OpenFile,
) -> Result<Applied, ApplyError> {
    let session = load_session(tx, &a.session)?;
    let held = handle_count(tx, &a.session)?;
    if held >= HANDLES_PER_SESSION_MAX {
        return Err(MetaError::TooMany(format!(
            "session {} has {held} handles open, its limit: close some first",
            a.session
        ))
        .into());
    }
    if session.share != a.share {
        return Err(
            MetaError::Invalid(format!("session {} is for another share", a.session)).into(),
        );
    }
    let wants_change = a.access & (access::WRITE | access::DELETE) != 0
        || !matches!(a.disposition, Disposition::Open);
    if wants_change && !session.writable {
        return Err(MetaError::Forbidden("this session's token is read-only".into()).into());
    }
    let Some((parent_path, name)) = a.path.split_last() else {
        return Err(MetaError::IsDirectory(a.path.to_string()).into());
    };
    let root = load_share(tx, &a.share)?.root;
    let not_found = || MetaError::NotFound(a.path.to_string());
    let parent = resolve_dir(tx, root, &parent_path)?.ok_or_else(not_found)?;
    let existing = lookup(tx, parent, name)?;
    let truncates = matches!(a.disposition, Disposition::Create | Disposition::Overwrite);
    let (id, created) = match (existing, a.disposition) {
        (Some(e), _) if e.kind == EntryKind::Directory => {
            return Err(MetaError::IsDirectory(a.path.to_string()).into());
        }
        (Some(e), _) if e.kind == EntryKind::Symlink => {
            return Err(MetaError::IsSymlink(a.path.to_string()).into());
        }
        (Some(_), Disposition::CreateNew) => {
            return Err(MetaError::AlreadyExists(a.path.to_string()).into());
        }
        (None, Disposition::Open | Disposition::Overwrite) => return Err(not_found().into()),
        (Some(e), _) => (e.inode, false),
        (None, _) => {
            let inode = Inode {
                kind: EntryKind::File,
                mode: a.mode & 0o7777,
                nlink: 1,
                mtime_ns: a.now_ns,
                ctime_ns: a.now_ns,
                parent,
                file: Some(empty_file()),
            };
            (add_inode(tx, parent, name, &inode, a.now_ns)?, true)
        }
    };
    // One read of the handles open on the file serves the share-mode,
    // lease-conflict and lease-grant checks (breaks change only leases,
    // which the grant does not look at); a file this open made has none.
    let open = if created {
        Vec::new()
    } else {
        leases::open_on(tx, id)?
    };
    check_share_modes(&open, a.access, a.share_access, &a.path)?;
    let found = leases::conflicts_among(&open, &a.session, a.access);
    if !found.is_empty() {
        if !a.force {
            return Err(MetaError::LeasesHeld(a.path.to_string()).into());
        }
        leases::record_breaks(tx, &found, true)?;
    }
    let lease = leases::grantable_among(&open, &a.session, a.lease);
    if truncates && !created {
        if a.access & access::WRITE == 0 {
            return Err(MetaError::Forbidden("truncating needs write access".into()).into());
        }
        replace_content(tx, id, &empty_file(), a.now_ns)?;
    }
    if a.flags & open_flags::DELETE_ON_CLOSE != 0 && a.access & access::DELETE == 0 {
        return Err(MetaError::Forbidden("delete-on-close needs delete access".into()).into());
    }
    set_handle_count(tx, &a.session, held + 1);
    let handle = allocate_handle(tx)?;
    let rec = HandleRecord {
        session: a.session,
        inode: id,
        access: a.access,
        share_access: a.share_access,
        flags: a.flags,
        parent,
        name: name.to_owned(),
        lease,
    };
    tx.put(keys::handle(handle), encode(&rec));
    tx.put(keys::session_handle(&a.session, handle), Vec::new());
    tx.put(keys::open_handle(id, handle), Vec::new());
    let inode = load_inode(tx, id)?;
    Ok(Applied {
        created,
        handle: Some(handle.0),
        lease,
        ..applied_for(id, &inode)
    })
}

/// SMB-style share modes: an open must allow what every other open handle
/// (`open`) does, and ask only for what every other handle allows.
fn check_share_modes(
    open: &[(HandleId, HandleRecord)],
    wanted: u8,
    shared: u8,
    path: &FilePath,
) -> Result<(), ApplyError> {
    for (_, other) in open {
        if wanted & !other.share_access != 0 || other.access & !shared != 0 {
            return Err(MetaError::SharingViolation(path.to_string()).into());
        }
    }
    Ok(())
}

fn allocate_handle<R: KvRead + ?Sized>(tx: &mut Overlay<'_, R>) -> Result<HandleId, StoreError> {
    let next = get::<u64, _>(tx, keys::NEXT_HANDLE)?.unwrap_or(1);
    let following = next.checked_add(1).ok_or(StoreError::InodesExhausted)?;
    tx.put(keys::NEXT_HANDLE.to_vec(), encode(&following));
    Ok(HandleId(next))
}

/// Swaps an inode's content, moving chunk references from old to new.
fn replace_content<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    id: InodeId,
    file: &FileData,
    now_ns: i64,
) -> Result<Inode, ApplyError> {
    let mut inode = load_inode(tx, id)?;
    let Some(old) = inode.file.take() else {
        return Err(MetaError::IsDirectory(format!("inode {}", id.0)).into());
    };
    for chunk in file.content.chunks() {
        add_chunk_ref(tx, chunk)?;
    }
    for chunk in old.content.chunks() {
        release_chunk_ref(tx, &chunk.hash, now_ns)?;
    }
    inode.file = Some(FileData {
        content_type: file.content_type.clone().or(old.content_type),
        ..file.clone()
    });
    inode.mtime_ns = now_ns;
    inode.ctime_ns = now_ns;
    tx.put(keys::inode(id), encode(&inode));
    Ok(inode)
}

fn set_content<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    base: &ContentHash,
    file: &FileData,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let h = writable_handle(tx, handle)?;
    let current = load_inode(tx, h.inode)?;
    if current.etag() != Some(*base) {
        return Err(MetaError::PreconditionFailed(format!("inode {}", h.inode.0)).into());
    }
    if file.content.len() != file.size {
        return Err(MetaError::Invalid("content length differs from size".into()).into());
    }
    let inode = replace_content(tx, h.inode, file, now_ns)?;
    super::settle::mark(tx, h.inode, file);
    Ok(applied_for(h.inode, &inode))
}

fn close_handle<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    settle: Option<&(ContentHash, ContentHash)>,
    now_ns: i64,
) -> Result<Applied, ApplyError> {
    let h = load_handle(tx, handle)?;
    locks::drop_handle_locks(tx, h.inode, handle)?;
    tx.delete(keys::handle(handle));
    leases::forget_break(tx, &h.session, handle)?;
    tx.delete(keys::session_handle(&h.session, handle));
    // Handles opened before the count was kept are not in it.
    let held = handle_count(tx, &h.session)?;
    set_handle_count(tx, &h.session, held.saturating_sub(1));
    tx.delete(keys::open_handle(h.inode, handle));
    if h.flags & open_flags::DELETE_ON_CLOSE != 0
        && let Some(entry) = lookup(tx, h.parent, &h.name)?
        && entry.inode == h.inode
    {
        // Still the name it was opened by: remove it now; handles still
        // open keep the file until they close.
        unlink(tx, h.parent, &h.name, entry, now_ns)?;
        drop_inode(tx, h.inode, now_ns)?;
        return Ok(Applied::nothing());
    }
    let Some(mut inode) = get::<Inode, _>(tx, &keys::inode(h.inode))? else {
        return Ok(Applied::nothing());
    };
    if let (Some((provisional, real)), Some(file)) = (settle, inode.file.as_mut())
        && file.etag == *provisional
    {
        file.etag = *real;
        tx.put(keys::inode(h.inode), encode(&inode));
        super::settle::clear(tx, h.inode, provisional)?;
    }
    if inode.nlink == 0 && !is_open(tx, h.inode)? {
        drop_inode(tx, h.inode, now_ns)?;
        return Ok(Applied::nothing());
    }
    Ok(applied_for(h.inode, &inode))
}

/// The handles a session holds (for a resume).
pub fn session_handles<R: KvRead + ?Sized>(
    tx: &R,
    id: &SessionId,
) -> Result<Vec<HandleId>, StoreError> {
    let prefix = keys::session_handles(id);
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.clone();
    let mut out = Vec::new();
    while let Some(key) = tx.first_key_in(&start, &end)? {
        if let Some(h) = keys::trailing_u64(&key) {
            out.push(HandleId(h));
        }
        start = key;
        start.push(0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
