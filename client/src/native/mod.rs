//! The native-protocol client: a session over QUIC that survives the loss
//! of the node it talks to.
//!
//! Every request goes to the current connection; when it breaks (or the
//! node stops answering), the client connects to the next node, resumes
//! its session there, sends again the writes no flush has acknowledged,
//! and repeats the request with the same sequence number, which the
//! cluster's replay table turns into "applied once". Application code sees
//! a slower call, not an error, unless no node answers within the failover
//! timeout.

mod conn;
mod file;
mod notices;
mod seqs;
mod source;
mod state;
mod target;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use cairn_proto::ErrorCode;
use cairn_proto::extents::Extents;
use cairn_proto::wire::{
    Attr, Disposition, FsStats, HandleId, LeaseBreak, Mkdir, Negotiate, Negotiated, Notice, Open,
    PROTOCOL_VERSION, PathReq, ReadDir, Rename, Request, RequestHeader, Response, SessionId,
    SessionSetup, SetPathInfo, Symlink, Write, access, capability, lease,
};
use file::IO_BYTES_MAX;
use futures::{StreamExt, TryStreamExt, stream};

pub use file::{FLUSH_BYTES, File, TransferProgress};
pub use source::Source;
pub use target::Target;

use crate::ClientError;
use state::FileState;

/// How long a call retries a node answering `Unavailable` before the
/// session moves to another node. An election makes every node refuse for
/// about a second, and moving then costs a reconnect and the unflushed
/// writes sent again; a node cut off from the rest of the cluster refuses
/// until the partition heals, while the others serve.
const REFUSING_NODE_LEFT_AFTER: Duration = Duration::from_secs(1);
/// How often a client that prefers the leader asks who leads.
const LEADER_CHECK: Duration = Duration::from_secs(5);
/// Handles whose unflushed writes a resumed session sends at once.
const RESEND_HANDLES_IN_FLIGHT: usize = 8;
/// Writes of one handle a resumed session sends at once.
const RESENDS_PER_HANDLE: usize = 8;

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// Nodes' QUIC addresses (`host:port`); any one is enough to start.
    pub nodes: Vec<String>,
    /// The cluster CA's certificate (`ca.pem`).
    pub ca: PathBuf,
    pub token: String,
    pub share: String,
    /// How long calls keep trying other nodes before failing.
    pub failover_timeout: Duration,
    /// How long one request may take on a live connection.
    pub request_timeout: Duration,
    /// Put the session on the metadata leader when the node first reached
    /// names it (and it is one of `nodes`): metadata requests then skip a
    /// forward between nodes. For metadata-heavy users such as a mount.
    /// When the leader changes, the session follows within seconds, as
    /// after a lost connection.
    pub prefer_leader: bool,
}

impl NativeConfig {
    pub fn new(nodes: Vec<String>, ca: PathBuf, token: String, share: String) -> Self {
        Self {
            nodes,
            ca,
            token,
            share,
            failover_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(60),
            prefer_leader: false,
        }
    }
}

/// A session with the cluster. Cheap to clone; clones share the session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: NativeConfig,
    endpoint: quinn::Endpoint,
    session: SessionId,
    seqs: Arc<seqs::Seqs>,
    current: tokio::sync::Mutex<Current>,
    /// Open files' state: unflushed writes (sent again after a
    /// reconnect) and leases.
    files: Mutex<HashMap<HandleId, Arc<FileState>>>,
    /// Lease breaks for handles whose open has not returned yet.
    early_breaks: Mutex<notices::Early>,
    /// Where connections put the server's notices.
    notices: tokio::sync::mpsc::Sender<Notice>,
    /// Lease breaks, for whoever caches (a mount's page cache).
    breaks: tokio::sync::broadcast::Sender<LeaseBreak>,
    next_node: AtomicUsize,
    /// The session exists on the cluster: later connections resume it.
    established: AtomicBool,
    /// Reconnects so far (for tests and metrics).
    reconnects: AtomicU64,
}

