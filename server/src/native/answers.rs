//! The memory a read's answer holds until QUIC has sent it.
//!
//! A read's data is a view of a verified chunk (up to 4 MiB), which stays
//! in memory as long as the view does: until the client has taken the
//! answer. A client that stops reading its answers would keep 64 of them
//! per connection, with no limit across connections. So a large answer
//! takes one of the node's download buffers, the budget HTTP GETs draw
//! from (`download_buffer_bytes_max`), and holds it until sent; a small
//! one is copied out of its chunk and takes none.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::ErrorCode;
use tokio::sync::OwnedSemaphorePermit;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};

/// Answers up to this size are copied, not held.
pub const SMALL_ANSWER_MAX: usize = 64 << 10;
/// Longest a read waits for a buffer before answering `unavailable`.
const BUFFER_WAIT: Duration = Duration::from_secs(10);

/// The right to send a read's answer of some length.
pub struct Ticket(Option<OwnedSemaphorePermit>);

/// A ticket for an answer of up to `len` bytes, once a buffer is free.
pub async fn ticket(state: &AppState, len: usize) -> ApiResult<Ticket> {
    if len <= SMALL_ANSWER_MAX {
        return Ok(Ticket(None));
    }
    let acquire = Arc::clone(&state.read_buffers).acquire_owned();
    match tokio::time::timeout(BUFFER_WAIT, acquire).await {
        Ok(Ok(permit)) => Ok(Ticket(Some(permit))),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::Unavailable,
            "read buffers are all in use; retry",
        )),
    }
}

impl Ticket {
    /// `data` as the answer carries it: holding this ticket's buffer until
    /// its last view is dropped, or copied if small.
    pub fn carry(self, data: Bytes) -> Bytes {
        match self.0 {
            Some(permit) => Bytes::from_owner(Held {
                data,
                _permit: permit,
            }),
            None => Bytes::copy_from_slice(&data),
        }
    }
}

struct Held {
    data: Bytes,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}
