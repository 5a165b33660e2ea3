//! POSIX-style byte-range locks: the ranges an owner (a process, for a
//! mount) holds through a handle, set the way fcntl(2) sets them.
//!
//! `Lock`/`Unlock` (in `messages`) keep a handle's locks as separate
//! ranges, each released with exactly its offset and length, as SMB does.
//! A POSIX client cannot map fcntl onto that: extending a lock it holds,
//! unlocking the middle of one, or turning part of a write lock into a
//! read lock are single atomic calls there. [`LockRange`] is that call: it
//! sets what the owner holds on a range, splitting and merging its own
//! ranges, in one replicated step.

use serde::{Deserialize, Serialize};

use super::messages::HandleId;

/// What an owner holds on a range after a [`LockRange`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Unlocked,
    Shared,
    Exclusive,
}

/// Sets the bytes `[offset, offset + len)` (`len = 0`: every byte from
/// `offset` on) to `kind` for `owner` through `handle`, whatever the owner
/// held there before: F_SETLK. The owner's other ranges stay as they are,
/// cut where this range cuts them; ranges of the same kind that touch
/// merge. Conflicts with every overlapping lock of another owner or handle
/// when either is exclusive (unlocking never conflicts). Setting the same
/// range to the same kind again changes nothing, so a retry is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub handle: HandleId,
    /// Chosen by the client: a mount passes the kernel's lock owner.
    pub owner: u64,
    pub offset: u64,
    pub len: u64,
    pub kind: LockKind,
    /// How long to wait for conflicting locks to go away (0: do not wait).
    pub wait_ms: u32,
}

/// F_GETLK: which lock, if any, would stop `owner` taking this range
/// through `handle`. Changes nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestLock {
    pub handle: HandleId,
    pub owner: u64,
    pub offset: u64,
    pub len: u64,
    pub exclusive: bool,
}

/// The answer to [`TestLock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTested {
    /// A conflicting lock (the one at the lowest offset), or none.
    pub conflict: Option<HeldLock>,
}

/// A lock someone holds: its range and whether it is exclusive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldLock {
    pub offset: u64,
    /// 0: to the end of any file.
    pub len: u64,
    pub exclusive: bool,
}
