//! Node-to-node RPC over QUIC: one bidirectional stream per call, one
//! length-prefixed postcard message each way, each followed by a raw body
//! (chunk bytes travel there, never copied into or out of the message).
//!
//! Every call has a deadline; every message has a size limit; inbound
//! messages wait for a share of a global byte budget before they are read,
//! so a burst of chunk transfers cannot grow memory without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tls::NODE_NAME;

/// Largest message either way: a 4 MiB chunk or a batch of log entries,
/// with room to spare.
pub const MESSAGE_MAX: u32 = 32 << 20;
/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// A connection to a peer that has received nothing for this long is
/// closed, failing the calls on it; calls dial again after
/// [`REDIAL_AFTER`]. The
/// dialing side sends keep-alives four times as often and a live peer
/// acknowledges each within milliseconds, so only a dead or cut-off peer
/// stays this silent. Before, a node cut off from both peers held its
/// chunk transfers (and a client's flush behind them) until the prober
/// dropped the connections after two missed probes, 1.8-2.8 s.
pub const PEER_SILENCE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The request was surely not delivered.
    #[error("cannot reach {addr}: {message}")]
    Connect { addr: String, message: String },
    /// The request may have been delivered; no answer came.
    #[error("no answer from {addr}: {message}")]
    Lost { addr: String, message: String },
    #[error("{addr} did not answer within {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("bad message: {0}")]
    Decode(String),
}

impl RpcError {
    /// True if the peer cannot have acted on the request.
    pub fn surely_not_delivered(&self) -> bool {
        matches!(self, Self::Connect { .. } | Self::TooLarge(_))
    }
}

/// Once a peer proved unreachable (a dial failed, or its connection fell
/// silent), calls to it fail at once for this long instead of each
/// waiting out a dial of its own: callers queued behind one failed dial
/// used to dial again in turn, 1.5 s each, and a client's flush on a node
/// cut off from its peers waited through two of them.
const REDIAL_AFTER: Duration = Duration::from_secs(1);

/// What this node knows of one peer's reachability.
#[derive(Default)]
struct Peer {
    conn: Option<quinn::Connection>,
    /// When the peer last proved unreachable, if it has not answered since.
    down_at: Option<Instant>,
}

type Slot = Arc<tokio::sync::Mutex<Peer>>;

/// The client side: connections to peers, made on first use and reused.
pub struct Transport {
    endpoint: quinn::Endpoint,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Transport {
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, addr: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(slots.entry(addr.to_owned()).or_default())
    }

    async fn connection(&self, addr: &str) -> Result<quinn::Connection, RpcError> {
        let slot = self.slot(addr);
        // One connection attempt per peer at a time; other peers unaffected.
        let mut peer = slot.lock().await;
        if let Some(c) = peer.conn.as_ref() {
            match c.close_reason() {
                None => return Ok(c.clone()),
                Some(quinn::ConnectionError::Reset) => {
                    tracing::info!(peer = addr, "peer restarted; dialing its new process");
                }
                Some(_) => {}
            }
        }
        let connect_err = |message: String| RpcError::Connect {
            addr: addr.to_owned(),
            message,
        };
        if let Some(at) = peer.down_at
            && at.elapsed() < REDIAL_AFTER
        {
            return Err(connect_err(format!(
                "unreachable {:?} ago; not dialing again yet",
                at.elapsed()
            )));
        }
        match self.dial(addr).await {
            Ok(c) => {
                if peer.down_at.take().is_some() {
                    tracing::info!(peer = addr, "peer reachable again; dialed it afresh");
                }
                peer.conn = Some(c.clone());
                watch_silence(&slot, &c);
                Ok(c)
            }
            Err(message) => {
                if peer.down_at.replace(Instant::now()).is_none() {
                    tracing::warn!(peer = addr, error = %message, "peer unreachable; calls to it fail until a dial succeeds");
                }
                Err(connect_err(message))
            }
        }
    }

    async fn dial(&self, addr: &str) -> Result<quinn::Connection, String> {
        let sock = resolve(addr).await?;
        let connecting = self
            .endpoint
            .connect(sock, NODE_NAME)
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| "connection timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Closes the connection to `addr`, so the next call dials again: for
    /// a peer that stopped answering (a killed process is silent over UDP;
    /// waiting for the idle timeout would stall every call to it).
    pub async fn drop_connection(&self, addr: &str) {
        let slot = self.slot(addr);
        if let Some(c) = slot.lock().await.conn.take() {
            c.close(0u32.into(), b"timed out");
        }
    }

    /// True if the peer at `addr` reset the connection to it: a new process
    /// of that node answered for the one that held it (see
    /// [`cairn_quic::endpoint`]), so a fresh dial would reach it now.
    pub async fn was_reset(&self, addr: &str) -> bool {
        let slot = self.slot(addr);
        let peer = slot.lock().await;
        peer.conn
            .as_ref()
            .is_some_and(|c| matches!(c.close_reason(), Some(quinn::ConnectionError::Reset)))
    }

    /// Sends `req` to `addr` and waits at most `timeout` for the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        self.call_with_body(addr, req, Bytes::new(), timeout)
            .await
            .map(|(resp, _)| resp)
    }

