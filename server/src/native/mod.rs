//! The native protocol's server side: sessions over QUIC connections on the
//! node's QUIC port (ALPN `cairn/1`), one request per bidirectional stream,
//! so a large read never holds up a small stat.
//!
//! Sessions, handles and the replay table are replicated metadata
//! (`meta::sessions`): a client whose node died reconnects to any other,
//! resumes its session and carries on with the same handles. What a node
//! keeps in memory for a handle (unflushed writes) the client can always
//! send again.

mod answers;
mod content;
mod handles;
mod intake;
mod leases;
mod locks;
mod ops;
pub(crate) mod running_hash;
mod settle;
mod sink;
mod unbound;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::wire::{
    HandleId, Request, RequestHeader, Response, SessionId, decode_frame_bytes,
};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::AppState;
use crate::meta::Command;
use handles::OpenFile;
pub use sink::NoticeSink;

/// The per-node state of the native protocol.
pub struct NativeServer {
    state: Arc<AppState>,
    handle_timeout: Duration,
    lease_break_timeout: Duration,
    /// Handles used through this node, with their unflushed writes.
    open: Mutex<HashMap<HandleId, OpenEntry>>,
    /// Sessions with a live connection to this node, and where their
    /// notices go (the newest connection last).
    live: Mutex<HashMap<SessionId, Vec<NoticeSink>>>,
    /// Lease breaks already pushed to a connection.
    pushed: Mutex<HashSet<leases::Pushed>>,
    /// What the break pusher last scanned for: the store's lease epoch,
    /// and whether a connection came or a push failed since.
    push_seen: leases::PushSeen,
    connections: AtomicUsize,
    /// Connections without a session, per address.
    unbound: unbound::Unbound,
    /// Memory for the request frames being received and served.
    requests: intake::RequestBudget,
    /// When this node last began a renewal of its connected sessions that
    /// succeeded (or had none to renew, or bound one), in milliseconds
    /// since `started`: see [`NativeServer::leave_if_cut_off`].
    renewed_ms: std::sync::atomic::AtomicU64,
    started: Instant,
    /// How long renewals may fail before the node closes its client
    /// connections.
    cut_off_after: Duration,
    /// The time part of the last binding this node gave (see
    /// [`NativeServer::new_binding`]).
    last_binding: std::sync::atomic::AtomicU64,
}

/// Timeouts of the native protocol (from `[cluster]`).
#[derive(Clone, Copy, Debug)]
pub struct NativeOptions {
    pub handle_timeout: Duration,
    /// How long a metadata write waits for a leader (`write_timeout_secs`).
    pub write_timeout: Duration,
    pub lease_break_timeout: Duration,
    /// Memory for request frames (`request_buffer_bytes_max`).
    pub request_buffer_bytes: u64,
    /// How long a request frame may stall (`body_idle_timeout_secs`).
    pub request_idle_timeout: Duration,
}

/// The smallest `request_buffer_bytes_max`.
pub const REQUEST_BUDGET_MIN: u64 = intake::BUDGET_MIN;

/// Client connections (each carries one session) a node serves at once.
pub const CONNECTIONS_MAX: usize = 4096;

/// Decrements `n` when dropped.
fn scopeguard(n: &AtomicUsize) -> impl Drop + '_ {
    struct Guard<'a>(&'a AtomicUsize);
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::Relaxed);
        }
    }
    Guard(n)
}

struct OpenEntry {
    file: Arc<tokio::sync::Mutex<OpenFile>>,
    session: SessionId,
    /// The session's binding it was loaded under.
    binding: u64,
    last_used: Instant,
}

/// The session a connection is bound to, once set up.
#[derive(Clone, Debug)]
struct Bound {
    id: SessionId,
    share: cairn_proto::ShareName,
    writable: bool,
    /// What this connection's setup bound the session under: 0 for a new
    /// session, [`NativeServer::new_binding`] for a resume.
    binding: u64,
    /// The handles the session had open when this connection resumed it.
    resumed_with: Arc<HashSet<HandleId>>,
}

/// How long a client connection may go without a session set up.
pub const SETUP_WITHIN: Duration = Duration::from_secs(30);

