//! One function per request.

use bytes::Bytes;
use cairn_proto::api::EntryKind;
use cairn_proto::wire::{
    Attr, Data, DirPage, FsStats, HandleId, LinkTarget, Negotiated, Opened, PROTOCOL_VERSION,
    Request, RequestHeader, Response, SessionReady, Written, capability,
};
use cairn_proto::{CHUNK_SIZE_MAX, ContentHash, ErrorCode, FilePath, InodeId};

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

use super::{Bound, ConnState, NativeServer};
use crate::api::error::{ApiError, ApiResult};
use crate::meta::sessions::{REPLAY_WINDOW, load_handle, load_session, session_handles};
use crate::meta::{Applied, Command, Content, Inode, Precondition};

/// Entries per directory page, at most.
const DIR_PAGE_MAX: u32 = 1000;
/// Most of a client's protocol versions quoted back when none is ours.
const VERSIONS_SHOWN: usize = 8;

pub(super) async fn handle(
    server: &NativeServer,
    cs: &tokio::sync::Mutex<ConnState>,
    header: RequestHeader,
    req: Request,
    gone: &CancellationToken,
) -> ApiResult<Response> {
    match req {
        Request::Negotiate(n) => {
            if !n.versions.contains(&PROTOCOL_VERSION) {
                // Only the first few: the list is the peer's, of any length.
                let shown = &n.versions[..n.versions.len().min(VERSIONS_SHOWN)];
                return Err(ApiError::bad_request(format!(
                    "no common protocol version: the client speaks {shown:?}{}, this server {PROTOCOL_VERSION}",
                    if shown.len() < n.versions.len() {
                        " and more"
                    } else {
                        ""
                    }
                )));
            }
            cs.lock().await.negotiated = true;
            Ok(Response::Negotiated(Negotiated {
                version: PROTOCOL_VERSION,
                capabilities: capability::LEASES | capability::SYMLINKS | capability::POSIX_LOCKS,
                max_read: CHUNK_SIZE_MAX as u32,
                max_write: CHUNK_SIZE_MAX as u32,
                handle_timeout_ms: server.handle_timeout.as_millis() as u64,
                replay_window: REPLAY_WINDOW as u32,
                node_id: server.state.node_id,
                leader: server.state.committer.leader_quic(),
            }))
        }
        Request::SessionSetup(s) => session_setup(server, cs, header, s).await,
        other => {
            let bound = bound(cs, &header).await?;
            if other.is_sequenced() && header.seq == 0 {
                return Err(ApiError::bad_request(format!(
                    "{} changes state and needs a sequence number",
                    other.name()
                )));
            }
            session_op(server, cs, &bound, header, other, gone).await
        }
    }
}

async fn bound(cs: &tokio::sync::Mutex<ConnState>, header: &RequestHeader) -> ApiResult<Bound> {
    match &cs.lock().await.bound {
        Some(b) if b.id == header.session => Ok(b.clone()),
        _ => Err(ApiError::new(
            ErrorCode::NoSession,
            format!(
                "session {} is not set up on this connection",
                header.session
            ),
        )),
    }
}

