//! Group commit: one thread applies queued commands in batches and syncs each
//! batch once.
//!
//! A small file upload is one command; syncing RocksDB's WAL for each would cap
//! small-file throughput at the disk's fsync rate. Instead the committer takes
//! every command waiting in its queue (up to [`GROUP_COMMANDS_MAX`]), applies
//! them in order into one write batch, syncs it, and only then answers each
//! caller. A crash before the sync loses the whole group, and nobody was told
//! any of it had succeeded.

use std::sync::Arc;
use std::thread;
use std::time::Instant;

use rocksdb::WriteBatch;
use tokio::sync::{mpsc, oneshot};

use super::apply::{Applied, ApplyError, MetaError, apply};
use super::command::Command;
use super::overlay::Overlay;
use super::store::{MetaStore, StoreError};
use crate::metrics::Metrics;

/// Most commands applied and synced as one batch.
pub const GROUP_COMMANDS_MAX: usize = 512;
/// Most commands waiting for the committer; senders wait beyond this.
pub const QUEUE_COMMANDS_MAX: usize = 4096;

/// Why a command was not committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Refused by `apply`; nothing changed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The store failed; the command and the rest of its group were not
    /// committed.
    #[error("metadata store: {0}")]
    Store(Arc<StoreError>),
    #[error("the metadata committer has stopped")]
    Stopped,
}

struct Request {
    cmd: Command,
    reply: oneshot::Sender<Result<Applied, CommitError>>,
}

/// The handle through which everything writes metadata.
#[derive(Clone)]
pub struct Committer {
    queue: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer thread. It stops when every handle is dropped.
    pub fn start(store: Arc<MetaStore>, metrics: Arc<Metrics>) -> (Self, thread::JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_COMMANDS_MAX);
        let handle = thread::Builder::new()
            .name("meta-committer".into())
            .spawn(move || run(&store, rx, &metrics))
            .unwrap_or_else(|e| panic!("cannot spawn the metadata committer thread: {e}"));
        (Self { queue }, handle)
    }

    /// Applies `cmd` and returns once it is durable (or refused).
    pub async fn commit(&self, cmd: Command) -> Result<Applied, CommitError> {
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Request { cmd, reply })
            .await
            .map_err(|_| CommitError::Stopped)?;
        rx.await.map_err(|_| CommitError::Stopped)?
    }
}

fn run(store: &MetaStore, mut rx: mpsc::Receiver<Request>, metrics: &Metrics) {
    let mut group = Vec::with_capacity(GROUP_COMMANDS_MAX);
    while let Some(first) = rx.blocking_recv() {
        group.push(first);
        while group.len() < GROUP_COMMANDS_MAX {
            match rx.try_recv() {
                Ok(req) => group.push(req),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        commit_group(store, &mut group);
        metrics.meta_group(group.len(), started.elapsed());
        group.clear();
    }
    tracing::debug!("metadata committer stopped");
}

/// Applies and syncs one group, then answers every request in it.
fn commit_group(store: &MetaStore, group: &mut Vec<Request>) {
    let cmds: Vec<&Command> = group.iter().map(|r| &r.cmd).collect();
    match apply_batch(store, &cmds) {
        Ok(results) => {
            for (req, result) in group.drain(..).zip(results) {
                let result = result.map_err(|e| match e {
                    ApplyError::Meta(e) => CommitError::Meta(e),
                    ApplyError::Store(e) => CommitError::Store(Arc::new(e)),
                });
                let _ = req.reply.send(result);
            }
        }
        Err(e) => {
            // Logged by whoever handles the error (the HTTP layer logs 5xx).
            let e = Arc::new(e);
            for req in group.drain(..) {
                let _ = req.reply.send(Err(CommitError::Store(Arc::clone(&e))));
            }
        }
    }
}

/// Applies `cmds` in order into one write batch and syncs it. A command that
/// is refused, or that meets a bad record, changes nothing and fails alone;
/// a failed write commits none of the batch.
pub fn apply_batch(
    store: &MetaStore,
    cmds: &[&Command],
) -> Result<Vec<Result<Applied, ApplyError>>, StoreError> {
    let mut results = Vec::with_capacity(cmds.len());
    let mut overlay = Overlay::new(store);
    for cmd in cmds {
        let outcome = {
            let mut tx = Overlay::new(&overlay);
            apply(&mut tx, cmd).map(|applied| (applied, tx.into_pending()))
        };
        match outcome {
            Ok((applied, writes)) => {
                overlay.absorb(writes);
                results.push(Ok(applied));
            }
            Err(e) => results.push(Err(e)),
        }
    }
    if !overlay.is_empty() {
        let mut batch = WriteBatch::default();
        for (key, value) in overlay.into_pending() {
            match value {
                Some(v) => batch.put(key, v),
                None => batch.delete(key),
            }
        }
        store.write(batch)?;
    }
    Ok(results)
}