pub struct ConnState {
    negotiated: bool,
    bound: Option<Bound>,
    /// The connection's place in its address's count of connections
    /// without a session, until it sets one up.
    unbound: Option<unbound::UnboundSlot>,
    sink: NoticeSink,
    /// The connection is gone: a session setup still under way must not
    /// bind to it (nothing would ever unbind it, and the node would renew
    /// the session for ever).
    ended: bool,
}

impl ConnState {
    pub fn new(sink: NoticeSink) -> Self {
        Self {
            negotiated: false,
            bound: None,
            unbound: None,
            sink,
            ended: false,
        }
    }
}

impl NativeServer {
    pub fn new(state: Arc<AppState>, options: NativeOptions) -> Arc<Self> {
        let requests = intake::RequestBudget::new(
            options.request_buffer_bytes,
            state.metrics.native_request_buffer_bytes.clone(),
            options.request_idle_timeout,
        );
        Arc::new(Self {
            state,
            handle_timeout: options.handle_timeout,
            lease_break_timeout: options.lease_break_timeout,
            open: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            pushed: Mutex::new(HashSet::new()),
            push_seen: leases::PushSeen::default(),
            connections: AtomicUsize::new(0),
            unbound: unbound::Unbound::default(),
            requests,
            renewed_ms: std::sync::atomic::AtomicU64::new(0),
            started: Instant::now(),
            cut_off_after: cut_off_after(options.handle_timeout, options.write_timeout),
            last_binding: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn bind_live(&self, id: SessionId, sink: NoticeSink) {
        if let Ok(mut live) = self.live.lock() {
            live.entry(id).or_default().push(sink);
        }
        // Its setup just committed: the node reaches the cluster.
        self.mark_renewed(Instant::now());
        // Its session's pending breaks go to the new connection.
        self.push_seen.mark_dirty();
    }

    /// True if a connection of session `id` is open on this node.
    fn is_live(&self, id: &SessionId) -> bool {
        // A poisoned table: assume live, and keep what the session holds.
        self.live.lock().map_or(true, |l| l.contains_key(id))
    }

    fn unbind_live(&self, id: &SessionId, sink: &NoticeSink) {
        if let Ok(mut live) = self.live.lock()
            && let Some(sinks) = live.get_mut(id)
        {
            sinks.retain(|s| s.id() != sink.id());
            if sinks.is_empty() {
                live.remove(id);
            }
        }
    }

    /// Serves one client connection until it closes.
    pub async fn serve_connection(self: Arc<Self>, conn: quinn::Connection) {
        let peer = conn.remote_address();
        let count = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let _count = scopeguard(&self.connections);
        if count > CONNECTIONS_MAX {
            tracing::warn!(%peer, "too many client connections; refused");
            conn.close(3u32.into(), b"too many connections");
            return;
        }
        let Some(unbound) = self.unbound.admit(peer.ip()) else {
            tracing::warn!(%peer, "too many connections without a session from this address; refused");
            conn.close(
                3u32.into(),
                b"too many connections without a session from this address",
            );
            return;
        };
        let mut state = ConnState::new(NoticeSink::Quic(conn.clone()));
        state.unbound = Some(unbound);
        let cs = Arc::new(tokio::sync::Mutex::new(state));
        // A connection that sets up no session only takes up a slot (it
        // may not even hold a token): it gets [`SETUP_WITHIN`] to do so.
        let setup_by = tokio::time::Instant::now() + SETUP_WITHIN;
        let share = Arc::new(self.requests.connection());
        let mut setup_checked = false;
        loop {
            let accepted = tokio::select! {
                accepted = conn.accept_bi() => accepted,
                () = tokio::time::sleep_until(setup_by), if !setup_checked => {
                    setup_checked = true;
                    if cs.lock().await.bound.is_none() {
                        tracing::info!(%peer, "no session set up in time; closing the connection");
                        conn.close(4u32.into(), b"no session set up in time");
                    }
                    continue;
                }
            };
            let (send, recv) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    let stats = conn.stats();
                    tracing::debug!(
                        %peer,
                        error = %e,
                        mtu = stats.path.current_mtu,
                        sent_bytes = stats.udp_tx.bytes,
                        lost_packets = stats.path.lost_packets,
                        black_holes = stats.path.black_holes_detected,
                        mtu_probes_lost = stats.path.lost_plpmtud_probes,
                        rtt_us = stats.path.rtt.as_micros() as u64,
                        "client connection closed"
                    );
                    break;
                }
            };
            let server = Arc::clone(&self);
            let cs = Arc::clone(&cs);
            let share = Arc::clone(&share);
            tokio::spawn(async move {
                if let Err(e) = server.serve_stream(&cs, &share, send, recv).await {
                    tracing::debug!(%peer, error = %e, "client stream failed");
                }
            });
        }
        self.connection_ended(&mut *cs.lock().await);
    }

    /// A client connection is gone: its session is no longer renewed from
    /// it.
    fn connection_ended(&self, cs: &mut ConnState) {
        cs.ended = true;
        // Its address's count goes down now, not when its last stream task
        // lets go of it.
        cs.unbound = None;
        if let Some(b) = cs.bound.take() {
            self.unbind_live(&b.id, &cs.sink);
            // What the session's handles hold here is of no use once its
            // last connection is gone: a client resuming (here or on another
            // node) sends its unflushed writes again, and this node drops
            // its copy then. Until then it would keep those writes' share of
            // the node's write buffers, for up to the handle timeout.
            if !self.is_live(&b.id) {
                self.forget_session(&b.id);
            }
        }
    }

    async fn serve_stream(
        &self,
        cs: &tokio::sync::Mutex<ConnState>,
        share: &intake::ConnectionShare,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
    ) -> Result<(), StreamError> {
        let session = cs.lock().await.bound.is_some();
        let frame = tokio::select! {
            frame = self.requests.read(&mut recv, share, session) => frame,
            // The client gave up before its request was read in (it may
            // have been waiting for the node's request budget).
            _ = send.stopped() => return Ok(()),
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) if e.answerable() => {
                // Whatever more comes on this stream is not wanted.
                let _ = recv.stop(0u32.into());
                let mut out = self
                    .undecodable(e.to_string())
                    .encode_chunks()
                    .map_err(|e| StreamError(e.to_string()))?;
                send.write_all_chunks(&mut out)
                    .await
                    .map_err(|e| StreamError(e.to_string()))?;
                let _ = send.finish();
                return Ok(());
            }
            Err(e) => {
                // Whoever still reads the answer learns it will not come.
                let _ = send.reset(0u32.into());
                return Err(StreamError(e.to_string()));
            }
        };
        let gone = CancellationToken::new();
        // The frame keeps its share of the budget until it is answered.
        let work = self.serve_request(cs, frame.bytes.clone(), &gone);
        tokio::pin!(work);
        let mut out = tokio::select! {
            out = &mut work => out?,
            _ = send.stopped() => {
                // The client stopped reading (it gave up on the answer) or
                // the connection went. A blocking lock stops waiting; every
                // other request ends as it would have, so that none is cut
                // off half done.
                gone.cancel();
                work.await?
            }
        };
        drop(frame);
        send.write_all_chunks(&mut out)
            .await
            .map_err(|e| StreamError(e.to_string()))?;
        let _ = send.finish();
        Ok(())
    }