async fn session_setup(
    server: &NativeServer,
    cs: &tokio::sync::Mutex<ConnState>,
    header: RequestHeader,
    s: cairn_proto::wire::SessionSetup,
) -> ApiResult<Response> {
    let state = &server.state;
    {
        let c = cs.lock().await;
        if c.ended {
            return Err(ended_during_setup());
        }
        if !c.negotiated {
            return Err(ApiError::bad_request("negotiate first"));
        }
    }
    let share = cairn_proto::ShareName::parse(&s.share)?;
    let token = crate::api::auth::token_record(&state.meta, &state.committer, &s.token).await?;
    if token.share != share {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("the token does not grant access to share '{share}'"),
        ));
    }
    let writable = token.access.can_write();
    let (resumed, binding) = if s.resume {
        state.committer.read_barrier().await?;
        let rec = load_session(&state.meta.snapshot(), &header.session)?;
        if rec.share != share {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the session is for another share",
            ));
        }
        // Opens check the session's access, path operations the
        // connection's: a token with other rights would split the two (a
        // read-only token resuming a read-write session could write).
        if rec.writable != writable {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the session was set up with a token of other access; resume it with a token like that one",
            ));
        }
        // A node that held the session before (this one on an older
        // connection, or another) may still be committing a flush of
        // writes the client is about to send again here: the new
        // binding fences it off.
        let previous =
            crate::meta::sessions::session_binding(&state.meta.snapshot(), &header.session)?;
        // The barrier may have taken long: a client gone meanwhile has
        // resumed elsewhere, and a binding committed now would fence off
        // the connection it uses.
        if cs.lock().await.ended {
            return Err(ended_during_setup());
        }
        let binding = server.new_binding();
        state
            .committer
            .commit(Command::BindSession {
                session: header.session,
                previous,
                binding,
                now_ns: state.clock.now_ns(),
            })
            .await?;
        // The client sends again every write no flush acknowledged. What
        // this node still holds from an earlier connection of the session
        // is stale: the session may have flushed newer data through
        // another node since (it moved, then came back).
        server.forget_session(&header.session);
        (true, binding)
    } else {
        state
            .committer
            .commit(Command::OpenSession {
                session: header.session,
                share: share.clone(),
                writable,
                now_ns: state.clock.now_ns(),
            })
            .await?;
        (false, 0)
    };
    let handles = if resumed {
        session_handles(&state.meta.snapshot(), &header.session)?
    } else {
        Vec::new()
    };
    let mut c = cs.lock().await;
    if c.ended {
        // Committed, but for a client no longer here: unbound, the session
        // expires as after any lost connection unless it is resumed.
        return Err(ended_during_setup());
    }
    // Set up: no longer counted against its address.
    c.unbound = None;
    let previous = c.bound.replace(Bound {
        id: header.session,
        share,
        writable,
        binding,
        resumed_with: Arc::new(handles.iter().copied().collect()),
    });
    if let Some(p) = previous {
        server.unbind_live(&p.id, &c.sink);
    }
    server.bind_live(header.session, c.sink.clone());
    c.sink.session_bound();
    drop(c);
    tracing::info!(session = %header.session, resumed, handles = handles.len(), "session ready");
    Ok(Response::SessionReady(SessionReady {
        resumed,
        writable,
        handles,
    }))
}

fn ended_during_setup() -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        "the connection ended during session setup",
    )
}

fn path(p: &str) -> ApiResult<FilePath> {
    Ok(FilePath::parse(p.trim_matches('/'))?)
}

/// A state change of the session, applied once whatever the retries.
async fn sequenced(
    server: &NativeServer,
    header: &RequestHeader,
    cmd: Command,
) -> ApiResult<Applied> {
    Ok(server
        .state
        .committer
        .commit(Command::Sequenced {
            session: header.session,
            seq: header.seq,
            cmd: Box::new(cmd),
        })
        .await?)
}

fn require_writable(b: &Bound) -> ApiResult<()> {
    if !b.writable {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "this session's token is read-only",
        ));
    }
    Ok(())
}

