//! Write-behind: a write(2) is answered once its data is queued; the data
//! goes to the cluster in the background, several writes at a time.
//!
//! Why: without the kernel's write-back cache, FUSE hands over a file's
//! writes one at a time and waits for each answer, so waiting for the
//! cluster's round trip made sequential writes latency-bound. Queued bytes
//! and writes are bounded per handle. A write that overlaps one still in
//! flight waits for it, so overlapping writes reach the cluster in the
//! program's order (appends are never queued: the cluster places them in
//! arrival order). Whatever must see the writes (reads, attributes,
//! truncation, flush, fsync, close) waits for the queue first (a lock
//! change only for the writes queued before it), and
//! the first failure of a queued write is reported at the next write,
//! flush, fsync or close of its handle, as NFS reports a failed
//! write-back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use fuser::Errno;
use tokio::sync::{Notify, Semaphore};

use crate::errno::errno;
use crate::fs::OpenFile;

/// Bytes one handle may have queued and not yet acknowledged by the
/// cluster (the client keeps acknowledged ones until a flush; it flushes
/// every 64 MiB).
pub const QUEUED_BYTES_MAX: usize = 16 << 20;

/// Writes one handle may have in flight: two hide a round trip behind
/// 1 MiB writes. More did not go faster but slower (`dd bs=1M` of new
/// data on a dev cluster: 83-86 MB/s with 2, 76-82 with 4, 77-78 with 8):
/// writes in flight together reach the node in any order, and a node
/// hashes a file's ETag as its writes arrive only while they come in order
/// (otherwise it reads the file back at close). Small random writes would
/// otherwise send thousands at once.
pub const QUEUED_WRITES_MAX: usize = 2;

pub struct WriteBehind {
    budget: Arc<Semaphore>,
    slots: Arc<Semaphore>,
    state: Mutex<State>,
    done: Notify,
}

#[derive(Default)]
struct State {
    /// Writes in flight: id -> byte range.
    in_flight: BTreeMap<u64, (u64, u64)>,
    next_id: u64,
    /// The first failure not yet reported.
    error: Option<Errno>,
}

impl State {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.in_flight.values().any(|&(s, e)| s < end && start < e)
    }
}

impl Default for WriteBehind {
    fn default() -> Self {
        Self {
            budget: Arc::new(Semaphore::new(QUEUED_BYTES_MAX)),
            slots: Arc::new(Semaphore::new(QUEUED_WRITES_MAX)),
            state: Mutex::new(State::default()),
            done: Notify::new(),
        }
    }
}

/// Queues `data` at `offset` of `f`; returns once it is queued (or with
/// the error an earlier queued write left).
pub async fn queue(f: &Arc<OpenFile>, offset: u64, data: Bytes) -> Result<(), Errno> {
    let this = &f.writes;
    this.take_error()?;
    let weight = data.len().clamp(1, QUEUED_BYTES_MAX) as u32;
    let slot = Arc::clone(&this.slots)
        .acquire_owned()
        .await
        .map_err(|_| Errno::EIO)?;
    let permit = Arc::clone(&this.budget)
        .acquire_many_owned(weight)
        .await
        .map_err(|_| Errno::EIO)?;
    let end = offset + data.len() as u64;
    let id = loop {
        // Registered before the check, so a completion in between still
        // wakes this wait.
        let done = this.done.notified();
        {
            let mut st = this.state.lock().map_err(|_| Errno::EIO)?;
            if !st.overlaps(offset, end) {
                let id = st.next_id;
                st.next_id += 1;
                st.in_flight.insert(id, (offset, end));
                break id;
            }
        }
        done.await;
    };
    let f = Arc::clone(f);
    tokio::spawn(async move {
        let r = f.file.write_at(offset, data).await;
        drop((permit, slot));
        let this = &f.writes;
        if let Ok(mut st) = this.state.lock() {
            st.in_flight.remove(&id);
            if let Err(e) = &r {
                tracing::warn!(handle = %f.file.handle(), offset, error = %e, "queued write failed");
                st.error.get_or_insert(errno(e));
            }
        }
        this.done.notify_waiters();
    });
    Ok(())
}

impl WriteBehind {
    /// Waits until every queued write has reached the cluster (or failed).
    pub async fn wait(&self) {
        loop {
            let done = self.done.notified();
            match self.state.lock() {
                Ok(st) if !st.in_flight.is_empty() => {}
                _ => return,
            }
            done.await;
        }
    }

    /// Waits until the writes queued before this call have reached the
    /// cluster (or failed), not for those queued while it waits: a
    /// process streaming writes never holds this caller up for long.
    pub async fn wait_queued(&self) {
        let last = match self.state.lock() {
            Ok(st) => st.next_id,
            Err(_) => return,
        };
        loop {
            let done = self.done.notified();
            match self.state.lock() {
                Ok(st) if st.in_flight.range(..last).next().is_some() => {}
                _ => return,
            }
            done.await;
        }
    }

    /// Records a failure of this handle's writes (a flush made for a lock
    /// change) to report at its next write, flush, fsync or close.
    pub fn fail(&self, e: Errno) {
        if let Ok(mut st) = self.state.lock() {
            st.error.get_or_insert(e);
        }
    }

    /// [`WriteBehind::wait`], then reports (once) a failure of a queued
    /// write.
    pub async fn drain(&self) -> Result<(), Errno> {
        self.wait().await;
        self.take_error()
    }

    fn take_error(&self) -> Result<(), Errno> {
        match self.state.lock().map_err(|_| Errno::EIO)?.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_is_half_open() {
        let mut st = State::default();
        st.in_flight.insert(0, (10, 20));
        assert!(!st.overlaps(0, 10));
        assert!(!st.overlaps(20, 30));
        assert!(st.overlaps(19, 21));
        assert!(st.overlaps(0, 100));
        assert!(st.overlaps(12, 13));
    }
}
