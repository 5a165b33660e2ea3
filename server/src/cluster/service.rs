//! The server side of node-to-node RPC: accepts QUIC connections from
//! cluster peers and answers each stream's request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cairn_proto::ContentHash;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::native::NativeServer;

use bytes::Bytes;

use super::rpc::{NodeStatus, Request, Response, StoreRefused};
use super::transport::{self, FrameError};
use crate::chunks::{ChunkError, ChunkStore};
use crate::consensus::Committer;
use crate::consensus::lease::Leases;
use crate::consensus::watchdog::LeaderContact;

/// Counters the repairer and scrubber keep, reported by `Status`.
#[derive(Debug, Default)]
pub struct RepairStats {
    pub under_replicated: AtomicU64,
    pub repaired: AtomicU64,
    pub passes: AtomicU64,
    pub corrupt_found: AtomicU64,
}

/// What a node answers peers with.
pub struct PeerService {
    pub committer: Committer,
    /// This node's own disk (never the replicating store: a peer asking
    /// for a chunk wants this node's copy).
    pub local: Arc<dyn ChunkStore>,
    pub stats: Arc<RepairStats>,
    /// Bytes of inbound messages being held at once, at most.
    pub budget: Arc<Semaphore>,
    /// When a leader's append was last accepted, for the election watchdog.
    pub leader_contact: Arc<LeaderContact>,
    /// Every term another node sends is recorded here before Raft sees it.
    pub leases: Arc<Leases>,
}

impl PeerService {
    /// Answers `req` (with the frame's `body`): a response and its body.
    pub async fn handle(&self, req: Request, body: Vec<u8>) -> (Response, Bytes) {
        match req {
            Request::PutChunk { hash } => (
                Response::Stored(self.put_chunk(hash, body).await),
                Bytes::new(),
            ),
            Request::GetChunk { hash } => match self.get_chunk(hash).await {
                Ok(Some(data)) => (Response::Chunk(Ok(true)), Bytes::from(data)),
                Ok(None) => (Response::Chunk(Ok(false)), Bytes::new()),
                Err(e) => (Response::Chunk(Err(e)), Bytes::new()),
            },
            other => (self.handle_message(other).await, Bytes::new()),
        }
    }

    async fn handle_message(&self, req: Request) -> Response {
        let raft = self.committer.raft();
        match req {
            Request::AppendEntries(r) => {
                let term = r.vote.leader_id().get_term();
                self.leases.saw_term(term);
                // The leader is alive as soon as its append arrives, and
                // waits for this node's answer: a slow sync of this node's
                // own log must not look like a silent leader to the
                // election watchdog.
                let current = term >= raft.metrics().borrow().current_term;
                let working = current.then(|| self.leader_contact.working());
                let answer = raft.append_entries(r).await;
                // Dropping it marks contact again, at the answer.
                drop(working);
                Response::AppendEntries(answer)
            }
            Request::Vote(r) => {
                self.leases.saw_term(r.vote.leader_id().get_term());
                self.leases.after_start().await;
                Response::Vote(raft.vote(r).await)
            }
            Request::InstallSnapshot(r) => {
                self.leases.saw_term(r.vote.leader_id().get_term());
                Response::InstallSnapshot(raft.install_snapshot(r).await)
            }
            Request::Write(cmd) => Response::Write(self.committer.write_here(cmd).await),
            Request::ReadIndex => Response::ReadIndex(self.committer.read_index_here().await),
            Request::PutChunk { .. } | Request::GetChunk { .. } => {
                Response::BadRequest("chunk requests carry bodies".into())
            }
            Request::HasChunk { hash } => {
                let local = Arc::clone(&self.local);
                let has = tokio::task::spawn_blocking(move || local.has(&hash))
                    .await
                    .unwrap_or(false);
                Response::Has(has)
            }
            Request::Status => Response::Status(self.status()),
        }
    }