#[derive(Default)]
struct Current {
    generation: u64,
    conn: Option<quinn::Connection>,
    node: String,
    /// The node whose connection just failed: tried last next time.
    failed: Option<String>,
}

/// Options for [`Client::open`], like `std::fs::OpenOptions`.
#[derive(Clone, Copy, Debug)]
pub struct OpenOptions {
    pub disposition: Disposition,
    pub access: u8,
    pub share_access: u8,
    pub append: bool,
    /// Remove the file's name at close (needs `access::DELETE`).
    pub delete_on_close: bool,
    pub mode: u32,
    /// The lease wanted (`wire::lease` bits); see [`File::lease`].
    pub lease: u8,
}

impl OpenOptions {
    pub fn read() -> Self {
        Self {
            disposition: Disposition::Open,
            access: access::READ,
            share_access: access::READ | access::WRITE | access::DELETE,
            append: false,
            delete_on_close: false,
            mode: 0o644,
            lease: lease::NONE,
        }
    }

    /// Create or truncate, for reading and writing.
    pub fn create() -> Self {
        Self {
            disposition: Disposition::Create,
            access: access::READ | access::WRITE,
            ..Self::read()
        }
    }

    pub fn with(mut self, disposition: Disposition) -> Self {
        self.disposition = disposition;
        self
    }

    /// Asks for a lease (`wire::lease` bits).
    pub fn lease(mut self, wanted: u8) -> Self {
        self.lease = wanted;
        self
    }
}

impl Client {
    /// Connects to one of the nodes and sets up a new session.
    pub async fn connect(cfg: NativeConfig) -> Result<Self, ClientError> {
        Self::start(cfg, SessionId(rand::random()), false).await
    }

    /// Resumes `session`, set up by another client, on a connection of its
    /// own. The other client's connection is done with from then on (see
    /// PROTOCOL.md, "resume"); its handles are not this client's. For
    /// tests of a session taken over: this client numbers its requests
    /// from 1 again, so the replay table could answer its state changes
    /// with the other client's results.
    #[doc(hidden)]
    pub async fn resume_session(
        cfg: NativeConfig,
        session: SessionId,
    ) -> Result<Self, ClientError> {
        Self::start(cfg, session, true).await
    }

    async fn start(
        cfg: NativeConfig,
        session: SessionId,
        established: bool,
    ) -> Result<Self, ClientError> {
        if cfg.nodes.is_empty() {
            return Err(ClientError::Invalid("no node addresses".into()));
        }
        let endpoint = conn::client_endpoint(&cfg.ca)?;
        let (notices, queue) = tokio::sync::mpsc::channel(notices::QUEUE_DEPTH);
        let client = Self {
            inner: Arc::new(Inner {
                early_breaks: Mutex::new(notices::Early::default()),
                notices,
                breaks: tokio::sync::broadcast::channel(notices::QUEUE_DEPTH).0,
                cfg,
                endpoint,
                session,
                seqs: Arc::new(seqs::Seqs::new()),
                current: tokio::sync::Mutex::new(Current::default()),
                files: Mutex::new(HashMap::new()),
                next_node: AtomicUsize::new(0),
                established: AtomicBool::new(established),
                reconnects: AtomicU64::new(0),
            }),
        };
        tokio::spawn(notices::run(Arc::downgrade(&client.inner), queue));
        if client.inner.cfg.prefer_leader {
            tokio::spawn(follow_leader(Arc::downgrade(&client.inner)));
        }
        let deadline = Instant::now() + client.inner.cfg.failover_timeout;
        client.connection(deadline).await?;
        Ok(client)
    }

    /// Lease breaks of this session's handles, as they arrive (after the
    /// client flushed what a write lease kept, before it acknowledges).
    pub fn lease_breaks(&self) -> tokio::sync::broadcast::Receiver<LeaseBreak> {
        self.inner.breaks.subscribe()
    }

    pub fn session(&self) -> SessionId {
        self.inner.session
    }

    /// Times this client moved to another connection.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// The node the session is on now.
    pub async fn current_node(&self) -> String {
        self.inner.current.lock().await.node.clone()
    }

