//! Node-to-node RPC over QUIC: one bidirectional stream per call, one
//! length-prefixed postcard message each way.
//!
//! Every call has a deadline; every message has a size limit; inbound
//! messages wait for a share of a global byte budget before they are read,
//! so a burst of chunk transfers cannot grow memory without bound.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::tls::NODE_NAME;

/// Largest message either way: a 4 MiB chunk or a batch of log entries,
/// with room to spare.
pub const MESSAGE_MAX: u32 = 32 << 20;
/// How long establishing a connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

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

type Slot = Arc<tokio::sync::Mutex<Option<quinn::Connection>>>;

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
        let mut conn = slot.lock().await;
        if let Some(c) = conn.as_ref()
            && c.close_reason().is_none()
        {
            return Ok(c.clone());
        }
        let connect_err = |message: String| RpcError::Connect {
            addr: addr.to_owned(),
            message,
        };
        let sock = resolve(addr).await.map_err(connect_err)?;
        let connecting = self
            .endpoint
            .connect(sock, NODE_NAME)
            .map_err(|e| connect_err(e.to_string()))?;
        let c = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| connect_err("connection timed out".into()))?
            .map_err(|e| connect_err(e.to_string()))?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection to `addr`, so the next call dials again.
    async fn drop_connection(&self, addr: &str) {
        let slot = self.slot(addr);
        if let Some(c) = slot.lock().await.take() {
            c.close(0u32.into(), b"timed out");
        }
    }

    /// Sends `req` to `addr` and waits at most `timeout` for the answer.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let body = postcard::to_stdvec(req).map_err(|e| RpcError::Decode(e.to_string()))?;
        if body.len() as u64 > u64::from(MESSAGE_MAX) {
            return Err(RpcError::TooLarge(body.len() as u64));
        }
        match tokio::time::timeout(timeout, self.exchange(addr, &body)).await {
            Ok(Ok(bytes)) => {
                postcard::from_bytes(&bytes).map_err(|e| RpcError::Decode(e.to_string()))
            }
            Ok(Err(e)) => {
                if !matches!(e, RpcError::Decode(_)) {
                    self.drop_connection(addr).await;
                }
                Err(e)
            }
            Err(_) => {
                // A killed peer is silent over UDP: dial afresh next time
                // instead of waiting for the idle timeout.
                self.drop_connection(addr).await;
                Err(RpcError::Timeout {
                    addr: addr.to_owned(),
                    after: timeout,
                })
            }
        }
    }

    async fn exchange(&self, addr: &str, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        let conn = self.connection(addr).await?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| RpcError::Connect {
            addr: addr.to_owned(),
            message: e.to_string(),
        })?;
        let lost = |message: String| RpcError::Lost {
            addr: addr.to_owned(),
            message,
        };
        write_frame(&mut send, body)
            .await
            .map_err(|e| lost(e.to_string()))?;
        send.finish().map_err(|e| lost(e.to_string()))?;
        read_frame(&mut recv).await.map_err(|e| match e {
            FrameError::TooLarge(n) => RpcError::TooLarge(n),
            e => lost(e.to_string()),
        })
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

pub async fn write_frame(send: &mut quinn::SendStream, body: &[u8]) -> Result<(), FrameError> {
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge(body.len() as u64))?;
    send.write_all(&len.to_le_bytes()).await?;
    send.write_all(body).await?;
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

/// Reads one frame (an answer to a call this node made and awaits).
pub async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, FrameError> {
    let len = read_len(recv).await?;
    let mut buf = vec![0u8; len as usize];
    recv.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Reads one inbound frame after taking its size from `budget`; the permit
/// is held until the request is answered.
pub async fn read_frame_budgeted(
    recv: &mut quinn::RecvStream,
    budget: &Arc<Semaphore>,
) -> Result<(Vec<u8>, OwnedSemaphorePermit), FrameError> {
    let len = read_len(recv).await?;
    let permit = Arc::clone(budget)
        .acquire_many_owned(len.max(1))
        .await
        .map_err(|_| FrameError::Closed)?;
    let mut buf = vec![0u8; len as usize];
    recv.read_exact(&mut buf).await?;
    Ok((buf, permit))
}