    async fn put_chunk(&self, hash: ContentHash, data: Vec<u8>) -> Result<(), StoreRefused> {
        let local = Arc::clone(&self.local);
        tokio::task::spawn_blocking(move || {
            // The sender's hash is a claim; the bytes are checked here.
            let actual = ContentHash::of(&data);
            if actual != hash {
                return Err(StoreRefused::Failed(format!(
                    "chunk {hash} arrived with content hashing to {actual}"
                )));
            }
            local.put(&hash, &data).map_err(|e| match e {
                ChunkError::NoSpace => StoreRefused::NoSpace,
                e => StoreRefused::Failed(e.to_string()),
            })
        })
        .await
        .map_err(|e| StoreRefused::Failed(e.to_string()))?
    }

    async fn get_chunk(&self, hash: ContentHash) -> Result<Option<Vec<u8>>, String> {
        let local = Arc::clone(&self.local);
        let stats = Arc::clone(&self.stats);
        tokio::task::spawn_blocking(move || match local.get(&hash) {
            Ok(data) => Ok(Some(data)),
            Err(ChunkError::Missing(_)) => Ok(None),
            Err(e @ ChunkError::Corrupt { .. }) => {
                // Never served; the scrubber or repairer replaces it.
                stats.corrupt_found.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%hash, error = %e, "a peer asked for a corrupt chunk");
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        })
        .await
        .map_err(|e| e.to_string())?
    }

    pub fn status(&self) -> NodeStatus {
        let raft = self.committer.raft();
        let metrics = raft.metrics();
        let m = metrics.borrow();
        NodeStatus {
            id: m.id,
            role: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            under_replicated: self.stats.under_replicated.load(Ordering::Relaxed),
            chunks_repaired: self.stats.repaired.load(Ordering::Relaxed),
            repair_passes: self.stats.passes.load(Ordering::Relaxed),
            corrupt_chunks_found: self.stats.corrupt_found.load(Ordering::Relaxed),
            disk_total_bytes: self.local.total_bytes().ok(),
            disk_free_bytes: self.local.free_bytes().ok(),
        }
    }
}

/// Accepts peer connections until `shutdown`.
pub async fn serve(
    endpoint: quinn::Endpoint,
    service: Arc<PeerService>,
    native: Arc<OnceLock<Arc<NativeServer>>>,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            () = shutdown.cancelled() => break,
        };
        let Some(incoming) = incoming else { break };
        let service = Arc::clone(&service);
        let native = Arc::clone(&native);
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => route(conn, service, &native).await,
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
}

/// Native-protocol clients to the native server; peers, which must have
/// shown a CA-signed certificate, to the peer service.
async fn route(
    conn: quinn::Connection,
    service: Arc<PeerService>,
    native: &OnceLock<Arc<NativeServer>>,
) {
    let alpn = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    if alpn.as_deref() == Some(cairn_proto::wire::ALPN) {
        match native.get() {
            Some(n) => Arc::clone(n).serve_connection(conn).await,
            None => conn.close(1u32.into(), b"starting"),
        }
        return;
    }
    if conn.peer_identity().is_none() {
        tracing::warn!(peer = %conn.remote_address(), "peer connection without a certificate refused");
        conn.close(2u32.into(), b"certificate required");
        return;
    }
    super::tls::open_window(&conn);
    serve_connection(conn, service).await;
}

async fn serve_connection(conn: quinn::Connection, service: Arc<PeerService>) {
    let peer = conn.remote_address();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "peer connection closed");
                return;
            }
        };
        let service = Arc::clone(&service);
        tokio::spawn(async move {
            if let Err(e) = serve_stream(send, recv, &service).await {
                tracing::debug!(%peer, error = %e, "peer request failed");
            }
        });
    }
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    service: &PeerService,
) -> Result<(), FrameError> {
    let inbound = transport::read_frame_budgeted(&mut recv, &service.budget).await?;
    cairn_quic::read_end(&mut recv).await;
    let (resp, body) = match postcard::from_bytes::<Request>(&inbound.head) {
        Ok(req) => service.handle(req, inbound.body).await,
        Err(e) => (Response::BadRequest(e.to_string()), Bytes::new()),
    };
    let head = postcard::to_stdvec(&resp).unwrap_or_else(|e| {
        postcard::to_stdvec(&Response::BadRequest(e.to_string())).unwrap_or_default()
    });
    transport::write_frame(&mut send, &head, body).await?;
    let _ = send.finish();
    Ok(())
}