    /// Answers one request frame with one response frame, whatever the
    /// transport (QUIC streams, or memory in the protocol tests). The
    /// answer comes in pieces to send in order: a read's data is a view of
    /// the cached chunk, not a copy. `gone` is cancelled when nobody waits
    /// for the answer any more.
    pub async fn serve_request(
        &self,
        cs: &tokio::sync::Mutex<ConnState>,
        bytes: Bytes,
        gone: &CancellationToken,
    ) -> Result<Vec<Bytes>, StreamError> {
        let resp = match decode_frame_bytes(&bytes) {
            // One frame per stream: bytes after it would ride along, kept
            // alive by views of the frame (a write's data) but counted
            // nowhere.
            Ok(Some((_, used))) if used != bytes.len() => self.undecodable(format!(
                "{} bytes after the request frame: one frame per stream",
                bytes.len() - used
            )),
            Ok(Some((frame, _))) => match Request::decode(&frame) {
                Ok((header, req)) => {
                    let span = tracing::info_span!(
                        "native",
                        session = %header.session,
                        seq = header.seq,
                        op = req.name(),
                        handle = handle_of(&req).map(|h| h.0),
                    );
                    self.dispatch(cs, header, req, gone).instrument(span).await
                }
                Err(e) => self.undecodable(e.to_string()),
            },
            Ok(None) => self.undecodable("truncated frame".into()),
            Err(e) => self.undecodable(e.to_string()),
        };
        resp.encode_chunks().map_err(|e| StreamError(e.to_string()))
    }