    /// [`Self::call`] with a body after the message, both ways.
    pub async fn call_with_body<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Req,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(Resp, Vec<u8>), RpcError> {
        let head = postcard::to_stdvec(req).map_err(|e| RpcError::Decode(e.to_string()))?;
        let total = (head.len() + body.len()) as u64;
        if total > u64::from(MESSAGE_MAX) {
            return Err(RpcError::TooLarge(total));
        }
        match tokio::time::timeout(timeout, self.exchange(addr, &head, body)).await {
            Ok(Ok((head, body))) => postcard::from_bytes(&head)
                .map(|resp| (resp, body))
                .map_err(|e| RpcError::Decode(e.to_string())),
            // A failed or slow call leaves the connection alone: other
            // calls share it (a chunk transfer must not die because a
            // heartbeat timed out). A closed connection is redialed on the
            // next call; one to a silent peer is closed by `watch_silence`.
            Ok(Err(e)) => Err(e),
            Err(_) => Err(RpcError::Timeout {
                addr: addr.to_owned(),
                after: timeout,
            }),
        }
    }

    async fn exchange(
        &self,
        addr: &str,
        head: &[u8],
        body: Bytes,
    ) -> Result<(Vec<u8>, Vec<u8>), RpcError> {
        let conn = self.connection(addr).await?;
        let (send, mut recv) = conn.open_bi().await.map_err(|e| RpcError::Connect {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
        let mut send = ResetUnlessAnswered {
            stream: send,
            answered: false,
        };
        let lost = |message: String| RpcError::Lost {
            addr: addr.to_owned(),
            message,
        };
        write_frame(&mut send.stream, head, body)
            .await
            .map_err(|e| lost(e.to_string()))?;
        send.stream.finish().map_err(|e| lost(e.to_string()))?;
        let answer = read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::TooLarge(n) => RpcError::TooLarge(n),
            e => lost(e.to_string()),
        })?;
        cairn_quic::read_end(&mut recv).await;
        send.answered = true;
        Ok(answer)
    }
}

/// Closes `conn` once it has been silent for [`PEER_SILENCE`], and marks
/// its peer unreachable then (if `conn` is still the peer's connection),
/// so the calls that follow fail at once rather than dial a peer that
/// went silent a moment ago.
fn watch_silence(slot: &Slot, conn: &quinn::Connection) {
    cairn_quic::close_when_silent(conn.clone(), PEER_SILENCE);
    let (slot, conn) = (Arc::clone(slot), conn.clone());
    tokio::spawn(async move {
        // Closed here: for silence, or dropped by the prober. A reset (a
        // restarted peer) or the peer's own close leaves it reachable.
        if !matches!(conn.closed().await, quinn::ConnectionError::LocallyClosed) {
            return;
        }
        let mut peer = slot.lock().await;
        if peer
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
            && peer.down_at.replace(Instant::now()).is_none()
        {
            tracing::warn!(peer = %conn.remote_address(), "peer unreachable: silent for {PEER_SILENCE:?}");
        }
    });
}

/// A request stream that is reset if the call ends without an answer
/// (timeout, cancellation): QUIC then stops retransmitting it, so a request
/// its caller gave up on cannot reach the peer later, after a partition
/// heals, and be applied behind the caller's back.
struct ResetUnlessAnswered {
    stream: quinn::SendStream,
    answered: bool,
}

impl Drop for ResetUnlessAnswered {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.stream.reset(0u32.into());
        }
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    if let Ok(sock) = addr.parse() {
        return Ok(sock);
    }
    tokio::net::lookup_host(addr)
        .await
        .map_err(|e| format!("cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| "no address".to_owned())
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u64),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("inbound budget closed")]
    Closed,
}

/// Writes one frame: `u32 head length | head | u32 body length | body`.
/// The body is handed to QUIC as it is (no copy).
pub async fn write_frame(
    send: &mut quinn::SendStream,
    head: &[u8],
    body: Bytes,
) -> Result<(), FrameError> {
    let too_large = |n: usize| FrameError::TooLarge(n as u64);
    let head_len = u32::try_from(head.len()).map_err(|_| too_large(head.len()))?;
    let body_len = u32::try_from(body.len()).map_err(|_| too_large(body.len()))?;
    let mut prefix = Vec::with_capacity(head.len() + 8);
    prefix.extend_from_slice(&head_len.to_le_bytes());
    prefix.extend_from_slice(head);
    prefix.extend_from_slice(&body_len.to_le_bytes());
    send.write_all(&prefix).await?;
    if !body.is_empty() {
        send.write_chunk(body).await?;
    }
    Ok(())
}