async fn session_op(
    server: &NativeServer,
    cs: &tokio::sync::Mutex<ConnState>,
    b: &Bound,
    header: RequestHeader,
    req: Request,
    gone: &CancellationToken,
) -> ApiResult<Response> {
    let state = &server.state;
    let now = state.clock.now_ns();
    match req {
        Request::KeepAlive => Ok(Response::Done),
        Request::Logoff => {
            state
                .committer
                .commit(Command::CloseSession {
                    session: b.id,
                    now_ns: now,
                })
                .await?;
            server.forget_session(&b.id);
            let mut c = cs.lock().await;
            if c.bound.take().is_some() {
                server.unbind_live(&b.id, &c.sink);
            }
            Ok(Response::Done)
        }
        Request::Open(o) => {
            let args = crate::meta::command::OpenFile {
                session: b.id,
                share: b.share.clone(),
                path: path(&o.path)?,
                disposition: o.disposition,
                access: o.access,
                share_access: o.share_access,
                flags: o.flags,
                mode: o.mode,
                now_ns: now,
                lease: o.lease,
                force: false,
            };
            let applied = super::leases::open(server, &header, args, gone).await?;
            let handle = HandleId(
                applied
                    .handle
                    .ok_or_else(|| internal("open made no handle"))?,
            );
            let inode = applied
                .inode
                .ok_or_else(|| internal("open named no file"))?;
            let attr = current_attr(server, inode, &applied, name_of(&o.path)).await?;
            Ok(Response::Opened(Opened {
                handle,
                created: applied.created,
                attr,
                lease: applied.lease,
            }))
        }
        Request::Read(r) => {
            let file = server.file(r.handle, b).await?;
            let len = r.len.min(CHUNK_SIZE_MAX as u32);
            let ticket = super::answers::ticket(state, len as usize).await?;
            // A read sees every flush acknowledged before it, whichever
            // session and node made it: this node may not have applied it
            // yet. Outside the handle's lock, so reads in flight on one
            // handle share the barrier's round instead of queueing.
            server.state.committer.read_barrier().await?;
            let mut f = file.lock().await;
            let plan = f.plan_read(&server.state, r.offset, len).await?;
            let data = if plan.private {
                Bytes::from(f.read(&server.state, &plan).await?)
            } else {
                // Committed content only: other requests on the handle
                // need not wait for this one's I/O.
                drop(f);
                plan.read_shared(&server.state).await?
            };
            Ok(Response::Data(Data {
                data: ticket.carry(data),
                eof: plan.eof,
            }))
        }
        Request::Write(w) => {
            if w.data.len() > CHUNK_SIZE_MAX {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "a write carries at most {CHUNK_SIZE_MAX} bytes (max_write), not {}",
                        w.data.len()
                    ),
                ));
            }
            let file = server.file(w.handle, b).await?;
            let count = w.data.len() as u32;
            let (offset, size) = file
                .lock()
                .await
                // The data stays a view of the request's buffer.
                .write(&server.state, w.offset, w.data, header.seq)
                .await?;
            Ok(Response::Written(Written {
                count,
                offset,
                size,
            }))
        }
        Request::Flush(h) => {
            let file = server.file(h, b).await?;
            let mut f = file.lock().await;
            let inode = f.flush(&server.state).await?;
            Ok(Response::Attr(attr_of(
                f.record.inode,
                &inode,
                String::new(),
            )))
        }
        Request::Close(h) => close(server, b, &header, h).await,
        Request::StatHandle(h) => {
            let file = server.file(h, b).await?;
            let mut f = file.lock().await;
            let size = f.size(&server.state).await?;
            let inode = crate::meta::apply::load_inode(&state.meta.snapshot(), f.record.inode)?;
            let mut attr = attr_of(f.record.inode, &inode, String::new());
            attr.size = size;
            Ok(Response::Attr(attr))
        }
        Request::SetInfo(s) => {
            let file = server.file(s.handle, b).await?;
            let mut f = file.lock().await;
            if let Some(size) = s.size {
                f.truncate(&server.state, size)?;
            }
            if s.size.is_some() || s.mtime_ns.is_some() {
                // Earlier writes are flushed first: their flush would
                // otherwise stamp the file's mtime after the one set here.
                f.flush(&server.state).await?;
            }
            if s.mode.is_some() || s.mtime_ns.is_some() {
                sequenced(
                    server,
                    &header,
                    Command::SetAttr {
                        handle: s.handle,
                        mode: s.mode,
                        mtime_ns: s.mtime_ns,
                        now_ns: now,
                    },
                )
                .await?;
            }
            state.committer.read_barrier().await?;
            let inode = crate::meta::apply::load_inode(&state.meta.snapshot(), f.record.inode)?;
            let mut attr = attr_of(f.record.inode, &inode, String::new());
            // As this handle sees it: its unflushed writes count.
            attr.size = f.size(&server.state).await?;
            Ok(Response::Attr(attr))
        }
        Request::SetPathInfo(p) => {
            require_writable(b)?;
            let applied = sequenced(
                server,
                &header,
                Command::SetPathAttr {
                    share: b.share.clone(),
                    path: path(&p.path)?,
                    mode: p.mode,
                    mtime_ns: p.mtime_ns,
                    now_ns: now,
                },
            )
            .await?;
            changed_attr(server, &applied, name_of(&p.path)).await
        }
        Request::Stat(p) => {
            state.committer.read_barrier().await?;
            let path = path(&p.path)?;
            let (id, inode) = state.meta.snapshot().resolve(&b.share, &path)?;
            Ok(Response::Attr(attr_of(id, &inode, name_of(&p.path))))
        }
        Request::ReadDir(r) => {
            state.committer.read_barrier().await?;
            let path = path(&r.path)?;
            let snap = state.meta.snapshot();
            let (id, inode) = snap.resolve(&b.share, &path)?;
            if !inode.is_dir() {
                return Err(ApiError::new(
                    ErrorCode::NotDirectory,
                    format!("'{path}' is not a directory"),
                ));
            }
            let limit = r.limit.clamp(1, DIR_PAGE_MAX) as usize;
            let (listed, more) = snap.list(id, r.after.as_deref(), limit)?;
            let next_after = more
                .then(|| listed.last().map(|l| l.name.clone()))
                .flatten();
            let entries = listed
                .into_iter()
                .map(|l| attr_of(l.entry.inode, &l.inode, l.name))
                .collect();
            Ok(Response::DirPage(DirPage {
                entries,
                next_after,
            }))
        }
        Request::Mkdir(m) => {
            require_writable(b)?;
            sequenced(
                server,
                &header,
                Command::Mkdir {
                    share: b.share.clone(),
                    path: path(&m.path)?,
                    mode: m.mode & 0o7777,
                    now_ns: now,
                },
            )
            .await?;
            Ok(Response::Done)
        }
        Request::Rename(r) => {
            require_writable(b)?;
            sequenced(
                server,
                &header,
                Command::Rename {
                    share: b.share.clone(),
                    from: path(&r.from)?,
                    to: path(&r.to)?,
                    replace: r.replace,
                    now_ns: now,
                },
            )
            .await?;
            Ok(Response::Done)
        }
        Request::Remove(p) => {
            require_writable(b)?;
            sequenced(
                server,
                &header,
                Command::Remove {
                    share: b.share.clone(),
                    path: path(&p.path)?,
                    now_ns: now,
                    precondition: Precondition::default(),
                },
            )
            .await?;
            Ok(Response::Done)
        }
        Request::Symlink(l) => {
            require_writable(b)?;
            let at = path(&l.path)?;
            // Before the commit: a refused entry still takes its place in
            // every node's log, and a target may be megabytes long.
            crate::meta::apply::check_link_target(&l.target)?;
            let applied = sequenced(
                server,
                &header,
                Command::Symlink {
                    share: b.share.clone(),
                    path: at,
                    target: l.target.clone(),
                    now_ns: now,
                },
            )
            .await?;
            changed_attr(server, &applied, name_of(&l.path)).await
        }
        Request::StatFs => {
            let chunks = &server.state.chunks;
            let total_bytes = chunks.total_bytes()?;
            let free_bytes = chunks.free_bytes()?;
            Ok(Response::FsStats(FsStats {
                total_bytes,
                free_bytes,
            }))
        }
        Request::ReadLink(p) => {
            state.committer.read_barrier().await?;
            let at = path(&p.path)?;
            let (_, inode) = state.meta.snapshot().resolve(&b.share, &at)?;
            Ok(Response::LinkTarget(LinkTarget {
                target: link_target(&inode, &at)?,
            }))
        }
        Request::Lock(l) => {
            // Checks that the handle is this session's.
            server.file(l.handle, b).await?;
            let take = Command::Lock {
                handle: l.handle,
                offset: l.offset,
                len: l.len,
                exclusive: l.exclusive,
            };
            super::locks::lock(state, take, l.wait_ms, (b.id, b.binding), gone).await?;
            Ok(Response::Done)
        }
        Request::LockRange(l) => {
            super::locks::holds_a_byte(l.offset)?;
            server.file(l.handle, b).await?;
            let set = Command::LockRange {
                handle: l.handle,
                owner: l.owner,
                offset: l.offset,
                len: l.len,
                kind: l.kind,
            };
            super::locks::lock(state, set, l.wait_ms, (b.id, b.binding), gone).await?;
            Ok(Response::Done)
        }
        Request::TestLock(t) => {
            super::locks::holds_a_byte(t.offset)?;
            server.file(t.handle, b).await?;
            Ok(Response::LockTested(super::locks::test(state, &t).await?))
        }
        Request::Unlock(u) => {
            server.file(u.handle, b).await?;
            sequenced(
                server,
                &header,
                Command::Unlock {
                    handle: u.handle,
                    offset: u.offset,
                    len: u.len,
                },
            )
            .await?;
            Ok(Response::Done)
        }
        Request::LeaseAck(a) => {
            // Only the holder's session acknowledges. A handle this node
            // has not seen yet may be one it lags behind on: it catches up
            // first. A handle that is still not there has closed (a retry
            // after the close), or is not open yet: nothing is committed
            // then, since `AckLease` names no session and would lower the
            // lease of whoever opens that handle id before it applies.
            let mut holder = load_handle(&state.meta.snapshot(), a.handle);
            if holder.is_err() {
                state.committer.read_barrier().await?;
                holder = load_handle(&state.meta.snapshot(), a.handle);
            }
            let Ok(h) = holder else {
                return Ok(Response::Done);
            };
            if h.session != b.id {
                return Err(ApiError::new(
                    ErrorCode::StaleHandle,
                    format!("handle {} is not this session's", a.handle),
                ));
            }
            // Clients acknowledge again after each reconnect. One that
            // lowers nothing and clears no pending break changes nothing:
            // it costs a barrier (so this node's view is current), not a
            // log entry on every node.
            if h.lease & !a.lease == 0 {
                state.committer.read_barrier().await?;
                let snapshot = state.meta.snapshot();
                let now = load_handle(&snapshot, a.handle);
                let lowers = now.as_ref().is_ok_and(|n| n.lease & !a.lease != 0);
                if !lowers && !crate::meta::leases::break_pending(&snapshot, &b.id, a.handle)? {
                    return Ok(Response::Done);
                }
            }
            state
                .committer
                .commit(Command::AckLease {
                    handle: a.handle,
                    lease: a.lease,
                })
                .await?;
            Ok(Response::Done)
        }
        Request::Negotiate(_) | Request::SessionSetup(_) => {
            Err(ApiError::bad_request("already handled"))
        }
    }
}