    /// The answer to a frame that is not a request, counted as one.
    fn undecodable(&self, message: String) -> Response {
        let code = cairn_proto::ErrorCode::BadRequest;
        tracing::debug!(error = %message, "undecodable request");
        self.state
            .metrics
            .native_request("undecodable", code.as_str(), Duration::ZERO);
        Response::error(code, message)
    }

    async fn dispatch(
        &self,
        cs: &tokio::sync::Mutex<ConnState>,
        header: RequestHeader,
        req: Request,
        gone: &CancellationToken,
    ) -> Response {
        let started = Instant::now();
        let name = req.name();
        let (resp, result) = match ops::handle(self, cs, header, req, gone).await {
            Ok(r) => (r, "ok"),
            Err(e) => {
                if e.code == cairn_proto::ErrorCode::Internal {
                    tracing::error!(error = %e.message, "request failed");
                } else {
                    tracing::debug!(code = %e.code, error = %e.message, "request refused");
                }
                (Response::error(e.code, e.message), e.code.as_str())
            }
        };
        self.state
            .metrics
            .native_request(name, result, started.elapsed());
        tracing::trace!(
            op = name,
            elapsed_us = started.elapsed().as_micros() as u64,
            "done"
        );
        resp
    }

    /// The node-side state of `id`, loaded from metadata on first use.
    /// True if this node has served `id` for `session` (and so may hold
    /// its unflushed writes).
    fn holds(&self, id: HandleId, session: &SessionId) -> bool {
        match self.open.lock() {
            Ok(open) => open.get(&id).is_some_and(|e| e.session == *session),
            // Then `file` reports the poisoned table.
            Err(_) => true,
        }
    }

    /// Handle `id` as this node holds it for `bound`'s session, loaded
    /// from metadata on first use. A connection whose binding of the
    /// session is older than the one the node holds the handle under was
    /// superseded by a resume here: it gets `no_session`, and must not
    /// touch what the newer connection wrote.
    async fn file(
        &self,
        id: HandleId,
        bound: &Bound,
    ) -> crate::api::error::ApiResult<Arc<tokio::sync::Mutex<OpenFile>>> {
        if let Some(held) = self.held_file(id, bound)? {
            return Ok(held);
        }
        let file = Arc::new(tokio::sync::Mutex::new(
            OpenFile::load(&self.state, id, &bound.id, bound.binding).await?,
        ));
        let mut open = self.open.lock().map_err(|_| poisoned())?;
        // Another request may have loaded it meanwhile.
        if let Some(held) = held_entry(&mut open, id, bound)? {
            return Ok(held);
        }
        open.insert(
            id,
            OpenEntry {
                file: Arc::clone(&file),
                session: bound.id,
                binding: bound.binding,
                last_used: Instant::now(),
            },
        );
        Ok(file)
    }

    /// The handle as held for `bound`, if it is.
    fn held_file(
        &self,
        id: HandleId,
        bound: &Bound,
    ) -> crate::api::error::ApiResult<Option<Arc<tokio::sync::Mutex<OpenFile>>>> {
        held_entry(&mut *self.open.lock().map_err(|_| poisoned())?, id, bound)
    }

