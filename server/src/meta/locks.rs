//! Byte-range locks, as metadata: two tables over one conflict rule.
//!
//! - `L | inode | handle | offset`: a handle's ranges, SMB style (`Lock`,
//!   `Unlock`): each range is taken and released whole, by its offset.
//! - `P | inode | handle | owner | offset`: what an owner holds through a
//!   handle, POSIX style (`LockRange`): setting a range replaces whatever
//!   the owner held there, cutting and merging its own ranges, so extending
//!   a lock, unlocking its middle or turning part of it shared is one step.
//!
//! A lock belongs to a *holder*: a handle (SMB) or a handle and an owner
//! (POSIX). Two overlapping locks conflict when their holders differ and
//! either is exclusive. A holder never conflicts with itself.

use std::collections::HashSet;

use cairn_proto::InodeId;
use cairn_proto::wire::{HandleId, HeldLock, LockKind};

use super::apply::{Applied, ApplyError, MetaError, get};
use super::keys;
use super::overlay::{KvRead, Overlay, count_under, keys_under};
use super::records::{LockRecord, encode};
use super::sessions::load_handle;
use super::store::StoreError;

mod ranges;

use ranges::Span;

/// Byte-range locks one handle may hold, in both tables together: every
/// lock request looks at all the locks on its file.
#[cfg(not(test))]
pub const LOCKS_PER_HANDLE_MAX: usize = 4_096;
#[cfg(test)]
pub const LOCKS_PER_HANDLE_MAX: usize = 32;

/// Who holds a lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Holder {
    handle: u64,
    /// `None` for the SMB-style table.
    owner: Option<u64>,
}

/// A lock found in either table.
struct Found {
    holder: Holder,
    offset: u64,
    lock: LockRecord,
}

/// `Lock`: grants a range to the handle unless another holder's
/// overlapping lock forbids it (either one exclusive).
pub(super) fn lock<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    offset: u64,
    len: u64,
    exclusive: bool,
) -> Result<Applied, ApplyError> {
    let h = load_handle(tx, handle)?;
    let wanted = LockRecord { len, exclusive };
    let key = keys::lock(h.inode, handle, offset);
    // A handle's locks are kept by offset: the same range again converts
    // it (shared or exclusive), another length there would silently
    // replace the range held.
    let mine = get::<LockRecord, _>(tx, &key)?;
    if let Some(mine) = &mine
        && mine.len != len
    {
        return Err(MetaError::LockConflict(format!(
            "handle {handle} already holds bytes {offset}..{} from this offset: unlock them first",
            mine.end(offset)
        ))
        .into());
    }
    if mine.is_none() {
        at_most_the_limit(tx, h.inode, handle, 1)?;
    }
    let me = Holder {
        handle: handle.0,
        owner: None,
    };
    refuse_conflicts(tx, h.inode, me, Span::of(offset, &wanted))?;
    tx.put(key, encode(&wanted));
    Ok(Applied::nothing())
}

/// `Unlock`: releases the handle's SMB-style lock with exactly this range.
pub(super) fn unlock<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    offset: u64,
    len: u64,
) -> Result<Applied, ApplyError> {
    let h = load_handle(tx, handle)?;
    let key = keys::lock(h.inode, handle, offset);
    match get::<LockRecord, _>(tx, &key)? {
        Some(l) if l.len == len => {
            tx.delete(key);
            Ok(Applied::nothing())
        }
        _ => Err(MetaError::NotFound(format!(
            "handle {handle} holds no lock of {len} bytes at {offset}"
        ))
        .into()),
    }
}

/// `LockRange`: sets `[offset, offset + len)` to `kind` for `owner`
/// through `handle`, cutting and merging the owner's own ranges there.
pub(super) fn lock_range<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    owner: u64,
    (offset, len): (u64, u64),
    kind: LockKind,
) -> Result<Applied, ApplyError> {
    let h = load_handle(tx, handle)?;
    let wanted = span(offset, len)?;
    let me = Holder {
        handle: handle.0,
        owner: Some(owner),
    };
    if kind != LockKind::Unlocked {
        let exclusive = kind == LockKind::Exclusive;
        refuse_conflicts(
            tx,
            h.inode,
            me,
            Span {
                exclusive,
                ..wanted
            },
        )?;
    }
    let prefix = keys::owner_locks_of(h.inode, handle, owner);
    let before: Vec<Span> = records_under(tx, &prefix)?
        .into_iter()
        .map(|(key, l)| Span::of(last_u64(&key), &l))
        .collect();
    let after = ranges::set(&before, wanted, kind);
    if after.len() > before.len() {
        at_most_the_limit(tx, h.inode, handle, after.len() - before.len())?;
    }
    // Sets, not scans: up to the limit of spans each, on every node.
    let (was, is): (HashSet<_>, HashSet<_>) = (before.iter().collect(), after.iter().collect());
    for gone in before.iter().filter(|s| !is.contains(s)) {
        tx.delete(keys::owner_lock(h.inode, handle, owner, gone.start));
    }
    for new in after.iter().filter(|s| !was.contains(s)) {
        let key = keys::owner_lock(h.inode, handle, owner, new.start);
        tx.put(key, encode(&new.record()));
    }
    Ok(Applied::nothing())
}

