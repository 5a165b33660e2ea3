//! Leases on open files, as metadata (see `cairn_proto::wire::lease`).
//!
//! The invariant every node keeps: a handle with a `READ` lease has no
//! handle of another session open for writing beside it; a handle with a
//! `WRITE` lease has no handle of another session open at all. Handles of
//! the same session never conflict (one client caches for all its opens,
//! like an SMB lease key). An open that would break the invariant is
//! refused with [`MetaError::LeasesHeld`] until the holders acknowledged
//! their breaks, or taken away by force when they do not answer in time.

use cairn_proto::InodeId;
use cairn_proto::wire::{HandleId, SessionId, access, lease};

use super::apply::{Applied, ApplyError, MetaError, get};
use super::command::Command;
use super::keys;
use super::overlay::{KvRead, Overlay};
use super::records::{HandleRecord, LeaseBreakRecord, encode};
use super::sessions::load_handle;
use super::store::StoreError;

/// The lease actually wanted by a request: `WRITE` only with `READ`.
pub fn normalize(wanted: u8) -> u8 {
    if wanted & lease::WRITE != 0 {
        lease::READ_WRITE
    } else {
        wanted & lease::READ
    }
}

/// The most another session's handle may hold beside a handle of `access`.
fn allowed_beside(access_bits: u8) -> u8 {
    if access_bits & access::WRITE != 0 {
        lease::NONE
    } else {
        lease::READ
    }
}

/// The handles open on `inode`, with their records.
pub fn open_on<R: KvRead + ?Sized>(
    tx: &R,
    inode: InodeId,
) -> Result<Vec<(HandleId, HandleRecord)>, ApplyError> {
    let prefix = keys::open_handles(inode);
    let end = keys::prefix_end(&prefix);
    let mut start = prefix;
    let mut out = Vec::new();
    while let Some(key) = tx.first_key_in(&start, &end)? {
        if let Some(h) = keys::trailing_u64(&key) {
            out.push((HandleId(h), load_handle(tx, HandleId(h))?));
        }
        start = key;
        start.push(0);
    }
    Ok(out)
}

/// Another session's lease an open needs lowered: (handle, holder, to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub handle: HandleId,
    pub holder: HandleRecord,
    pub to: u8,
}

/// The leases an open of `access` by `session` on `inode` conflicts with.
pub fn conflicts<R: KvRead + ?Sized>(
    tx: &R,
    inode: InodeId,
    session: &SessionId,
    access_bits: u8,
) -> Result<Vec<Conflict>, ApplyError> {
    Ok(conflicts_among(&open_on(tx, inode)?, session, access_bits))
}

/// [`conflicts`] among `open`, the handles open on the inode.
pub fn conflicts_among(
    open: &[(HandleId, HandleRecord)],
    session: &SessionId,
    access_bits: u8,
) -> Vec<Conflict> {
    let allowed = allowed_beside(access_bits);
    open.iter()
        .filter(|(_, h)| h.session != *session && h.lease & !allowed != 0)
        .map(|(handle, holder)| Conflict {
            handle: *handle,
            to: holder.lease & allowed,
            holder: holder.clone(),
        })
        .collect()
}

/// The lease a new handle of `session` gets beside the other sessions'
/// handles in `open` (those open on the inode).
pub fn grantable_among(open: &[(HandleId, HandleRecord)], session: &SessionId, wanted: u8) -> u8 {
    open.iter()
        .filter(|(_, other)| other.session != *session)
        .fold(normalize(wanted), |granted, (_, other)| {
            granted & allowed_beside(other.access)
        })
}

/// Records a break for each conflict (a lower target wins over an
/// earlier, higher one); with `force`, lowers the leases at once too.
pub fn record_breaks<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    found: &[Conflict],
    force: bool,
) -> Result<(), ApplyError> {
    for c in found {
        let key = keys::lease_break(&c.holder.session, c.handle);
        let to = match get::<LeaseBreakRecord, _>(tx, &key)? {
            Some(pending) => pending.to & c.to,
            None => c.to,
        };
        tx.put(
            key,
            encode(&LeaseBreakRecord {
                from: c.holder.lease,
                to,
            }),
        );
        if force {
            let rec = HandleRecord {
                lease: to,
                ..c.holder.clone()
            };
            tx.put(keys::handle(c.handle), encode(&rec));
        }
    }
    Ok(())
}

