//! The native protocol over an in-memory pair: request frames go straight
//! into a real single-node server (RocksDB, Raft, local chunk store, in a
//! temporary directory) and response frames come straight back; notices
//! arrive on a queue. No sockets. Every operation and every error a client
//! can cause is covered here; the QUIC transport, failover and replication
//! are covered by `tests/tests/native.rs` and `tests/tests/leases.rs`.

#![allow(clippy::unwrap_used)]

mod budgets;
mod errors;
mod group_commit;
mod ops;
mod posix_locks;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::ErrorCode;
use cairn_proto::wire::{
    Disposition, Negotiate, Notice, Open, Opened, PROTOCOL_VERSION, Request, RequestHeader,
    Response, SessionId, SessionReady, SessionSetup, access, decode_frame,
};
use tokio_util::sync::CancellationToken;

use super::{ConnState, NoticeSink};
use crate::config::{Config, FileConfig};
use crate::node::Node;

pub const TOKEN: &str = "test-token-read-write-0123456789";
pub const READ_TOKEN: &str = "test-token-read-only-0123456789";

/// A single-node server in a temporary directory.
pub struct Server {
    pub node: Option<Node>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with("").await
    }

    /// With more lines for the `[cluster]` table.
    pub async fn start_with(cluster: &str) -> Self {
        Self::start_configured("", cluster).await
    }

    /// With more top-level lines, and more for the `[cluster]` table.
    pub async fn start_configured(top: &str, cluster: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
{top}
node_id = 1
data_dir = "{}"
http_listen = "127.0.0.1:0"
[[shares]]
name = "default"
tokens = [
  {{ token = "{TOKEN}", access = "read_write" }},
  {{ token = "{READ_TOKEN}", access = "read" }},
]
[[shares]]
name = "other"
tokens = []
[cluster]
{cluster}
"#,
            dir.path().display()
        );
        let file: FileConfig = toml::from_str(&text).unwrap();
        let config = Config::validate(file, None).unwrap();
        let node = Node::start(&config, None, CancellationToken::new())
            .await
            .unwrap();
        Self {
            node: Some(node),
            _dir: dir,
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    /// A new connection (not yet negotiated) for a new session id.
    pub fn connect(&self) -> Conn {
        self.connect_as(SessionId(rand::random()))
    }

    /// A new connection that will set up (or resume) session `session`.
    pub fn connect_as(&self, session: SessionId) -> Conn {
        let (sink, notices) = NoticeSink::memory(16);
        Conn {
            server: Arc::clone(&self.node().native),
            state: tokio::sync::Mutex::new(ConnState::new(sink)),
            notices,
            session,
            seq: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// A connection with a session set up on share `default`.
    pub async fn session(&self) -> Conn {
        let c = self.connect();
        c.setup(TOKEN, "default", false).await.unwrap();
        c
    }

    pub async fn stop(mut self) {
        if let Some(n) = self.node.take() {
            n.stop().await;
        }
    }
}

/// One client connection, in memory.
pub struct Conn {
    server: Arc<super::NativeServer>,
    state: tokio::sync::Mutex<ConnState>,
    pub notices: tokio::sync::mpsc::Receiver<Notice>,
    pub session: SessionId,
    seq: std::sync::atomic::AtomicU64,
}

/// An answer's pieces, decoded.
pub fn decode_answer(pieces: &[Bytes]) -> Response {
    let out = pieces.concat();
    let (frame, used) = decode_frame(&out).unwrap().unwrap();
    assert_eq!(used, out.len(), "one frame per answer");
    Response::decode(&frame).unwrap()
}

impl Conn {
    /// Sends raw bytes, returns the decoded answer.
    pub async fn raw(&self, bytes: &[u8]) -> Response {
        self.raw_until(bytes, &CancellationToken::new()).await
    }

    /// Sends raw bytes, as a client that stops waiting for the answer when
    /// `gone` is cancelled.
    pub async fn raw_until(&self, bytes: &[u8], gone: &CancellationToken) -> Response {
        let out = self
            .server
            .serve_request(&self.state, Bytes::copy_from_slice(bytes), gone)
            .await
            .unwrap();
        decode_answer(&out)
    }

    /// The answer to `req` (not sequenced) in the pieces the node would
    /// send, not yet taken by the client.
    pub async fn pieces(&self, req: &Request) -> Vec<Bytes> {
        let header = RequestHeader {
            session: self.session,
            seq: 0,
        };
        let bytes = req.encode(&header).unwrap();
        self.server
            .serve_request(&self.state, Bytes::from(bytes), &CancellationToken::new())
            .await
            .unwrap()
    }

    /// Sends `req` with `seq` (0: none).
    pub async fn with_seq(&self, seq: u64, req: &Request) -> Response {
        let header = RequestHeader {
            session: self.session,
            seq,
        };
        self.raw(&req.encode(&header).unwrap()).await
    }

    /// Sends `req`, numbered if it is sequenced.
    pub async fn call(&self, req: Request) -> Response {
        let seq = if req.is_sequenced() {
            self.next_seq()
        } else {
            0
        };
        self.with_seq(seq, &req).await
    }

    pub fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `req` and expects an error; returns its code.
    pub async fn fails(&self, req: Request) -> ErrorCode {
        match self.call(req).await {
            Response::Error(e) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    pub async fn done(&self, req: Request) {
        match self.call(req).await {
            Response::Done => {}
            other => panic!("expected done, got {other:?}"),
        }
    }

    pub async fn setup(
        &self,
        token: &str,
        share: &str,
        resume: bool,
    ) -> Result<SessionReady, ErrorCode> {
        let n = Request::Negotiate(Negotiate {
            versions: vec![PROTOCOL_VERSION],
            capabilities: 0,
            client: "in-memory test".into(),
        });
        assert!(matches!(
            self.with_seq(0, &n).await,
            Response::Negotiated(_)
        ));
        let s = Request::SessionSetup(SessionSetup {
            token: token.into(),
            share: share.into(),
            resume,
        });
        match self.with_seq(0, &s).await {
            Response::SessionReady(r) => Ok(r),
            Response::Error(e) => Err(e.code),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub async fn open(&self, path: &str, disposition: Disposition, acc: u8) -> Opened {
        self.open_leased(path, disposition, acc, 0).await
    }

    /// [`Conn::open`], asking for `lease`.
    pub async fn open_leased(
        &self,
        path: &str,
        disposition: Disposition,
        acc: u8,
        lease: u8,
    ) -> Opened {
        match self.call(open_req(path, disposition, acc, lease)).await {
            Response::Opened(o) => o,
            other => panic!("open {path}: {other:?}"),
        }
    }

    /// Ends the connection as a lost QUIC connection ends on the node.
    pub async fn lose_connection(&self) {
        self.server.connection_ended(&mut *self.state.lock().await);
    }

    /// The next notice, within a few seconds.
    pub async fn notice(&mut self) -> Notice {
        tokio::time::timeout(Duration::from_secs(5), self.notices.recv())
            .await
            .expect("a notice within 5 s")
            .unwrap()
    }
}

pub fn open_req(path: &str, disposition: Disposition, acc: u8, lease: u8) -> Request {
    Request::Open(Open {
        path: path.into(),
        disposition,
        access: acc,
        share_access: access::READ | access::WRITE | access::DELETE,
        flags: 0,
        mode: 0o640,
        lease,
    })
}

pub const RW: u8 = access::READ | access::WRITE;