/// `TestLock`: the lock, at the lowest offset, that would stop `owner`
/// taking this range through `handle`, if any.
pub fn test_lock<R: KvRead + ?Sized>(
    tx: &R,
    handle: HandleId,
    owner: u64,
    (offset, len): (u64, u64),
    exclusive: bool,
) -> Result<Option<HeldLock>, ApplyError> {
    let h = load_handle(tx, handle)?;
    let wanted = span(offset, len)?;
    let me = Holder {
        handle: handle.0,
        owner: Some(owner),
    };
    let found = conflicts(
        tx,
        h.inode,
        me,
        Span {
            exclusive,
            ..wanted
        },
    )?;
    Ok(found
        .into_iter()
        .min_by_key(|f| f.offset)
        .map(|f| HeldLock {
            offset: f.offset,
            len: f.lock.len,
            exclusive: f.lock.exclusive,
        }))
}

/// Drops every lock a closing handle holds, in both tables.
pub(super) fn drop_handle_locks<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    inode: InodeId,
    handle: HandleId,
) -> Result<(), StoreError> {
    for prefix in [
        keys::handle_locks(inode, handle),
        keys::handle_owner_locks(inode, handle),
    ] {
        for key in keys_under(tx, &prefix)? {
            tx.delete(key);
        }
    }
    Ok(())
}

/// The range a request names; an empty one (offset at the very end) is
/// refused rather than held as nothing.
fn span(offset: u64, len: u64) -> Result<Span, MetaError> {
    let end = LockRecord {
        len,
        exclusive: false,
    }
    .end(offset);
    if end <= offset {
        return Err(MetaError::Invalid(format!(
            "the range {offset}+{len} holds no byte"
        )));
    }
    Ok(Span {
        start: offset,
        end,
        exclusive: false,
    })
}

/// Refuses with `lock_conflict` if another holder's lock stands in the way.
fn refuse_conflicts<R: KvRead + ?Sized>(
    tx: &R,
    inode: InodeId,
    me: Holder,
    wanted: Span,
) -> Result<(), ApplyError> {
    match conflicts(tx, inode, me, wanted)?.first() {
        None => Ok(()),
        Some(f) => Err(MetaError::LockConflict(format!(
            "bytes {}..{} are locked by handle h{}{}",
            wanted.start,
            wanted.end,
            f.holder.handle,
            f.holder
                .owner
                .map(|o| format!(" (owner {o})"))
                .unwrap_or_default()
        ))
        .into()),
    }
}

/// Every lock of another holder on `inode` that overlaps `wanted` where
/// either it or the wanted lock is exclusive.
fn conflicts<R: KvRead + ?Sized>(
    tx: &R,
    inode: InodeId,
    me: Holder,
    wanted: Span,
) -> Result<Vec<Found>, StoreError> {
    let smb = records_under(tx, &keys::locks(inode))?
        .into_iter()
        .filter_map(|(key, lock)| {
            let holder = Holder {
                handle: keys::u64_from_end(&key, 1)?,
                owner: None,
            };
            Some(Found {
                holder,
                offset: last_u64(&key),
                lock,
            })
        });
    let posix = records_under(tx, &keys::owner_locks(inode))?
        .into_iter()
        .filter_map(|(key, lock)| {
            let holder = Holder {
                handle: keys::u64_from_end(&key, 2)?,
                owner: Some(keys::u64_from_end(&key, 1)?),
            };
            Some(Found {
                holder,
                offset: last_u64(&key),
                lock,
            })
        });
    Ok(smb
        .chain(posix)
        .filter(|f| {
            f.holder != me
                && f.offset < wanted.end
                && wanted.start < f.lock.end(f.offset)
                && (wanted.exclusive || f.lock.exclusive)
        })
        .collect())
}

/// Refuses with `too_many` if the handle, holding `adding` more locks,
/// would hold more than its limit.
fn at_most_the_limit<R: KvRead + ?Sized>(
    tx: &R,
    inode: InodeId,
    handle: HandleId,
    adding: usize,
) -> Result<(), ApplyError> {
    let max = LOCKS_PER_HANDLE_MAX;
    let held = count_under(tx, &keys::handle_locks(inode, handle), max)?
        + count_under(tx, &keys::handle_owner_locks(inode, handle), max)?;
    if held + adding > max {
        return Err(MetaError::TooMany(format!(
            "handle {handle} would hold more than {max} byte-range locks, its limit: unlock some first"
        ))
        .into());
    }
    Ok(())
}

fn last_u64(key: &[u8]) -> u64 {
    keys::trailing_u64(key).unwrap_or(0)
}

/// The lock records under `prefix`, in key order.
fn records_under<R: KvRead + ?Sized>(
    tx: &R,
    prefix: &[u8],
) -> Result<Vec<(Vec<u8>, LockRecord)>, StoreError> {
    let mut out = Vec::new();
    for key in keys_under(tx, prefix)? {
        if let Some(lock) = get::<LockRecord, _>(tx, &key)? {
            out.push((key, lock));
        }
    }
    Ok(out)
}
