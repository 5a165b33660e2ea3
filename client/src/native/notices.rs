//! Notices the server pushes on unidirectional streams: lease breaks.
//!
//! Each connection has a task that reads its notices into one queue; one
//! task per client works through the queue: it flushes a file whose write
//! lease is being broken, lowers the file's lease, tells subscribers (a
//! mount drops its page cache) and acknowledges, so the open that caused
//! the break can go on.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use cairn_proto::wire::{LeaseAck, LeaseBreak, Notice, Request, decode_frame, lease};

use super::{Client, Inner};

/// Largest notice frame read.
const NOTICE_BYTES_MAX: usize = 4096;
/// Notices queued for the client's notice task, at most.
pub(super) const QUEUE_DEPTH: usize = 256;
/// Breaks remembered for handles whose open has not returned yet.
const EARLY_MAX: usize = 1024;

/// Reads the notices of `conn` (the client's connection `generation`)
/// into the client's queue until the connection closes; when it is lost
/// rather than replaced, reconnects at once, so the session (its handles'
/// timeout, breaks of its leases) lives on even while the client is idle.
pub(super) fn accept(conn: quinn::Connection, generation: u64, inner: Weak<Inner>) {
    let Some(queue) = inner.upgrade().map(|i| i.notices.clone()) else {
        return;
    };
    tokio::spawn(async move {
        read_notices(&conn, &queue).await;
        drop(queue);
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        if client.drop_connection(generation).await {
            tracing::debug!(reason = ?conn.close_reason(), "connection lost; reconnecting");
            let deadline = std::time::Instant::now() + client.inner.cfg.failover_timeout;
            if let Err(e) = client.connection(deadline).await {
                tracing::warn!(error = %e, "could not reconnect; the next call tries again");
            }
        }
    });
}

async fn read_notices(conn: &quinn::Connection, queue: &tokio::sync::mpsc::Sender<Notice>) {
    {
        while let Ok(mut recv) = conn.accept_uni().await {
            let bytes = match recv.read_to_end(NOTICE_BYTES_MAX).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::debug!(error = %e, "notice stream failed");
                    continue;
                }
            };
            let notice = match decode_frame(&bytes) {
                Ok(Some((frame, _))) => Notice::decode(&frame),
                Ok(None) => {
                    tracing::warn!("truncated notice");
                    continue;
                }
                Err(e) => Err(e.into()),
            };
            match notice {
                Ok(n) => {
                    if queue.send(n).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "notice not understood"),
            }
        }
    }
}

/// Works through the client's notices while the client exists.
pub(super) async fn run(inner: Weak<Inner>, mut queue: tokio::sync::mpsc::Receiver<Notice>) {
    while let Some(notice) = queue.recv().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let client = Client { inner };
        match notice {
            Notice::LeaseBreak(b) => client.on_lease_break(b).await,
        }
    }
}

/// Breaks that arrived before their handle's open returned.
#[derive(Default)]
pub(super) struct Early(HashMap<cairn_proto::wire::HandleId, u8>);

impl Early {
    pub(super) fn note(&mut self, b: &LeaseBreak) {
        if self.0.len() >= EARLY_MAX {
            self.0.clear();
        }
        *self.0.entry(b.handle).or_insert(lease::READ_WRITE) &= b.to;
    }

    pub(super) fn take(&mut self, handle: cairn_proto::wire::HandleId) -> Option<u8> {
        self.0.remove(&handle)
    }
}

impl Client {
    async fn on_lease_break(&self, b: LeaseBreak) {
        // Under the files lock, as `open` registers a file: a break that
        // finds no file is noted where that open will see it.
        let state = match self.inner.files.lock() {
            Ok(files) => {
                let st = files.get(&b.handle).map(Arc::clone);
                if st.is_none()
                    && let Ok(mut early) = self.inner.early_breaks.lock()
                {
                    early.note(&b);
                }
                st
            }
            Err(_) => None,
        };
        if let Some(st) = &state {
            if st.lease() & lease::WRITE != 0 && b.to & lease::WRITE == 0 {
                // What the write lease let this client keep unflushed
                // must be visible to whoever opens the file next.
                if let Err(e) = st.flush(self, b.handle).await {
                    tracing::warn!(handle = %b.handle, error = %e, "flush for a lease break failed");
                }
            }
            st.lower_lease(b.to);
        }
        tracing::debug!(handle = %b.handle, to = lease::name(b.to), "lease broken");
        // Nobody listening is fine.
        let _ = self.inner.breaks.send(b.clone());
        let ack = Request::LeaseAck(LeaseAck {
            handle: b.handle,
            lease: b.to,
        });
        if let Err(e) = self.call(ack).await {
            tracing::warn!(handle = %b.handle, error = %e, "lease break not acknowledged");
        }
    }
}