    /// The live connection, or a new one with the session resumed on it.
    async fn connection(&self, deadline: Instant) -> Result<(u64, quinn::Connection), ClientError> {
        let mut cur = self.inner.current.lock().await;
        if let Some(c) = &cur.conn
            && c.close_reason().is_none()
        {
            return Ok((cur.generation, c.clone()));
        }
        let nodes = &self.inner.cfg.nodes;
        let mut last = String::from("no node tried");
        let mut pause = Duration::from_millis(50);
        let mut round = 0;
        // At most one move to the leader per reconnect: the leader may
        // change while the client follows it.
        let mut follow_leader = self.inner.cfg.prefer_leader;
        loop {
            for _ in 0..nodes.len() {
                let i = self.inner.next_node.fetch_add(1, Ordering::Relaxed) % nodes.len();
                // A dead node costs a connect timeout: for the first rounds,
                // the one that just failed waits until the others did.
                if round < 5 && nodes.len() > 1 && cur.failed.as_deref() == Some(nodes[i].as_str())
                {
                    continue;
                }
                match self.establish(&nodes[i], follow_leader).await {
                    Ok(conn) => {
                        if cur.generation > 0 {
                            self.inner.reconnects.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(node = %nodes[i], session = %self.inner.session, "session resumed");
                        }
                        // Stay on this node next time.
                        self.inner.next_node.store(i, Ordering::Relaxed);
                        cur.generation += 1;
                        cur.conn = Some(conn.clone());
                        // Notices (breaks missed while away too) come on
                        // this connection; its loss starts a reconnect.
                        notices::accept(conn.clone(), cur.generation, Arc::downgrade(&self.inner));
                        // A node gone silent is given up on a timeout after
                        // its last datagram (see `close_when_silent`).
                        cairn_quic::close_when_silent(conn.clone(), conn::IDLE_TIMEOUT);
                        cur.node = nodes[i].clone();
                        cur.failed = None;
                        return Ok((cur.generation, conn));
                    }
                    Err(Establish::Fatal(e)) => return Err(e),
                    Err(Establish::Leader(leader)) => {
                        tracing::debug!(node = %nodes[i], leader = %nodes[leader], "moving to the metadata leader");
                        follow_leader = false;
                        self.inner.next_node.store(leader, Ordering::Relaxed);
                    }
                    Err(Establish::Retry(m)) => {
                        tracing::debug!(node = %nodes[i], error = %m, "node not usable");
                        last = m;
                    }
                }
            }
            round += 1;
            if Instant::now() + pause > deadline {
                return Err(ClientError::Connection(format!(
                    "no node could resume the session: {last}"
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    /// Connects to `node`, negotiates, sets up or resumes the session and
    /// sends again every write not yet flushed. With `follow_leader`, a
    /// node that names another of `nodes` as the leader is left for it
    /// before the session is set up.
    async fn establish(
        &self,
        node: &str,
        follow_leader: bool,
    ) -> Result<quinn::Connection, Establish> {
        let inner = &self.inner;
        let conn = conn::connect(&inner.endpoint, node)
            .await
            .map_err(|l| Establish::Retry(l.message))?;
        let t = inner.cfg.request_timeout;
        let header = RequestHeader {
            session: inner.session,
            seq: 0,
        };
        let negotiated = expect_ok(conn::exchange(&conn, &header, &negotiate(), t).await)?;
        if let Response::Negotiated(n) = &negotiated
            && follow_leader
            && let Some(i) = leader_index(&inner.cfg.nodes, n, node)
        {
            conn.close(0u32.into(), b"moving to the metadata leader");
            return Err(Establish::Leader(i));
        }
        let resume = inner.established.load(Ordering::Relaxed);
        let setup = Request::SessionSetup(SessionSetup {
            token: inner.cfg.token.clone(),
            share: inner.cfg.share.clone(),
            resume,
        });
        let started = Instant::now();
        match conn::exchange(&conn, &header, &setup, t).await {
            // An earlier attempt of this client's, given up on (its node
            // cut off, say), bound the session while this one was under
            // way: the next attempt binds after it.
            Ok(Response::Error(e)) if resume && e.code == ErrorCode::PreconditionFailed => {
                return Err(Establish::Retry(e.message));
            }
            answer => expect_ok(answer)?,
        };
        tracing::debug!(node, resume, took = ?started.elapsed(), "session set up");
        inner.established.store(true, Ordering::Relaxed);
        let files: Vec<(HandleId, Arc<FileState>)> = match inner.files.lock() {
            Ok(f) => f.iter().map(|(h, u)| (*h, Arc::clone(u))).collect(),
            Err(_) => Vec::new(),
        };
        // Handles go side by side: a node keeps each handle's writes apart
        // until its flush, so their order across handles never mattered.
        // One write at a time, 16 busy writers took 10 s to resume.
        let conn_ref = &conn;
        let started = Instant::now();
        stream::iter(files)
            .map(|(handle, state)| async move {
                let pending = state.unflushed.pending(handle);
                match resend(conn_ref, header, t, handle, pending).await {
                    Err(Establish::Fatal(ClientError::Protocol {
                        code: ErrorCode::StaleHandle,
                        ..
                    })) => {
                        // Closed by a close whose answer was lost (the
                        // close flushed), or expired while the client was
                        // away: later calls on it get `stale_handle`, and
                        // the session goes on.
                        tracing::info!(%handle, "the handle is gone; its unflushed writes with it");
                        state.unflushed.clear();
                        self.forget_file(handle);
                        Ok(())
                    }
                    other => other,
                }
            })
            .buffer_unordered(RESEND_HANDLES_IN_FLIGHT)
            .try_for_each(|()| std::future::ready(Ok(())))
            .await?;
        tracing::debug!(node, took = ?started.elapsed(), "unflushed writes sent again");
        Ok(conn)
    }

    /// Asks the connected node who leads; when it names another of
    /// `nodes`, resumes the session there, as after a lost connection
    /// (every unflushed write is sent again; calls in flight retry). A
    /// client with [`NativeConfig::prefer_leader`] does this every few
    /// seconds while it holds no unflushed writes.
    pub async fn move_to_leader(&self) {
        let (generation, conn, node) = {
            let cur = self.inner.current.lock().await;
            match &cur.conn {
                Some(c) if c.close_reason().is_none() => {
                    (cur.generation, c.clone(), cur.node.clone())
                }
                _ => return,
            }
        };
        let header = RequestHeader {
            session: self.inner.session,
            seq: 0,
        };
        let t = self.inner.cfg.request_timeout;
        let Ok(Response::Negotiated(n)) = conn::exchange(&conn, &header, &negotiate(), t).await
        else {
            return;
        };
        let Some(i) = leader_index(&self.inner.cfg.nodes, &n, &node) else {
            return;
        };
        let leader = &self.inner.cfg.nodes[i];
        // A leader out of this client's reach (a cut link) would cost a
        // connect timeout with every call waiting, then a move back here.
        match conn::connect(&self.inner.endpoint, leader).await {
            Ok(c) => c.close(0u32.into(), b"reachable"),
            Err(e) => {
                tracing::debug!(leader = %leader, error = %e.message, "the metadata leader is out of reach; staying");
                return;
            }
        }
        tracing::info!(from = %node, to = %leader, "moving the session to the metadata leader");
        self.inner.next_node.store(i, Ordering::Relaxed);
        if self.drop_connection(generation).await {
            // At once, not at the next call: lease breaks come on the
            // connection, and a session with none is not renewed.
            let deadline = Instant::now() + self.inner.cfg.failover_timeout;
            if let Err(e) = self.connection(deadline).await {
                tracing::warn!(error = %e, "could not reconnect; the next call tries again");
            }
        }
    }

    /// True if some open file has writes no flush acknowledged.
    fn holds_unflushed(&self) -> bool {
        match self.inner.files.lock() {
            Ok(f) => f.values().any(|state| !state.unflushed.is_empty()),
            Err(_) => true,
        }
    }

    /// Gives up on connection `generation`; false if it is already gone.
    async fn drop_connection(&self, generation: u64) -> bool {
        self.leave_connection(generation, true).await
    }

    /// Closes connection `generation`; with `node_failed`, the next
    /// reconnect tries the other nodes first.
    async fn leave_connection(&self, generation: u64, node_failed: bool) -> bool {
        let mut cur = self.inner.current.lock().await;
        if cur.generation == generation
            && let Some(c) = cur.conn.take()
        {
            c.close(0u32.into(), b"giving up on this node");
            if node_failed {
                cur.failed = Some(cur.node.clone());
            }
            return true;
        }
        false
    }

    /// Sends `req` until some node answers it or the failover timeout
    /// passes. State changes take the next sequence number, kept across
    /// retries.
    pub(crate) async fn call(&self, req: Request) -> Result<Response, ClientError> {
        if !req.is_sequenced() {
            return self.call_with(req, 0).await;
        }
        // Held until the answer: see `seqs`.
        let held = self.hold_seq().await;
        self.call_with(req, held.seq).await
    }

    /// The session's next sequence number, at once (for protocol tools and
    /// tests; the typed methods number their requests themselves).
    pub fn next_seq(&self) -> u64 {
        self.inner.seqs.next_unchecked()
    }

    /// The next sequence number, held until the guard drops (see `seqs`).
    pub(crate) async fn hold_seq(&self) -> seqs::Held {
        self.inner.seqs.hold().await
    }

    /// Sends a request with an explicit sequence number (0 for none), with
    /// the same failover as every call. For protocol tools and tests: the
    /// typed methods number requests themselves.
    pub async fn request(&self, req: Request, seq: u64) -> Result<Response, ClientError> {
        self.call_with(req, seq).await
    }

    pub(crate) async fn call_with(&self, req: Request, seq: u64) -> Result<Response, ClientError> {
        Ok(self.call_answer(req, seq).await?.into_response())
    }

    /// [`Client::call_with`], with a read's data left in the pieces it
    /// arrived in.
    pub(crate) async fn call_answer(
        &self,
        req: Request,
        seq: u64,
    ) -> Result<conn::Answer, ClientError> {
        let header = RequestHeader {
            session: self.inner.session,
            seq,
        };
        let deadline = Instant::now() + self.inner.cfg.failover_timeout;
        let mut pause = Duration::from_millis(20);
        // The connection this call is on, and since when.
        let mut here = (0, Instant::now());
        // Resumed once already because the connection had lost the session.
        let mut rebound = false;
        loop {
            let (generation, conn) = self.connection(deadline).await?;
            if here.0 != generation {
                here = (generation, Instant::now());
            }
            let answer =
                conn::exchange_answer(&conn, &header, &req, self.inner.cfg.request_timeout).await;
            match answer {
                Ok(conn::Answer::Whole(Response::Error(e)))
                    if e.code == ErrorCode::Unavailable && Instant::now() < deadline =>
                {
                    if here.1.elapsed() >= REFUSING_NODE_LEFT_AFTER {
                        // Cut off from the others, or unable to store:
                        // the node is up, but another may serve.
                        tracing::info!(error = %e.message, "the node keeps refusing; moving the session");
                        self.drop_connection(generation).await;
                        pause = Duration::from_millis(20);
                        continue;
                    }
                    // No leader just now: the cluster is failing over.
                    tracing::debug!(error = %e.message, "unavailable; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(250));
                }
                Ok(conn::Answer::Whole(Response::Error(e)))
                    if e.code == ErrorCode::NoSession
                        && !rebound
                        && !matches!(req, Request::Logoff)
                        && Instant::now() < deadline =>
                {
                    // The session was resumed on another connection (an
                    // attempt this client gave up on, landing late) or this
                    // one lost its binding: this connection is done with.
                    // Resuming binds the session here again and sends the
                    // unflushed writes; if the session is really gone, the
                    // resume says so.
                    tracing::info!(error = %e.message, "the connection lost its session; resuming");
                    rebound = true;
                    // The node is fine: resume on it again.
                    self.leave_connection(generation, false).await;
                }
                Ok(conn::Answer::Whole(Response::Error(e))) => {
                    return Err(ClientError::Protocol {
                        code: e.code,
                        message: e.message,
                    });
                }
                Ok(answer) => return Ok(answer),
                Err(lost) if lost.unsendable => return Err(ClientError::Invalid(lost.message)),
                Err(lost) => {
                    tracing::debug!(error = %lost.message, "connection lost; failing over");
                    self.drop_connection(generation).await;
                    if Instant::now() >= deadline {
                        return Err(ClientError::Connection(lost.message));
                    }
                }
            }
        }
    }

    pub async fn open(&self, path: &str, opts: OpenOptions) -> Result<File, ClientError> {
        let resp = self
            .call(Request::Open(Open {
                path: path.to_owned(),
                disposition: opts.disposition,
                access: opts.access,
                share_access: opts.share_access,
                flags: open_flags(&opts),
                mode: opts.mode,
                lease: opts.lease,
            }))
            .await?;
        match resp {
            Response::Opened(o) => {
                // Both under the files lock, as the notice task looks for
                // the file: a break between them would be lost.
                let mut granted = o.lease;
                let state = match self.inner.files.lock() {
                    Ok(mut files) => {
                        if let Ok(mut early) = self.inner.early_breaks.lock()
                            && let Some(to) = early.take(o.handle)
                        {
                            granted &= to;
                        }
                        let state = Arc::new(FileState::new(granted));
                        files.insert(o.handle, Arc::clone(&state));
                        state
                    }
                    Err(_) => Arc::new(FileState::new(granted)),
                };
                Ok(File::new(
                    self.clone(),
                    (o.handle, o.attr, o.created),
                    state,
                    opts.append,
                ))
            }
            other => Err(unexpected(&other)),
        }
    }

    fn forget_file(&self, handle: HandleId) {
        if let Ok(mut f) = self.inner.files.lock() {
            f.remove(&handle);
        }
    }

    pub async fn metadata(&self, path: &str) -> Result<Attr, ClientError> {
        match self
            .call(Request::Stat(PathReq {
                path: path.to_owned(),
            }))
            .await?
        {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Every entry of a directory, page by page.
    pub async fn read_dir(&self, path: &str) -> Result<Vec<Attr>, ClientError> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let req = Request::ReadDir(ReadDir {
                path: path.to_owned(),
                after: after.take(),
                limit: 1000,
            });
            match self.call(req).await? {
                Response::DirPage(p) => {
                    out.extend(p.entries);
                    match p.next_after {
                        Some(n) => after = Some(n),
                        None => return Ok(out),
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    pub async fn create_dir(&self, path: &str) -> Result<(), ClientError> {
        self.create_dir_mode(path, 0o755).await
    }

    /// Creates a directory (and missing parents) with permission bits `mode`.
    pub async fn create_dir_mode(&self, path: &str, mode: u32) -> Result<(), ClientError> {
        self.done(Request::Mkdir(Mkdir {
            path: path.to_owned(),
            mode,
        }))
        .await
    }

    /// Sets the mode and/or modification time of a file or directory by
    /// path (for an open file, [`File::set_attr`] orders it after the
    /// handle's writes).
    pub async fn set_attr(
        &self,
        path: &str,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr, ClientError> {
        let req = Request::SetPathInfo(SetPathInfo {
            path: path.to_owned(),
            mtime_ns,
            mode,
        });
        match self.call(req).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn rename(&self, from: &str, to: &str, replace: bool) -> Result<(), ClientError> {
        self.done(Request::Rename(Rename {
            from: from.to_owned(),
            to: to.to_owned(),
            replace,
        }))
        .await
    }

    /// Makes a symbolic link at `path` standing for `target` (the parent
    /// directory must exist). Cairn never follows links itself.
    pub async fn symlink(&self, path: &str, target: &str) -> Result<Attr, ClientError> {
        let req = Request::Symlink(Symlink {
            path: path.to_owned(),
            target: target.to_owned(),
        });
        match self.call(req).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// The share's size and free space, as the node answering sees its disk.
    pub async fn fs_stats(&self) -> Result<FsStats, ClientError> {
        match self.call(Request::StatFs).await? {
            Response::FsStats(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// What the symbolic link at `path` stands for.
    pub async fn read_link(&self, path: &str) -> Result<String, ClientError> {
        let req = Request::ReadLink(PathReq {
            path: path.to_owned(),
        });
        match self.call(req).await? {
            Response::LinkTarget(t) => Ok(t.target),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn remove(&self, path: &str) -> Result<(), ClientError> {
        self.done(Request::Remove(PathReq {
            path: path.to_owned(),
        }))
        .await
    }

    /// Ends the session: its handles close, its replay table is dropped.
    pub async fn logoff(&self) -> Result<(), ClientError> {
        match self.done(Request::Logoff).await {
            // A logoff applied by a node that died before answering: the
            // retry finds no session to resume. Either way it is gone.
            Err(ClientError::Protocol {
                code: ErrorCode::NoSession,
                ..
            }) => Ok(()),
            other => other,
        }
    }

    async fn done(&self, req: Request) -> Result<(), ClientError> {
        match self.call(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}

fn open_flags(opts: &OpenOptions) -> u8 {
    use cairn_proto::wire::open_flags::{APPEND, DELETE_ON_CLOSE};
    let mut flags = 0;
    if opts.append {
        flags |= APPEND;
    }
    if opts.delete_on_close {
        flags |= DELETE_ON_CLOSE;
    }
    flags
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The notice reader holds the connection too: close it, or it
        // would stay up on keep-alives.
        if let Some(c) = self.current.get_mut().conn.take() {
            c.close(0u32.into(), b"client gone");
        }
    }
}

/// What a client sends first on every connection.
/// Connects to `node` and negotiates, setting up no session, then waits
/// for the node to close the connection; returns its application close
/// code (`None`: closed some other way). For tests of a node's limits.
#[doc(hidden)]
pub async fn negotiate_only(cfg: &NativeConfig, node: &str) -> Result<Option<u64>, ClientError> {
    let endpoint = conn::client_endpoint(&cfg.ca)?;
    let c = conn::connect(&endpoint, node)
        .await
        .map_err(|l| ClientError::Connection(l.message))?;
    let header = RequestHeader::default();
    match conn::exchange(&c, &header, &negotiate(), Duration::from_secs(10)).await {
        Ok(Response::Negotiated(_)) => {}
        Ok(other) => return Err(ClientError::Invalid(format!("{other:?}"))),
        Err(l) => return Err(ClientError::Connection(l.message)),
    }
    Ok(match c.closed().await {
        quinn::ConnectionError::ApplicationClosed(a) => Some(a.error_code.into_inner()),
        _ => None,
    })
}

/// A connection to `node`, negotiated and, with `session`, bound to a new
/// session of its own: for tests that speak the protocol by hand.
#[doc(hidden)]
pub async fn raw_connection(
    cfg: &NativeConfig,
    node: &str,
    session: bool,
) -> Result<quinn::Connection, ClientError> {
    raw_connection_from(cfg, node, ([0, 0, 0, 0], 0).into(), session).await
}

/// [`raw_connection`] sending from `bind`.
#[doc(hidden)]
pub async fn raw_connection_from(
    cfg: &NativeConfig,
    node: &str,
    bind: std::net::SocketAddr,
    session: bool,
) -> Result<quinn::Connection, ClientError> {
    let endpoint = conn::client_endpoint_at(&cfg.ca, bind)?;
    let c = conn::connect(&endpoint, node)
        .await
        .map_err(|l| ClientError::Connection(l.message))?;
    let header = RequestHeader {
        session: SessionId(rand::random()),
        seq: 0,
    };
    let t = Duration::from_secs(10);
    let mut steps = vec![negotiate()];
    if session {
        steps.push(Request::SessionSetup(SessionSetup {
            token: cfg.token.clone(),
            share: cfg.share.clone(),
            resume: false,
        }));
    }
    for req in steps {
        match conn::exchange(&c, &header, &req, t).await {
            Ok(Response::Error(e)) => {
                return Err(ClientError::Protocol {
                    code: e.code,
                    message: e.message,
                });
            }
            Ok(_) => {}
            Err(l) => return Err(ClientError::Connection(l.message)),
        }
    }
    Ok(c)
}

fn negotiate() -> Request {
    Request::Negotiate(Negotiate {
        versions: vec![PROTOCOL_VERSION],
        capabilities: capability::LEASES | capability::SYMLINKS | capability::POSIX_LOCKS,
        client: format!("cairn-client/{}", env!("CARGO_PKG_VERSION")),
    })
}

/// The index in `nodes` of the leader `n` names, unless that is `node`
/// (the one that answered) or not in the list.
fn leader_index(nodes: &[String], n: &Negotiated, node: &str) -> Option<usize> {
    let leader = n.leader.as_deref().filter(|l| *l != node)?;
    nodes.iter().position(|a| a == leader)
}

/// Moves the session to the metadata leader whenever another node leads
/// (see [`NativeConfig::prefer_leader`]), until the client is gone.
async fn follow_leader(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(LEADER_CHECK).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        // Moving sends every unflushed write again: a busy writer stays
        // until it has flushed (a failover would cost it the same).
        if client.holds_unflushed() {
            continue;
        }
        client.move_to_leader().await;
    }
}

enum Establish {
    Retry(String),
    Fatal(ClientError),
    /// The node named the leader: `nodes[i]`.
    Leader(usize),
}

/// A setup step's answer: errors that another node would repeat (a bad
/// token, an expired session) are fatal; the rest mean "try elsewhere".
/// Sends one handle's unflushed writes again. Positional writes are
/// merged first (the latest winning where they overlap, as on the node)
/// and go as runs of up to [`IO_BYTES_MAX`], several at once: a busy
/// random writer holds thousands of small writes, and one at a time they
/// took 10 s to resume. With an append among them, they go one by one,
/// in the order [`state::Unflushed::pending`] gives (appends land in
/// arrival order).
async fn resend(
    conn: &quinn::Connection,
    header: RequestHeader,
    t: Duration,
    handle: HandleId,
    writes: Vec<(u64, Request)>,
) -> Result<(), Establish> {
    if writes.iter().any(|(seq, _)| *seq != 0) {
        for (seq, w) in writes {
            let h = RequestHeader { seq, ..header };
            expect_ok(conn::exchange(conn, &h, &w, t).await)?;
        }
        return Ok(());
    }
    let mut merged = Extents::default();
    for (_, w) in writes {
        if let Request::Write(w) = w {
            merged.insert(w.offset, w.data);
        }
    }
    stream::iter(merged.runs(IO_BYTES_MAX))
        .map(|(offset, data)| async move {
            let w = Request::Write(Write {
                handle,
                offset,
                data,
            });
            expect_ok(conn::exchange(conn, &header, &w, t).await).map(drop)
        })
        .buffer_unordered(RESENDS_PER_HANDLE)
        .try_for_each(|()| std::future::ready(Ok(())))
        .await
}

fn expect_ok(r: Result<Response, conn::Lost>) -> Result<Response, Establish> {
    match r {
        Ok(Response::Error(e)) if e.code == ErrorCode::Unavailable => {
            Err(Establish::Retry(e.message))
        }
        Ok(Response::Error(e)) => Err(Establish::Fatal(ClientError::Protocol {
            code: e.code,
            message: e.message,
        })),
        Ok(resp) => Ok(resp),
        Err(l) => Err(Establish::Retry(l.message)),
    }
}

fn unexpected(resp: &Response) -> ClientError {
    ClientError::Connection(format!("unexpected answer {:#06x}", resp.kind()))
}
