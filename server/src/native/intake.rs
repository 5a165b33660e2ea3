//! Reading request frames off their streams within the node's memory for
//! requests.
//!
//! A frame's first four bytes announce its length. The node takes that
//! many bytes of its request budget before it reads the rest, and gives
//! them back once the request is answered: however many clients send at
//! once, the frames a node has received and not yet served stay within
//! `request_buffer_bytes_max`. A stream waiting for budget is not read,
//! so QUIC flow control holds its sender back. Small frames (a stat, a
//! flush, a lock) draw from a share of their own, so they never queue
//! behind 4 MiB writes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Frames up to this size (all but writes and large symlink targets) draw
/// from the small frames' share.
pub const SMALL_FRAME_MAX: usize = 64 << 10;

/// The largest frame a connection may send before it has a session: a
/// negotiate or a setup is a few hundred bytes.
pub const PRE_SESSION_FRAME_MAX: usize = SMALL_FRAME_MAX;

/// The smallest budget allowed: two frames of the largest size, and the
/// small frames' share.
pub const BUDGET_MIN: u64 = 16 << 20;

/// The share of the budget kept for small frames: one eighth.
const SMALL_SHARE_DIVISOR: usize = 8;

/// Why a frame was not read.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("a request frame of {announced} bytes is over this connection's limit of {limit}")]
    TooLarge { announced: usize, limit: usize },
    #[error("{extra} or more bytes after the request frame: one frame per stream")]
    Trailing { extra: usize },
    #[error("the request frame stalled: nothing came for {0:?}")]
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
    small: Arc<Semaphore>,
    bulk: Arc<Semaphore>,
    /// Bytes held by frames received or being received, for `/metrics`.
    held: Gauge,
    /// How long a frame may go without a byte arriving.
    idle: Duration,
}

/// A frame's bytes and the budget they hold until dropped.
pub struct Frame {
    pub bytes: Bytes,
    _held: Held,
}

struct Held {
    _permit: OwnedSemaphorePermit,
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
    /// `held`; frames stalled for `idle` are given up.
    pub fn new(bytes: u64, held: Gauge, idle: Duration) -> Self {
        let total = usize::try_from(bytes.max(BUDGET_MIN)).unwrap_or(usize::MAX >> 4);
        let small = total / SMALL_SHARE_DIVISOR;
        Self {
            small: Arc::new(Semaphore::new(small)),
            bulk: Arc::new(Semaphore::new(total - small)),
            held,
            idle,
        }
    }

    /// Reads one frame of at most `limit` bytes from `recv`, taking budget
    /// for its announced length first. A frame whose stream ends before
    /// its announced length is returned as it is: decoding it reports the
    /// truncation.
    pub async fn read(
        &self,
        recv: &mut quinn::RecvStream,
        limit: usize,
    ) -> Result<Frame, IntakeError> {
        let mut head = Vec::with_capacity(4);
        let Some(announced) = self.length(recv, &mut head).await? else {
            // Ended inside the length prefix.
            return Ok(Frame {
                _held: self.take(0).await?,
                bytes: Bytes::from(head),
            });
        };
        if announced > limit {
            return Err(IntakeError::TooLarge { announced, limit });
        }
        let held = self.take(announced).await?;
        let mut buf = Vec::with_capacity(announced);
        buf.extend_from_slice(&head);
        // One byte past the frame is enough to know the stream carries
        // more than it.
        while buf.len() <= announced {
            let want = announced + 1 - buf.len();
            match self.chunk(recv, want).await? {
                Some(bytes) => buf.extend_from_slice(&bytes),
                None => break,
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
    /// if the stream ended inside the prefix.
    async fn length(
        &self,
        recv: &mut quinn::RecvStream,
        head: &mut Vec<u8>,
    ) -> Result<Option<usize>, IntakeError> {
        while head.len() < 4 {
            match self.chunk(recv, 4 - head.len()).await? {
                Some(bytes) => head.extend_from_slice(&bytes),
                None => return Ok(None),
            }
        }
        let prefix: [u8; 4] = head[..4].try_into().unwrap_or_default();
        Ok(Some(
            (u32::from_le_bytes(prefix) as usize).saturating_add(4),
        ))
    }

    /// At most `max` more bytes, waiting at most the idle timeout.
    async fn chunk(
        &self,
        recv: &mut quinn::RecvStream,
        max: usize,
    ) -> Result<Option<Bytes>, IntakeError> {
        match tokio::time::timeout(self.idle, recv.read_chunk(max, true)).await {
            Ok(Ok(chunk)) => Ok(chunk.map(|c| c.bytes)),
            Ok(Err(e)) => Err(IntakeError::Stream(e.to_string())),
            Err(_) => Err(IntakeError::Stalled(self.idle)),
        }
    }

    /// Budget for a frame of `len` bytes, waiting for it as long as it
    /// takes: the caller stops waiting when the client does.
    async fn take(&self, len: usize) -> Result<Held, IntakeError> {
        let pool = if len <= SMALL_FRAME_MAX {
            &self.small
        } else {
            &self.bulk
        };
        // `len` is at most the frame limit, far below both shares.
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        let permit = Arc::clone(pool)
            .acquire_many_owned(n)
            .await
            .map_err(|_| IntakeError::Stream("the request budget is closed".into()))?;
        let bytes = i64::try_from(len).unwrap_or(i64::MAX);
        self.held.inc_by(bytes);
        Ok(Held {
            _permit: permit,
            bytes,
            gauge: self.held.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
