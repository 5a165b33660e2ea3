//! The scrubber: re-reads every local chunk at a limited rate, checking
//! its hash, and replaces a corrupt copy with a verified one from a peer.
//! (Reads also verify every chunk; the scrubber finds rot in data nobody
//! is reading.)

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_proto::ContentHash;
use tokio::runtime::Handle;

use super::Worker;
use crate::chunks::{ChunkError, ChunkStore};
use crate::cluster::replicated::{Placement, fetch_remote};
use crate::cluster::service::RepairStats;
use crate::cluster::transport::Transport;

pub struct Scrubber {
    pub local: Arc<dyn ChunkStore>,
    pub transport: Arc<Transport>,
    pub placement: Placement,
    pub stats: Arc<RepairStats>,
    pub interval: Duration,
    pub bytes_per_sec: u64,
}

/// Checks one chunk; true if it was corrupt (and then repaired or dropped).
fn scrub_one(
    local: &dyn ChunkStore,
    transport: &Transport,
    placement: &Placement,
    hash: &ContentHash,
) -> Result<(bool, u64), ChunkError> {
    match local.get(hash) {
        Ok(data) => Ok((false, data.len() as u64)),
        Err(ChunkError::Missing(_)) => Ok((false, 0)),
        Err(e @ (ChunkError::Corrupt { .. } | ChunkError::Oversize { .. })) => {
            tracing::error!(%hash, error = %e, "scrub found a corrupt chunk copy");
            // Dropped first: a bad copy must never be served or count as
            // a replica, whether or not a good one can be fetched now.
            local.delete(hash)?;
            match fetch_remote(transport, placement, &Handle::current(), hash) {
                Ok(data) => match local.put(hash, &data) {
                    Ok(()) => tracing::info!(%hash, "replaced a corrupt chunk copy from a peer"),
                    // The rest of the pass still checks the other copies.
                    Err(ChunkError::NoSpace) => tracing::warn!(
                        %hash,
                        "no space here for the good copy (the disk is at its reserve); the repairer will retry"
                    ),
                    Err(e) => return Err(e),
                },
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "no good copy reachable; the repairer will retry")
                }
            }
            Ok((true, 0))
        }
        Err(e) => Err(e),
    }
}

impl Worker for Scrubber {
    fn name(&self) -> &'static str {
        "scrubber"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> Result<(), String> {
        let local = Arc::clone(&self.local);
        let hashes = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            local.for_each(&mut |h, _| all.push(h)).map(|()| all)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut bytes = 0u64;
        for hash in hashes {
            let (local, transport, placement) = (
                Arc::clone(&self.local),
                Arc::clone(&self.transport),
                self.placement.clone(),
            );
            let (corrupt, read) = tokio::task::spawn_blocking(move || {
                scrub_one(local.as_ref(), &transport, &placement, &hash)
            })
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
            if corrupt {
                self.stats.corrupt_found.fetch_add(1, Ordering::Relaxed);
            }
            bytes += read;
            // Rate limit: stay behind bytes_per_sec since the pass began.
            let due = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
        Ok(())
    }
}