/// Flushes what the handle holds, settles the file's ETag, and closes.
async fn close(
    server: &NativeServer,
    b: &Bound,
    header: &RequestHeader,
    h: HandleId,
) -> ApiResult<Response> {
    let state = &server.state;
    // Only a node that has served the handle holds writes or a provisional
    // ETag for it; elsewhere there is nothing to flush, and loading the
    // handle would cost a read barrier per close (a program that creates
    // a file and closes it unwritten paid one per file). The log checks
    // the handle is this session's.
    // A handle the session had open when it resumed here may have been
    // flushed through the node it left: its close settles that flush's
    // provisional ETag.
    let settle = if server.holds(h, &b.id) || b.resumed_with.contains(&h) {
        // A retried close finds the handle gone (perhaps only once this
        // node catches up, halfway through its flush); the replay table
        // answers it.
        match flush_and_settle(server, b, h).await {
            Ok(settle) => settle,
            Err(e) if e.code == ErrorCode::StaleHandle => None,
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    sequenced(
        server,
        header,
        Command::CloseHandle {
            handle: h,
            settle,
            now_ns: state.clock.now_ns(),
        },
    )
    .await?;
    server.forget(h);
    Ok(Response::Done)
}

async fn flush_and_settle(
    server: &NativeServer,
    b: &Bound,
    h: HandleId,
) -> ApiResult<Option<(ContentHash, ContentHash)>> {
    let file = server.file(h, b).await?;
    let mut f = file.lock().await;
    f.flush(&server.state).await?;
    f.settle(&server.state).await
}

/// The attributes after a change: as the command reported them (an open
/// of a file does), else from this node's metadata when it has applied the
/// change already, else after a read barrier.
async fn current_attr(
    server: &NativeServer,
    id: InodeId,
    applied: &Applied,
    name: String,
) -> ApiResult<Attr> {
    if applied.inode == Some(id) && applied.etag.is_some() && applied.nlink > 0 {
        return Ok(Attr {
            name,
            kind: EntryKind::File,
            inode: id.0,
            size: applied.size,
            mode: applied.mode,
            nlink: applied.nlink,
            mtime_ns: applied.mtime_ns,
            ctime_ns: applied.ctime_ns,
            etag: applied.etag.map(|e| e.0),
        });
    }
    let state = &server.state;
    let fresh = |inode: &Inode| inode.etag() == applied.etag && inode.size() == applied.size;
    if let Ok(inode) = crate::meta::apply::load_inode(&state.meta.snapshot(), id)
        && fresh(&inode)
    {
        return Ok(attr_of(id, &inode, name));
    }
    state.committer.read_barrier().await?;
    let inode = crate::meta::apply::load_inode(&state.meta.snapshot(), id)?;
    Ok(attr_of(id, &inode, name))
}

/// The attributes of the object a path command made or changed, found by
/// the id the command reported, not by its path: the name may stand for
/// another object by now, and a replay answers for the object the first
/// request changed, wherever it has moved.
async fn changed_attr(
    server: &NativeServer,
    applied: &Applied,
    name: String,
) -> ApiResult<Response> {
    let id = applied
        .inode
        .ok_or_else(|| internal("the command named no file"))?;
    server.state.committer.read_barrier().await?;
    let snapshot = server.state.meta.snapshot();
    let inode = crate::meta::apply::load_inode(&snapshot, id).map_err(|e| match e {
        // Removed since (by another client, before this answer, or before
        // a retry): not a damaged directory entry.
        crate::meta::store::StoreError::Dangling(_) => ApiError::new(
            ErrorCode::NotFound,
            format!("'{name}' was removed after the change was made"),
        ),
        e => e.into(),
    })?;
    Ok(Response::Attr(attr_of(id, &inode, name)))
}

fn name_of(p: &str) -> String {
    p.trim_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub(super) fn attr_of(id: InodeId, inode: &Inode, name: String) -> Attr {
    Attr {
        name,
        kind: inode.kind,
        inode: id.0,
        size: inode.size(),
        mode: inode.mode,
        nlink: inode.nlink,
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
        etag: inode.etag().map(|e| e.0),
    }
}

/// What the symbolic link `inode` (at `at`) stands for.
fn link_target(inode: &Inode, at: &FilePath) -> Result<String, ApiError> {
    let content = match (&inode.kind, &inode.file) {
        (EntryKind::Symlink, Some(f)) => &f.content,
        _ => {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("'{at}' is not a symbolic link"),
            ));
        }
    };
    match content {
        Content::Inline(bytes) => String::from_utf8(bytes.clone())
            .map_err(|_| internal("a link target is not UTF-8 (damaged metadata)")),
        Content::Chunks(_) => Err(internal("a link target is not inline (damaged metadata)")),
    }
}

fn internal(m: &str) -> ApiError {
    ApiError::new(ErrorCode::Internal, m)
}