/// Applies `BreakLeases` and `AckLease`.
pub(super) fn apply_lease_command<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    cmd: &Command,
) -> Result<Applied, ApplyError> {
    match cmd {
        Command::BreakLeases {
            inode,
            session,
            access,
        } => {
            let found = conflicts(tx, *inode, session, *access)?;
            record_breaks(tx, &found, false)?;
            Ok(Applied::nothing())
        }
        Command::AckLease { handle, lease } => ack(tx, *handle, *lease),
        other => Err(MetaError::Invalid(format!("{} is not a lease command", other.kind())).into()),
    }
}

/// Lowers a handle's lease to at most `to` (never raises it). A closed
/// handle has nothing left to acknowledge: that is success too, so a
/// retried acknowledgement never fails.
fn ack<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    handle: HandleId,
    to: u8,
) -> Result<Applied, ApplyError> {
    let Some(mut h) = get::<HandleRecord, _>(tx, &keys::handle(handle))? else {
        return Ok(Applied::nothing());
    };
    h.lease &= to;
    let key = keys::lease_break(&h.session, handle);
    if let Some(pending) = get::<LeaseBreakRecord, _>(tx, &key)?
        && h.lease & !pending.to == 0
    {
        tx.delete(key);
    }
    tx.put(keys::handle(handle), encode(&h));
    Ok(Applied::nothing())
}

/// True if a break of `session`'s `handle` awaits its acknowledgement.
pub fn break_pending<R: KvRead + ?Sized>(
    tx: &R,
    session: &SessionId,
    handle: HandleId,
) -> Result<bool, StoreError> {
    Ok(tx.get(&keys::lease_break(session, handle))?.is_some())
}

/// Drops a closing handle's pending break: closing acknowledges it.
///
/// Deletes only a record that is there: a blind delete per close left a
/// tombstone under the break prefix for every file ever closed, and each
/// node's scan for pending breaks (after every such change) stepped over
/// all of them.
pub(super) fn forget_break<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    session: &SessionId,
    handle: HandleId,
) -> Result<(), StoreError> {
    let key = keys::lease_break(session, handle);
    if tx.get(&key)?.is_some() {
        tx.delete(key);
    }
    Ok(())
}

/// A break waiting for its holder's acknowledgement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingBreak {
    pub session: SessionId,
    pub handle: HandleId,
    pub from: u8,
    pub to: u8,
}

/// Every unacknowledged break, at most `limit` of them.
#[cfg(test)]
pub fn pending_breaks<R: KvRead + ?Sized>(
    tx: &R,
    limit: usize,
) -> Result<Vec<PendingBreak>, StoreError> {
    breaks_under(tx, &[keys::LEASE_BREAK_PREFIX], limit)
}

/// `session`'s unacknowledged breaks, at most `limit` of them (a node
/// pushes these to the session's connection, if it has it).
pub fn session_breaks<R: KvRead + ?Sized>(
    tx: &R,
    session: &SessionId,
    limit: usize,
) -> Result<Vec<PendingBreak>, StoreError> {
    breaks_under(tx, &keys::lease_breaks(session), limit)
}

fn breaks_under<R: KvRead + ?Sized>(
    tx: &R,
    prefix: &[u8],
    limit: usize,
) -> Result<Vec<PendingBreak>, StoreError> {
    let end = keys::prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(key) = tx.first_key_in(&start, &end)?
    {
        let session: Option<[u8; 16]> = key.get(1..17).and_then(|s| s.try_into().ok());
        if let (Some(session), Some(handle), Some(rec)) = (
            session,
            keys::trailing_u64(&key),
            get::<LeaseBreakRecord, _>(tx, &key)?,
        ) {
            out.push(PendingBreak {
                session: SessionId(session),
                handle: HandleId(handle),
                from: rec.from,
                to: rec.to,
            });
        }
        start = key;
        start.push(0);
    }
    Ok(out)
}

/// True once none of `handles` holds more than its break allows (closed
/// handles hold nothing).
pub fn breaks_settled<R: KvRead + ?Sized>(
    tx: &R,
    waiting: &[Conflict],
) -> Result<bool, StoreError> {
    for c in waiting {
        if let Some(h) = get::<HandleRecord, _>(tx, &keys::handle(c.handle))?
            && h.lease & !c.to != 0
        {
            return Ok(false);
        }
    }
    Ok(true)
}
