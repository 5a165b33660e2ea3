//! Byte-range lock requests, blocking ones included.
//!
//! A blocking `Lock` is a loop of tries on the node. The client may give up
//! on it before it ends (its caller's own timeout, a dropped future, a lost
//! connection): the loop must stop then, or it would take the lock later
//! (up to 30 s later) for a caller who believes it holds nothing, and keep
//! it until close.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::wire::{LockTested, SessionId, TestLock};
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::consensus::committer::CommitError;
use crate::meta::apply::ApplyError;
use crate::meta::{Command, MetaError};

/// Longest a blocking lock request waits.
pub const LOCK_WAIT_MAX: Duration = Duration::from_secs(30);
/// Least time between a waiter's looks: on a node applying a stream of
/// entries, each waiter looks at most this often, not after every batch.
const LOOK_GAP: Duration = Duration::from_millis(5);

/// Takes the lock `take` asks for (a `Lock` or a `LockRange` command),
/// trying again for up to `wait_ms` while other holders' locks conflict,
/// and stopping when `gone` is cancelled (nobody is waiting for the answer
/// any more).
///
/// Every try is a Raft log entry, refused or not. So none is made while
/// the range is known to be held: the first only once the latest state
/// shows it free (see [`conflict_now`]), and after that a waiter tries
/// again only once this node's own state shows the range free: the entry that frees it must have reached this node first, and
/// a waiter no longer writes ten entries a second to the log for nothing.
/// It looks each time this node applies entries, so it tries again as
/// soon as the unlock (or close, or expiry) that frees the range has
/// applied here. That view may lag; the commit decides.
///
/// A try already under way when the client leaves may still take the lock
/// (as any request's effect may outlive its lost answer), unless the
/// client has resumed its session since: tries are fenced by the binding
/// of the connection that asked. It is not undone: an undo could as well
/// release the same lock taken again by the client's own retry on another
/// node.
pub async fn lock(
    state: &Arc<AppState>,
    take: Command,
    wait_ms: u32,
    (session, binding): (SessionId, u64),
    gone: &CancellationToken,
) -> ApiResult<()> {
    let wait = Duration::from_millis(u64::from(wait_ms)).min(LOCK_WAIT_MAX);
    let deadline = tokio::time::Instant::now() + wait;
    // Fenced: a try still under way here when the client has resumed
    // elsewhere (and perhaps locked and unlocked there since) is refused,
    // not left holding a lock nobody knows of.
    let cmd = Command::Fenced {
        session,
        binding,
        cmd: Box::new(take),
        appends: Vec::new(),
    };
    // Subscribed before the first try: an unlock applied between the
    // refusal and the wait below still wakes the wait.
    let mut applied = state.committer.applied();
    let mut conflict = conflict_now(state, &cmd).await?;
    let mut looked = tokio::time::Instant::now();
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
        tokio::select! {
            biased;
            () = gone.cancelled() => return Err(abandoned()),
            () = tokio::time::sleep_until(deadline) => {
                return Err(ApiError::from(CommitError::Meta(refused)));
            }
            () = next_look(&mut applied, looked) => {}
        }
        looked = tokio::time::Instant::now();
        conflict = held_here(state, &cmd)?;
    }
}

/// Returns once this node has applied more entries since `applied` last
/// looked, and [`LOOK_GAP`] after the waiter's last look at the earliest.
async fn next_look(
    applied: &mut tokio::sync::watch::Receiver<Option<crate::consensus::LogId>>,
    looked: tokio::time::Instant,
) {
    if applied.changed().await.is_err() {
        // The state machine is gone (it lives as long as the node): only
        // the deadline or the client leaving ends this wait now.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep_until(looked + LOOK_GAP).await;
}

/// The conflict `cmd` meets as of now, if any, without a log entry: a
/// client trying a held range again and again (a non-blocking lock in a
/// loop) must not add an entry to the log each time. This node's own
/// state is looked at first; only when it shows a conflict is the latest
/// state waited for (a read barrier) and looked at again, so a lock on a
/// free range costs no more than its commit.
async fn conflict_now(state: &AppState, cmd: &Command) -> ApiResult<Option<MetaError>> {
    if held_here(state, cmd)?.is_none() {
        return Ok(None);
    }
    state.committer.read_barrier().await?;
    held_here(state, cmd)
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

/// `TestLock`: the conflict as of the latest state (after a read barrier,
/// as any read that must see every acknowledged change).
pub async fn test(state: &AppState, t: &TestLock) -> ApiResult<LockTested> {
    state.committer.read_barrier().await?;
    let snapshot = state.meta.snapshot();
    let range = (t.offset, t.len);
    let conflict = crate::meta::locks::test_lock(&snapshot, t.handle, t.owner, range, t.exclusive)?;
    Ok(LockTested { conflict })
}

/// Refuses a range that holds no byte: from the last offset there is,
/// even "to the end" is empty.
pub fn holds_a_byte(offset: u64) -> ApiResult<()> {
    if offset == u64::MAX {
        return Err(ApiError::new(
            cairn_proto::ErrorCode::BadRequest,
            "a lock range must start before offset 2^64 - 1",
        ));
    }
    Ok(())
}

fn abandoned() -> ApiError {
    ApiError::new(
        cairn_proto::ErrorCode::LockConflict,
        "the client stopped waiting for this lock",
    )
}