    /// A binding for a session resumed here: larger than any this node
    /// gave before (this process or, by the clock, an earlier one), and
    /// unlike any another node gives (the low 16 bits are the node id).
    fn new_binding(&self) -> u64 {
        let now_ms = u64::try_from(self.state.clock.now_ns() / 1_000_000).unwrap_or(0);
        let mut next = 0;
        let _ = self
            .last_binding
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
                next = last.saturating_add(1).max(now_ms);
                Some(next)
            });
        (next << 16) | (self.state.node_id & 0xffff)
    }

    fn forget(&self, id: HandleId) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    fn forget_session(&self, session: &SessionId) {
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, e| e.session != *session);
        }
    }

    /// Renews the sessions connected here; drops the node-side state of
    /// handles whose session has been away longer than the handle timeout
    /// (their unflushed writes are the client's to resend, and it is gone).
    async fn renew(&self) {
        let sessions: Vec<SessionId> = match self.live.lock() {
            Ok(l) => l.keys().copied().collect(),
            Err(_) => return,
        };
        if let Ok(mut open) = self.open.lock() {
            let timeout = self.handle_timeout;
            open.retain(|_, e| sessions.contains(&e.session) || e.last_used.elapsed() < timeout);
        }
        let began = Instant::now();
        if sessions.is_empty() {
            self.mark_renewed(began);
            return;
        }
        let cmd = Command::RenewSessions {
            sessions,
            now_ns: self.state.clock.now_ns(),
        };
        match self.state.committer.commit(cmd).await {
            // As of when it began: what the leader's expiry counts from.
            Ok(_) => self.mark_renewed(began),
            Err(e) => tracing::warn!(error = %e, "could not renew sessions"),
        }
    }

    fn mark_renewed(&self, at: Instant) {
        let ms = u64::try_from(at.duration_since(self.started).as_millis()).unwrap_or(u64::MAX);
        self.renewed_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Closes every client connection once this node has failed to renew
    /// its sessions for a while ([`cut_off_after`]). A node cut off from
    /// the others still answers its clients' keep-alives, so an idle
    /// client would stay on it while the leader, hearing nothing, expires
    /// its session and hands its locks and share modes to others. Closed
    /// (code 5), the client resumes on a node that can renew it, with the
    /// rest of the timeout left.
    fn leave_if_cut_off(&self) {
        let renewed = Duration::from_millis(self.renewed_ms.load(Ordering::Relaxed));
        let failing = self.started.elapsed().saturating_sub(renewed);
        if failing < self.cut_off_after {
            return;
        }
        let sinks: Vec<NoticeSink> = match self.live.lock() {
            Ok(live) => live.values().flatten().cloned().collect(),
            Err(_) => return,
        };
        if sinks.is_empty() {
            return;
        }
        tracing::warn!(
            connections = sinks.len(),
            failing_for = ?failing,
            "sessions not renewed: closing client connections so that they resume on another node"
        );
        for sink in &sinks {
            sink.close(5, "this node cannot reach the cluster");
        }
        // The connections' ends unbind their sessions; until a new one
        // binds (which takes a commit) there is nothing to renew.
        self.mark_renewed(Instant::now());
    }

    /// On the leader: ends sessions nobody renewed within the timeout.
    async fn expire(&self) {
        let raft = self.state.committer.raft();
        if raft.metrics().borrow().current_leader != Some(self.state.node_id) {
            return;
        }
        // A session's last renewal came at most one renewal period before
        // its connection was lost: waiting that much longer than the
        // timeout gives every client the whole handle timeout to come back.
        let expiry = self.handle_timeout + renew_every(self.handle_timeout);
        let now_ns = self.state.clock.now_ns();
        let timeout_ns = i64::try_from(expiry.as_nanos()).unwrap_or(i64::MAX);
        let snapshot = self.state.meta.snapshot();
        if let Ok(false) = crate::meta::sessions::any_expired(&snapshot, now_ns, timeout_ns) {
            return;
        }
        let cmd = Command::ExpireSessions { now_ns, timeout_ns };
        if let Err(e) = self.state.committer.commit(cmd).await {
            tracing::debug!(error = %e, "could not expire sessions");
        }
    }

    /// Renewal, expiry and the settling of provisional ETags until `stop`.
    pub async fn run_timers(self: Arc<Self>, stop: CancellationToken) {
        // A task of its own: hashing a large file must not hold up the
        // renewals that keep sessions alive. Stopped with the timers.
        let settle = tokio::spawn(settle::run(Arc::clone(&self.state), stop.clone()));
        self.timers(stop).await;
        if let Err(e) = settle.await {
            tracing::warn!(error = %e, "the ETag settler failed");
        }
    }

    async fn timers(self: &Arc<Self>, stop: CancellationToken) {
        let every = renew_every(self.handle_timeout);
        // Renewals and expiry wait on commits (up to the write timeout
        // each), so each runs on its own: neither may hold up the other,
        // nor the pushes, nor the check on how long renewals have failed.
        let renewals = tokio::spawn(Arc::clone(self).every(Timer::Renew, every, stop.clone()));
        let expiries = tokio::spawn(Arc::clone(self).every(Timer::Expire, every, stop.clone()));
        let mut push = tokio::time::interval(leases::PUSH_EVERY);
        push.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut cut_off = tokio::time::interval(every / 2);
        loop {
            tokio::select! {
                _ = push.tick() => self.push_breaks(),
                _ = cut_off.tick() => self.leave_if_cut_off(),
                () = stop.cancelled() => break,
            }
        }
        for task in [renewals, expiries] {
            if let Err(e) = task.await {
                tracing::warn!(error = %e, "a native-protocol timer failed");
            }
        }
    }

    /// Runs `timer` every `period` until `stop`.
    async fn every(self: Arc<Self>, timer: Timer, period: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                _ = tick.tick() => match timer {
                    Timer::Renew => self.renew().await,
                    Timer::Expire => self.expire().await,
                },
                () = stop.cancelled() => return,
            }
        }
    }
}

