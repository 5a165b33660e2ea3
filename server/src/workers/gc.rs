//! Garbage collection of chunks no file references.
//!
//! A chunk on disk is deleted when it is not pinned by an upload and either
//! its reference count has been zero for the grace period, or it has no
//! record at all (an upload that never committed) and its file is older than
//! the grace period. The pin check, the metadata check and the unlink happen
//! under the pin lock, so an upload either sees the chunk gone (and writes it
//! again) or GC sees the upload's pin. Records of deleted chunks are then
//! dropped through a metadata command.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_proto::ContentHash;

use super::Worker;
use crate::chunks::{ChunkStore, Pins};
use crate::clock::{Clock, system_time_ns};
use crate::consensus::Committer;
use crate::meta::{Command, MetaStore};
use crate::metrics::Metrics;

/// Most chunk records dropped by one metadata command.
const FORGET_BATCH_MAX: usize = 1024;

pub struct Gc {
    pub meta: Arc<MetaStore>,
    pub committer: Committer,
    pub chunks: Arc<dyn ChunkStore>,
    pub pins: Arc<Pins>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub grace: Duration,
    pub interval: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcReport {
    pub scanned: u64,
    pub deleted: u64,
}

impl Gc {
    /// One full pass over the chunk store.
    pub async fn pass(&self) -> Result<GcReport, String> {
        // Only on metadata known to be current: a node cut off from the
        // majority, or still catching up, could take a chunk for unused
        // that a newer committed file references.
        self.committer
            .read_barrier()
            .await
            .map_err(|e| format!("metadata not known to be current, pass skipped: {e}"))?;
        let meta = Arc::clone(&self.meta);
        let chunks = Arc::clone(&self.chunks);
        let pins = Arc::clone(&self.pins);
        let now_ns = self.clock.now_ns();
        let grace_ns = i64::try_from(self.grace.as_nanos()).unwrap_or(i64::MAX);
        let (report, forgotten) = tokio::task::spawn_blocking(move || {
            sweep(&meta, chunks.as_ref(), &pins, now_ns, grace_ns)
        })
        .await
        .map_err(|e| e.to_string())??;
        for batch in forgotten.chunks(FORGET_BATCH_MAX) {
            let cmd = Command::ForgetChunks {
                hashes: batch.to_vec(),
            };
            self.committer
                .commit(cmd)
                .await
                .map_err(|e| e.to_string())?;
        }
        self.metrics.gc_runs.inc();
        self.metrics.gc_chunks_deleted.inc_by(report.deleted);
        if report.deleted > 0 {
            tracing::info!(
                scanned = report.scanned,
                deleted = report.deleted,
                "gc pass"
            );
        }
        Ok(report)
    }
}

/// Decides on each chunk as the store lists it, so memory does not grow
/// with the number of chunks (only with the number deleted this pass,
/// whose records are then dropped). Stops at the first error.
fn sweep(
    meta: &MetaStore,
    chunks: &dyn ChunkStore,
    pins: &Pins,
    now_ns: i64,
    grace_ns: i64,
) -> Result<(GcReport, Vec<ContentHash>), String> {
    let mut report = GcReport::default();
    let mut forgotten = Vec::new();
    let mut failure = None;
    chunks
        .for_each(&mut |hash, written: SystemTime| {
            if failure.is_some() {
                return;
            }
            report.scanned += 1;
            let decided = pins.if_unpinned(&hash, || {
                collect_one(
                    meta,
                    chunks,
                    &hash,
                    system_time_ns(written),
                    now_ns,
                    grace_ns,
                )
            });
            match decided {
                Some(Ok(Some(forget))) => {
                    report.deleted += 1;
                    if forget {
                        forgotten.push(hash);
                    }
                }
                Some(Err(e)) => failure = Some(e),
                _ => {}
            }
        })
        .map_err(|e| e.to_string())?;
    match failure {
        Some(e) => Err(e),
        None => Ok((report, forgotten)),
    }
}

/// Deletes one unpinned chunk if it is collectable. `Some(forget)` when
/// deleted, `forget` saying whether a zero-count record remains to drop.
fn collect_one(
    meta: &MetaStore,
    chunks: &dyn ChunkStore,
    hash: &ContentHash,
    written_ns: i64,
    now_ns: i64,
    grace_ns: i64,
) -> Result<Option<bool>, String> {
    let record = meta.chunk_record(hash).map_err(|e| e.to_string())?;
    let expired = |since: i64| now_ns.saturating_sub(since) >= grace_ns;
    let (delete, forget) = match record {
        Some(r) if r.refs > 0 => (false, false),
        // Both clocks: a chunk another upload just wrote again (possibly on
        // another node, which refreshes the file's time) is kept.
        Some(r) => (
            expired(r.unreferenced_since_ns) && expired(written_ns),
            true,
        ),
        None => (expired(written_ns), false),
    };
    if !delete {
        return Ok(None);
    }
    chunks.delete(hash).map_err(|e| e.to_string())?;
    Ok(Some(forget))
}

impl Worker for Gc {
    fn name(&self) -> &'static str {
        "gc"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> Result<(), String> {
        self.pass().await.map(|_| ())
    }
}
