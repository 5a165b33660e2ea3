//! What the client keeps per open file, shared between the [`File`]
//! (its owner), the reconnect path (which resends unflushed writes) and the
//! notice task (which flushes when a write lease is broken).
//!
//! [`File`]: super::File

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use cairn_proto::wire::{Attr, HandleId, Request, Response, Write};

use super::{Client, unexpected};
use crate::ClientError;

/// One open file's shared state.
pub struct FileState {
    pub(super) unflushed: Unflushed,
    lease: AtomicU8,
    flushing: tokio::sync::Mutex<()>,
}

impl FileState {
    pub(super) fn new(lease: u8) -> Self {
        Self {
            unflushed: Unflushed::default(),
            lease: AtomicU8::new(lease),
            flushing: tokio::sync::Mutex::new(()),
        }
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
    pub(super) fn add(&self, offset: u64, data: Bytes, append_seq: u64) -> u64 {
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
    pub(super) fn ack(&self, id: u64, offset: u64) {
        if let Ok(mut w) = self.writes.lock()
            && let Some(p) = w.get_mut(&id)
        {
            p.acked = true;
            p.offset = offset;
            p.append_seq = 0;
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

    /// Every write still to be flushed, as (sequence number, request),
    /// oldest first: positional writes, and appends not yet placed.
    pub(super) fn pending(&self, handle: HandleId) -> Vec<(u64, Request)> {
        match self.writes.lock() {
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
        }
    }
}