/// The periodic work that waits on commits, each run on its own task.
#[derive(Clone, Copy)]
enum Timer {
    Renew,
    Expire,
}

/// How long a node's renewals may fail before it closes its client
/// connections (see [`NativeServer::leave_if_cut_off`]): long enough for
/// one renewal to fail at its write timeout and the next to take as long
/// and succeed (an election, a slow commit), but never more than half of
/// what the leader waits before it expires a session, so that clients
/// have the other half to resume elsewhere. With the defaults: 30 s of
/// the 65 s.
fn cut_off_after(handle_timeout: Duration, write_timeout: Duration) -> Duration {
    let every = renew_every(handle_timeout);
    (handle_timeout / 3)
        .max(2 * (every + write_timeout))
        .min((handle_timeout + every) / 2)
}

/// How often a node renews the sessions connected to it. Often enough
/// that two missed rounds still beat the timeout; at most every 5 s, as a
/// session may outlive its connection by up to this much more than the
/// timeout (see `expire`).
fn renew_every(handle_timeout: Duration) -> Duration {
    (handle_timeout / 4).clamp(Duration::from_millis(250), Duration::from_secs(5))
}

#[cfg(test)]
mod tests;

fn handle_of(req: &Request) -> Option<HandleId> {
    match req {
        Request::Read(r) => Some(r.handle),
        Request::Write(w) => Some(w.handle),
        Request::Flush(h) | Request::Close(h) | Request::StatHandle(h) => Some(*h),
        Request::SetInfo(s) => Some(s.handle),
        Request::Lock(l) => Some(l.handle),
        Request::Unlock(u) => Some(u.handle),
        Request::LockRange(l) => Some(l.handle),
        Request::TestLock(t) => Some(t.handle),
        Request::LeaseAck(a) => Some(a.handle),
        _ => None,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(String);

/// Handle `id` in `open` as held for `bound` (`no_session` if a newer
/// connection of the session holds it), or `None` if not held for it.
fn held_entry(
    open: &mut HashMap<HandleId, OpenEntry>,
    id: HandleId,
    bound: &Bound,
) -> crate::api::error::ApiResult<Option<Arc<tokio::sync::Mutex<OpenFile>>>> {
    match open.get_mut(&id) {
        Some(e) if e.session == bound.id && e.binding == bound.binding => {
            e.last_used = Instant::now();
            Ok(Some(Arc::clone(&e.file)))
        }
        Some(e) if e.session == bound.id && e.binding > bound.binding => Err(superseded()),
        _ => Ok(None),
    }
}

fn poisoned() -> crate::api::error::ApiError {
    crate::api::error::ApiError::new(cairn_proto::ErrorCode::Internal, "handle table poisoned")
}

fn superseded() -> crate::api::error::ApiError {
    crate::api::error::ApiError::new(
        cairn_proto::ErrorCode::NoSession,
        "the session was resumed on a newer connection to this node",
    )
}
