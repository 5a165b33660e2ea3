//! Reading request frames off their streams within the node's memory for
//! requests.
//!
//! A frame's first four bytes announce its length. The node takes that
//! many bytes of its request budget before it reads the rest, and gives
//! them back once the request is answered: however many clients send at
//! once, the frames a node has received and not yet served stay within
//! `request_buffer_bytes_max`. A stream waiting for budget is not read,
//! so QUIC flow control holds its sender back (the node's stream windows
//! are small enough that waiting streams never hold all of a
//! connection's credit: see `cluster::tls::ACCEPTED_STREAM_WINDOW`).
//! Small frames (a stat, a flush, a lock) draw from a share of their own,
//! so they never queue behind 4 MiB writes; one connection holds at most
//! a quarter of the large frames' share; frames sent before a session is
//! set up (no token checked yet) have a small pool to themselves, two at
//! a time per connection, and must arrive within seconds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::wire::{FRAME_OVERHEAD, FRAME_PAYLOAD_MAX};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest request frame.
pub const FRAME_MAX: usize = FRAME_PAYLOAD_MAX + FRAME_OVERHEAD;

/// Frames up to this size (all but writes and large symlink targets) draw
/// from the small frames' share.
pub const SMALL_FRAME_MAX: usize = 64 << 10;

/// The largest frame a connection may send before it has a session: a
/// negotiate or a setup is a few hundred bytes.
pub const PRE_SESSION_FRAME_MAX: usize = 16 << 10;

/// Frames of connections without a session, all together: a pool of their
/// own, so that peers holding no token can only delay each other.
#[cfg(not(test))]
const PRE_SESSION_BYTES: usize = 4 << 20;
#[cfg(test)]
const PRE_SESSION_BYTES: usize = 1 << 20;

/// Frames of the largest size one connection without a session may have
/// in the pool at once.
const PRE_SESSION_FRAMES_PER_CONNECTION: usize = 2;

/// How long a frame sent before a session may take to arrive once it has
/// its budget: it is a few hundred bytes.
const PRE_SESSION_WITHIN: Duration = Duration::from_secs(5);

/// The smallest budget allowed: room for two frames of the largest size
/// per connection, and the small frames' share.
pub const BUDGET_MIN: u64 = 16 << 20;

/// The share of the budget kept for small frames: one eighth.
const SMALL_SHARE_DIVISOR: usize = 8;

/// The share of the large frames' pool one connection may hold: a quarter
/// (but always two of the largest frames), so no one client can take it
/// all.
const CONNECTION_SHARE_DIVISOR: usize = 4;

/// Why a frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("a request frame of {announced} bytes is over this connection's limit of {limit}")]
    TooLarge { announced: usize, limit: usize },
    #[error("{extra} or more bytes after the request frame: one frame per stream")]
    Trailing { extra: usize },
    #[error("the request frame stalled: it did not all arrive within {0:?}")]
    Stalled(Duration),
    #[error("the request stream failed: {0}")]
    Stream(String),
}

impl IntakeError {
    /// True if the client should hear why (it is still there to read an
    /// answer); false if the stream itself failed.
    pub fn answerable(&self) -> bool {
        !matches!(self, Self::Stream(_))
    }
}

/// The node's memory for request frames.
pub struct RequestBudget {
    pre_session: Arc<Semaphore>,
    small: Arc<Semaphore>,
    bulk: Arc<Semaphore>,
    /// What one connection may hold of `bulk`.
    per_connection: usize,
    /// Bytes held by frames received or being received, for `/metrics`.
    held: Gauge,
    /// How long a frame may take to arrive once it has its budget.
    idle: Duration,
}

/// One connection's share of the large frames' pool, and of the pool of
/// frames before a session.
pub struct ConnectionShare {
    bulk: Arc<Semaphore>,
    pre_session: Arc<Semaphore>,
}

/// A frame's bytes and the budget they hold until dropped.
pub struct Frame {
    pub bytes: Bytes,
    _held: Held,
}

struct Held {
    _permits: Vec<OwnedSemaphorePermit>,
    bytes: i64,
    gauge: Gauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.dec_by(self.bytes);
    }
}

impl RequestBudget {
    /// A budget of `bytes` (at least [`BUDGET_MIN`]), reported through
    /// `held`; a frame that has not all arrived `idle` after it got its
    /// budget is given up.
    pub fn new(bytes: u64, held: Gauge, idle: Duration) -> Self {
        let total = usize::try_from(bytes.max(BUDGET_MIN))
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let small = total / SMALL_SHARE_DIVISOR;
        let bulk = total - small;
        Self {
            pre_session: Arc::new(Semaphore::new(PRE_SESSION_BYTES)),
            small: Arc::new(Semaphore::new(small)),
            bulk: Arc::new(Semaphore::new(bulk)),
            per_connection: (bulk / CONNECTION_SHARE_DIVISOR).max(2 * FRAME_MAX),
            held,
            idle,
        }
    }

