//! Byte-range lock requests, blocking ones included.
//!
//! A blocking `Lock` is a loop of tries on the node. The client may give up
//! on it before it ends (its caller's own timeout, a dropped future, a lost
//! connection): the loop must stop then, or it would take the lock later
//! (up to 30 s later) for a caller who believes it holds nothing, and keep
//! it until close.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::wire::Lock;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::consensus::committer::CommitError;
use crate::meta::apply::ApplyError;
use crate::meta::{Command, MetaError};

/// Longest a blocking lock request waits.
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(30);
/// Pauses between tries of a blocking lock, from first to longest.
const PAUSE_FIRST: Duration = Duration::from_millis(10);
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// Takes the lock `l` asks for, trying again for up to its `wait_ms` while
/// other handles' locks conflict, and stopping when `gone` is cancelled
/// (nobody is waiting for the answer any more).
///
/// Every try is a Raft log entry, refused or not. So after the first, a
/// waiter tries again only once this node's own state shows the range
/// free: the entry that frees it must have reached this node first, and
/// a waiter no longer writes ten entries a second to the log for nothing.
/// That view may lag; the commit decides.
///
/// A try already under way when the client leaves may still take the lock
/// (as any request's effect may outlive its lost answer). It is not undone:
/// the handle's locks carry no owner, so an undo could as well release the
/// same lock taken again by the client's own retry on another node.
pub async fn lock(state: &Arc<AppState>, l: &Lock, gone: &CancellationToken) -> ApiResult<()> {
    let wait = Duration::from_millis(u64::from(l.wait_ms)).min(LOCK_WAIT_MAX);
    let deadline = Instant::now() + wait;
    let cmd = Command::Lock {
        handle: l.handle,
        offset: l.offset,
        len: l.len,
        exclusive: l.exclusive,
    };
    let mut pause = PAUSE_FIRST;
    let mut conflict = None;
    loop {
        if gone.is_cancelled() {
            return Err(abandoned());
        }
        let refused = match conflict.take() {
            // Still held here: no try, the log would only say so again.
            Some(e) => e,
            None => match state.committer.commit(cmd.clone()).await {
                Ok(_) => return Ok(()),
                Err(CommitError::Meta(e @ MetaError::LockConflict(_))) => e,
                Err(e) => return Err(e.into()),
            },
        };
        if Instant::now() + pause >= deadline {
            return Err(ApiError::from(CommitError::Meta(refused)));
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = gone.cancelled() => return Err(abandoned()),
        }
        pause = (pause * 2).min(PAUSE_MAX);
        conflict = held_here(state, &cmd)?;
    }
}

/// The conflict this node's applied state shows for `cmd`, if any.
fn held_here(state: &AppState, cmd: &Command) -> ApiResult<Option<MetaError>> {
    let snapshot = state.meta.snapshot();
    match crate::meta::sessions::apply_logged(&snapshot, cmd).0 {
        Err(ApplyError::Meta(e @ MetaError::LockConflict(_))) => Ok(Some(e)),
        Err(ApplyError::Store(e)) => Err(e.into()),
        // Free here, or refused for another reason the commit will give.
        Ok(_) | Err(ApplyError::Meta(_)) => Ok(None),
    }
}

fn abandoned() -> ApiError {
    ApiError::new(
        cairn_proto::ErrorCode::LockConflict,
        "the client stopped waiting for this lock",
    )
}
