//! Byte-range lock requests, blocking ones included.
//!
//! A blocking `Lock` is a loop of tries on the node. The client may give up
//! on it before it ends (its caller's own timeout, a dropped future, a lost
//! connection): the loop must stop then, or it would take the lock later
//! for a caller who believes it holds nothing, and keep it until close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::wire::Lock;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::consensus::committer::CommitError;
use crate::meta::records::LockRecord;
use crate::meta::sessions::held_lock;
use crate::meta::{Command, MetaError};

/// Longest a blocking lock request waits.
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pauses between tries of a blocking lock, from first to longest.
const PAUSE_FIRST: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// Takes the lock `l` asks for, trying again for up to its `wait_ms` while
/// other handles' locks conflict, and stopping when `gone` is cancelled
/// (nobody is waiting for the answer any more).
pub async fn lock(state: &Arc<AppState>, l: &Lock, gone: &CancellationToken) -> ApiResult<()> {
    let wait = Duration::from_millis(u64::from(l.wait_ms)).min(LOCK_WAIT_MAX);
    let deadline = Instant::now() + wait;
    let cmd = Command::Lock {
        handle: l.handle,
        offset: l.offset,
        len: l.len,
        exclusive: l.exclusive,
    };
    // What the handle held at this offset before, to put back if a try
    // lands after the client gave up.
    let mut before: Option<Option<LockRecord>> = None;
    let mut pause = PAUSE_FIRST;
    loop {
        let tried = state.committer.commit(cmd.clone()).await;
        match tried {
            Ok(_) => {
                // The client stopped waiting while this try was under way.
                // (A lock taken at the first try is not undone: nothing was
                // waited for, as with any request whose answer is lost.)
                if let (true, Some(before)) = (gone.is_cancelled(), before) {
                    restore(state, l, before).await;
                    return Err(abandoned());
                }
                return Ok(());
            }
            Err(CommitError::Meta(MetaError::LockConflict(_)))
                if Instant::now() + pause < deadline =>
            {
                if before.is_none() {
                    state.committer.read_barrier().await?;
                    before = Some(held_lock(&state.meta.snapshot(), l.handle, l.offset)?);
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = gone.cancelled() => return Err(abandoned()),
                }
                pause = (pause * 2).min(PAUSE_MAX);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Puts the handle's lock at `l.offset` back as it was before a blocking
/// try that nobody waits for any more took it.
async fn restore(state: &Arc<AppState>, l: &Lock, before: Option<LockRecord>) {
    let cmd = match before {
        // A conversion: back to the mode held before. Nobody else can hold
        // an overlapping lock now, so this cannot conflict.
        Some(r) => Command::Lock {
            handle: l.handle,
            offset: l.offset,
            len: r.len,
            exclusive: r.exclusive,
        },
        None => Command::Unlock {
            handle: l.handle,
            offset: l.offset,
            len: l.len,
        },
    };
    match state.committer.commit(cmd).await {
        Ok(_) => {
            tracing::info!(handle = %l.handle, offset = l.offset, "released a lock taken after its client gave up")
        }
        // Closed meanwhile (its locks went with it), or the node cannot
        // commit: the lock stays until the handle closes or expires.
        Err(e) => {
            tracing::warn!(handle = %l.handle, error = %e, "could not release a lock taken after its client gave up")
        }
    }
}

fn abandoned() -> ApiError {
    ApiError::new(
        cairn_proto::ErrorCode::LockConflict,
        "the client stopped waiting for this lock",
    )
}