    /// A new connection's share of the large frames' pool.
    pub fn connection(&self) -> ConnectionShare {
        ConnectionShare {
            bulk: Arc::new(Semaphore::new(self.per_connection)),
            pre_session: Arc::new(Semaphore::new(
                PRE_SESSION_FRAMES_PER_CONNECTION * PRE_SESSION_FRAME_MAX,
            )),
        }
    }

    /// Reads one frame from `recv`, a stream of connection `conn` (with a
    /// session set up on it, or not yet), taking budget for its announced
    /// length first. A frame whose stream ends before its announced length
    /// is returned as it is: decoding it reports the truncation.
    pub async fn read(
        &self,
        recv: &mut quinn::RecvStream,
        conn: &ConnectionShare,
        session: bool,
    ) -> Result<Frame, IntakeError> {
        let limit = if session {
            FRAME_MAX
        } else {
            PRE_SESSION_FRAME_MAX
        };
        let mut head = Vec::with_capacity(4);
        let Some(announced) = self.length(recv, &mut head).await? else {
            // Ended inside the length prefix.
            return Ok(Frame {
                _held: self.take(0, conn, session).await?,
                bytes: Bytes::from(head),
            });
        };
        if announced > limit {
            return Err(IntakeError::TooLarge { announced, limit });
        }
        let held = self.take(announced, conn, session).await?;
        let within = if session {
            self.idle
        } else {
            PRE_SESSION_WITHIN.min(self.idle)
        };
        let by = tokio::time::Instant::now() + within;
        let mut buf = Vec::with_capacity(announced);
        buf.extend_from_slice(&head);
        // One byte past the frame is enough to know the stream carries
        // more than it.
        while buf.len() <= announced {
            let want = announced + 1 - buf.len();
            match tokio::time::timeout_at(by, recv.read_chunk(want, true)).await {
                Ok(Ok(Some(chunk))) => buf.extend_from_slice(&chunk.bytes),
                Ok(Ok(None)) => break,
                Ok(Err(e)) => return Err(IntakeError::Stream(e.to_string())),
                Err(_) => return Err(IntakeError::Stalled(within)),
            }
        }
        if buf.len() > announced {
            return Err(IntakeError::Trailing {
                extra: buf.len() - announced,
            });
        }
        Ok(Frame {
            bytes: Bytes::from(buf),
            _held: held,
        })
    }

    /// The frame's whole length (its four-byte prefix included), or None
    /// if the stream ended inside the prefix. Nothing is held meanwhile,
    /// so each piece may take up to the idle timeout.
    async fn length(
        &self,
        recv: &mut quinn::RecvStream,
        head: &mut Vec<u8>,
    ) -> Result<Option<usize>, IntakeError> {
        while head.len() < 4 {
            match tokio::time::timeout(self.idle, recv.read_chunk(4 - head.len(), true)).await {
                Ok(Ok(Some(chunk))) => head.extend_from_slice(&chunk.bytes),
                Ok(Ok(None)) => return Ok(None),
                Ok(Err(e)) => return Err(IntakeError::Stream(e.to_string())),
                Err(_) => return Err(IntakeError::Stalled(self.idle)),
            }
        }
        let prefix: [u8; 4] = head[..4].try_into().unwrap_or_default();
        Ok(Some(
            (u32::from_le_bytes(prefix) as usize).saturating_add(4),
        ))
    }

    /// Budget for a frame of `len` bytes, waiting for it as long as it
    /// takes: the caller stops waiting when the client does.
    async fn take(
        &self,
        len: usize,
        conn: &ConnectionShare,
        session: bool,
    ) -> Result<Held, IntakeError> {
        // `len` is at most the frame limit, far below every pool's size.
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        let closed = |_| IntakeError::Stream("the request budget is closed".into());
        // The connection's own share first, where it has one: a connection
        // at its share waits without holding any of the node's pool.
        let pools: Vec<&Arc<Semaphore>> = if !session {
            vec![&conn.pre_session, &self.pre_session]
        } else if len <= SMALL_FRAME_MAX {
            vec![&self.small]
        } else {
            vec![&conn.bulk, &self.bulk]
        };
        let mut permits = Vec::with_capacity(pools.len());
        for pool in pools {
            permits.push(
                Arc::clone(pool)
                    .acquire_many_owned(n)
                    .await
                    .map_err(closed)?,
            );
        }
        let bytes = i64::try_from(len).unwrap_or(i64::MAX);
        self.held.inc_by(bytes);
        Ok(Held {
            _permits: permits,
            bytes,
            gauge: self.held.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
