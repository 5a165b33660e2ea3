//! The repairer: every referenced chunk this node should hold (by
//! placement over the live data nodes) and does not is fetched from a peer
//! that has it; a copy this node holds but is no longer placed on is
//! dropped once every node it is placed on confirms it has one.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cairn_proto::ContentHash;
use tokio::runtime::Handle;

use super::Worker;
use crate::chunks::{ChunkError, ChunkStore};
use crate::cluster::replicated::{CHUNK_RPC_TIMEOUT, Placement, fetch_remote};
use crate::cluster::rpc::{Request, Response};
use crate::cluster::service::RepairStats;
use crate::cluster::transport::Transport;
use crate::meta::MetaStore;

/// Most chunks fixed per pass, so one pass's to-do list stays small; the
/// rest wait for the next pass.
const WORK_MAX: usize = 10_000;

pub struct Repairer {
    pub meta: Arc<MetaStore>,
    pub local: Arc<dyn ChunkStore>,
    pub transport: Arc<Transport>,
    pub placement: Placement,
    pub stats: Arc<RepairStats>,
    pub interval: Duration,
}

/// What one scan found to do.
#[derive(Default)]
struct Work {
    missing: Vec<ContentHash>,
    surplus: Vec<ContentHash>,
    missing_total: u64,
}

impl Repairer {
    fn scan(
        meta: &MetaStore,
        local: &dyn ChunkStore,
        placement: &Placement,
    ) -> Result<Work, String> {
        let mut work = Work::default();
        let me = placement.me;
        meta.for_each_referenced_chunk(&mut |hash| {
            let placed_here = placement.targets(&hash).iter().any(|t| t.0 == me);
            let held = local.has(&hash);
            if placed_here && !held {
                work.missing_total += 1;
                if work.missing.len() < WORK_MAX {
                    work.missing.push(hash);
                }
            } else if !placed_here && held && work.surplus.len() < WORK_MAX {
                work.surplus.push(hash);
            }
        })
        .map_err(|e| e.to_string())?;
        Ok(work)
    }

    /// True if every node `hash` is placed on confirms it holds a copy.
    async fn fully_placed(&self, hash: &ContentHash) -> bool {
        let targets = self.placement.targets(hash);
        if targets.len() < self.placement.replicas {
            // Fewer live data nodes than copies wanted: keep every copy.
            return false;
        }
        for (_, info) in targets {
            let req = Request::HasChunk { hash: *hash };
            match self
                .transport
                .call::<_, Response>(&info.quic, &req, CHUNK_RPC_TIMEOUT)
                .await
            {
                Ok(Response::Has(true)) => {}
                _ => return false,
            }
        }
        true
    }

    async fn pass(&mut self) -> Result<(), String> {
        let (meta, local, placement) = (
            Arc::clone(&self.meta),
            Arc::clone(&self.local),
            self.placement.clone(),
        );
        let work =
            tokio::task::spawn_blocking(move || Self::scan(&meta, local.as_ref(), &placement))
                .await
                .map_err(|e| e.to_string())??;
        let mut still_missing = work.missing_total;
        for hash in work.missing {
            let (local, transport, placement) = (
                Arc::clone(&self.local),
                Arc::clone(&self.transport),
                self.placement.clone(),
            );
            let fixed = tokio::task::spawn_blocking(move || {
                let data = fetch_remote(&transport, &placement, &Handle::current(), &hash)?;
                local.put(&hash, &data)
            })
            .await
            .map_err(|e| e.to_string())?;
            match fixed {
                Ok(()) => {
                    still_missing -= 1;
                    self.stats.repaired.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(%hash, "repaired a missing chunk copy");
                }
                Err(ChunkError::NoSpace) => {
                    // Every other copy would be fetched only to be refused
                    // too: wait for space (GC, an operator) and a later pass.
                    tracing::warn!(
                        under_replicated = still_missing,
                        "no space here for missing chunk copies (the disk is at its reserve); \
                         repair waits for the next pass"
                    );
                    break;
                }
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "cannot repair a missing chunk copy yet")
                }
            }
        }
        self.stats
            .under_replicated
            .store(still_missing, Ordering::Relaxed);
        self.stats.passes.fetch_add(1, Ordering::Relaxed);
        for hash in work.surplus {
            if self.fully_placed(&hash).await {
                let local = Arc::clone(&self.local);
                tokio::task::spawn_blocking(move || local.delete(&hash))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                tracing::debug!(%hash, "dropped a copy now placed elsewhere");
            }
        }
        Ok(())
    }
}

impl Worker for Repairer {
    fn name(&self) -> &'static str {
        "repairer"
    }

    fn interval(&self) -> Duration {
        self.interval
    }

    async fn run_once(&mut self) -> Result<(), String> {
        self.pass().await
    }
}
