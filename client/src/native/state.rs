//! What the client keeps per open file, shared between the [`File`]
//! (its owner), the reconnect path (which resends unflushed writes) and the
//! notice task (which flushes when a write lease is broken).
//!
//! [`File`]: super::File

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use cairn_proto::wire::{Attr, HandleId, Request, Response, Write};

use super::{Client, unexpected};
use crate::ClientError;

/// One open file's shared state.
pub struct FileState {
    pub(super) unflushed: Unflushed,
    lease: AtomicU8,
    flushing: tokio::sync::Mutex<()>,
    /// Held through each append (see [`FileState::append_turn`]).
    appending: Arc<tokio::sync::Mutex<()>>,
}

impl FileState {
    pub(super) fn new(lease: u8) -> Self {
        Self {
            unflushed: Unflushed::default(),
            lease: AtomicU8::new(lease),
            flushing: tokio::sync::Mutex::new(()),
            appending: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// Appends through one handle go one at a time, each whole (all its
    /// requests) before the next. A write larger than one request is then
    /// not split by another task's append. And at most one append is ever
    /// unanswered: were two in flight, a node dying after answering the
    /// later but not the earlier would leave a hole where it had put the
    /// earlier, which the resume then appends after the later. The turn
    /// is held by a task that takes each append to its end, even when its
    /// caller stops waiting.
    pub(super) fn append_turn(&self) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(&self.appending)
    }

    pub(super) fn lease(&self) -> u8 {
        self.lease.load(Ordering::Acquire)
    }

    /// Keeps at most `to` of the lease.
    pub(super) fn lower_lease(&self, to: u8) {
        self.lease.fetch_and(to, Ordering::AcqRel);
    }

    /// Flushes if `limit` unflushed bytes are still held once it is this
    /// caller's turn: writes in flight together all pass the limit, and
    /// the first flush covers the others' (each flush costs a commit with
    /// the handle's writes waiting on the node).
    pub(super) async fn flush_past(
        &self,
        client: &Client,
        handle: HandleId,
        limit: usize,
    ) -> Result<(), ClientError> {
        let one = self.flushing.lock().await;
        if self.unflushed.bytes() < limit {
            return Ok(());
        }
        self.flush_locked(one, client, handle).await.map(drop)
    }

    /// Makes every acknowledged write durable on the cluster.
    pub(super) async fn flush(
        &self,
        client: &Client,
        handle: HandleId,
    ) -> Result<Attr, ClientError> {
        let one = self.flushing.lock().await;
        self.flush_locked(one, client, handle).await
    }

    async fn flush_locked(
        &self,
        _one: tokio::sync::MutexGuard<'_, ()>,
        client: &Client,
        handle: HandleId,
    ) -> Result<Attr, ClientError> {
        let covered = self.unflushed.acked();
        match client.call(Request::Flush(handle)).await? {
            Response::Attr(a) => {
                self.unflushed.forget(&covered);
                Ok(a)
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// Writes not yet covered by a flush, in the order they were made.
#[derive(Default)]
pub struct Unflushed {
    writes: Mutex<BTreeMap<u64, Pending>>,
    next: AtomicU64,
    bytes: AtomicUsize,
}

struct Pending {
    offset: u64,
    data: Bytes,
    acked: bool,
    /// The sequence number of an append whose offset is not known yet.
    append_seq: u64,
}

impl Unflushed {
    fn add(&self, offset: u64, data: Bytes, append_seq: u64) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(data.len(), Ordering::Relaxed);
        if let Ok(mut w) = self.writes.lock() {
            w.insert(
                id,
                Pending {
                    offset,
                    data,
                    acked: false,
                    append_seq,
                },
            );
        }
        id
    }

    /// The server took write `id` at `offset`.
    fn ack(&self, id: u64, offset: u64) {
        if let Ok(mut w) = self.writes.lock()
            && let Some(p) = w.get_mut(&id)
        {
            p.acked = true;
            p.offset = offset;
            p.append_seq = 0;
        }
    }

    /// Write `id` failed or was given up on: it is not sent again at the
    /// next failover. A failed write's outcome is unknown, as with a
    /// local disk; sent again later, it could overwrite newer data, or
    /// (an append) land a second time.
    pub(super) fn drop_unacked(&self, id: u64) {
        if let Ok(mut w) = self.writes.lock()
            && w.get(&id).is_some_and(|p| !p.acked)
            && let Some(p) = w.remove(&id)
        {
            self.bytes.fetch_sub(p.data.len(), Ordering::Relaxed);
        }
    }

    /// The handle is gone on the cluster (closed, or expired while the
    /// client was away): nothing is left to send it.
    pub(super) fn clear(&self) {
        if let Ok(mut w) = self.writes.lock() {
            w.clear();
            self.bytes.store(0, Ordering::Relaxed);
        }
    }

    /// Writes acknowledged so far: what a flush sent now covers.
    fn acked(&self) -> Vec<u64> {
        match self.writes.lock() {
            Ok(w) => w
                .iter()
                .filter(|(_, p)| p.acked)
                .map(|(id, _)| *id)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// True when every write made so far is covered by a flush.
    pub(super) fn is_empty(&self) -> bool {
        self.writes.lock().map(|w| w.is_empty()).unwrap_or(false)
    }

    /// Bytes held.
    pub(super) fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn forget(&self, ids: &[u64]) {
        if let Ok(mut w) = self.writes.lock() {
            for id in ids {
                if let Some(p) = w.remove(id) {
                    self.bytes.fetch_sub(p.data.len(), Ordering::Relaxed);
                }
            }
        }
    }

    /// Every write still to be flushed, as (sequence number, request):
    /// writes with a known offset first, oldest first, then the appends
    /// not yet placed, in the order of their sequence numbers. Placed
    /// writes keep the offsets the node gave them; an unplaced append
    /// sent before them could take one of those offsets (the node may
    /// have placed a later append first) and be overwritten.
    pub(super) fn pending(&self, handle: HandleId) -> Vec<(u64, Request)> {
        let mut pending: Vec<(u64, Request)> = match self.writes.lock() {
            Ok(w) => w
                .values()
                .map(|p| {
                    let req = Request::Write(Write {
                        handle,
                        offset: p.offset,
                        data: p.data.clone(),
                    });
                    (p.append_seq, req)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        // Stable: placed writes (sequence number 0) keep their order.
        pending.sort_by_key(|(seq, _)| (*seq != 0, *seq));
        pending
    }
}

/// Write `id` of an [`Unflushed`] until it is acknowledged: dropped
/// before that (the call failed, or its future was dropped), it is taken
/// out again.
pub(super) struct Unacked<'a> {
    unflushed: &'a Unflushed,
    id: Option<u64>,
}

impl<'a> Unacked<'a> {
    pub(super) fn add(unflushed: &'a Unflushed, offset: u64, data: Bytes, append_seq: u64) -> Self {
        let id = unflushed.add(offset, data, append_seq);
        Self {
            unflushed,
            id: Some(id),
        }
    }

    /// The node took the write at `offset`.
    pub(super) fn ack(mut self, offset: u64) {
        if let Some(id) = self.id.take() {
            self.unflushed.ack(id, offset);
        }
    }
}

impl Drop for Unacked<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            self.unflushed.drop_unacked(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(u: &Unflushed) -> Vec<(u64, u64)> {
        u.pending(HandleId(1))
            .into_iter()
            .map(|(seq, r)| match r {
                Request::Write(w) => (seq, w.offset),
                _ => unreachable!("pending holds writes"),
            })
            .collect()
    }

    #[test]
    fn placed_writes_go_again_before_unplaced_appends() {
        let u = Unflushed::default();
        let data = || Bytes::from_static(b"abcd");
        // Two appends in flight: the node placed the later one (seq 11)
        // first, at 100, and its answer came; seq 10's did not.
        let first = Unacked::add(&u, 0, data(), 10);
        Unacked::add(&u, 0, data(), 11).ack(100);
        Unacked::add(&u, 50, data(), 0).ack(50);
        let third = Unacked::add(&u, 0, data(), 12);
        assert_eq!(offsets(&u), [(0, 100), (0, 50), (10, 0), (12, 0)]);
        drop((first, third));
    }

    #[test]
    fn a_write_given_up_on_is_not_sent_again() {
        let u = Unflushed::default();
        Unacked::add(&u, 0, Bytes::from_static(b"kept"), 0).ack(0);
        drop(Unacked::add(&u, 8, Bytes::from_static(b"failed"), 0));
        assert_eq!(offsets(&u), [(0, 0)]);
        assert_eq!(u.bytes(), 4);
        u.clear();
        assert!(u.is_empty());
        assert_eq!(u.bytes(), 0);
    }
}