async fn read_len(recv: &mut quinn::RecvStream) -> Result<u32, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len);
    if len > MESSAGE_MAX {
        return Err(FrameError::TooLarge(len.into()));
    }
    Ok(len)
}

async fn read_exactly(recv: &mut quinn::RecvStream, len: u32) -> Result<Vec<u8>, FrameError> {
    Ok(cairn_quic::read_exact_vec(recv, len as usize).await?)
}

/// Reads one frame (an answer to a call this node made and awaits):
/// (head, body).
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<(Vec<u8>, Vec<u8>), FrameError> {
    let head_len = read_len(recv).await?;
    let head = read_exactly(recv, head_len).await?;
    let body_len = read_len(recv).await?;
    if u64::from(head_len) + u64::from(body_len) > u64::from(MESSAGE_MAX) {
        return Err(FrameError::TooLarge(
            u64::from(head_len) + u64::from(body_len),
        ));
    }
    let body = read_exactly(recv, body_len).await?;
    Ok((head, body))
}

/// An inbound frame and the share of the byte budget it holds until the
/// request is answered.
pub struct Inbound {
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub _permit: Vec<OwnedSemaphorePermit>,
}

/// Reads one inbound frame, taking each part's size from `budget` before
/// reading it.
pub async fn read_frame_budgeted(
    recv: &mut quinn::RecvStream,
    budget: &Arc<Semaphore>,
) -> Result<Inbound, FrameError> {
    let take = |len: u32| {
        let budget = Arc::clone(budget);
        async move {
            budget
                .acquire_many_owned(len.max(1))
                .await
                .map_err(|_| FrameError::Closed)
        }
    };
    let head_len = read_len(recv).await?;
    let head_permit = take(head_len).await?;
    let head = read_exactly(recv, head_len).await?;
    let body_len = read_len(recv).await?;
    if u64::from(head_len) + u64::from(body_len) > u64::from(MESSAGE_MAX) {
        return Err(FrameError::TooLarge(
            u64::from(head_len) + u64::from(body_len),
        ));
    }
    let body_permit = take(body_len).await?;
    let body = read_exactly(recv, body_len).await?;
    Ok(Inbound {
        head,
        body,
        _permit: vec![head_permit, body_permit],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::rpc::{Request, Response};
    use crate::cluster::tls;

    /// A transport with this node's TLS, dialing out only.
    fn transport(dir: &std::path::Path) -> Transport {
        let ca = dir.join("ca");
        let node = dir.join("node");
        tls::init_ca(&ca).unwrap();
        tls::issue(&ca, &node, "node-1").unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let mut endpoint = cairn_quic::endpoint(addr, None, None).unwrap();
        let config = tls::client_config(&node, Duration::from_secs(10)).unwrap();
        endpoint.set_default_client_config(config);
        Transport::new(endpoint)
    }

    async fn status(t: &Transport, addr: &str) -> (Result<Response, RpcError>, Duration) {
        let started = Instant::now();
        let r = t
            .call::<_, Response>(addr, &Request::Status, Duration::from_secs(5))
            .await;
        (r, started.elapsed())
    }

    /// A peer that does not answer costs one dial timeout, not one per
    /// caller: the calls behind a failed dial fail at once, and a call a
    /// while later dials again.
    #[tokio::test]
    async fn calls_behind_a_failed_dial_fail_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let t = transport(dir.path());
        // Bound and silent: packets to it vanish, as to a cut-off peer.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();

        let (first, took) = status(&t, &addr).await;
        assert!(matches!(first, Err(RpcError::Connect { .. })), "{first:?}");
        assert!(took >= CONNECT_TIMEOUT, "the first call dialed: {took:?}");

        for _ in 0..3 {
            let (next, took) = status(&t, &addr).await;
            assert!(matches!(next, Err(RpcError::Connect { .. })), "{next:?}");
            assert!(
                took < Duration::from_millis(100),
                "it dialed again: {took:?}"
            );
        }

        tokio::time::sleep(REDIAL_AFTER).await;
        let (later, took) = status(&t, &addr).await;
        assert!(matches!(later, Err(RpcError::Connect { .. })), "{later:?}");
        assert!(
            took >= CONNECT_TIMEOUT,
            "a call a second later dials: {took:?}"
        );
    }
}
