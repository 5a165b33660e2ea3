//! The prober: asks every other member for its status once a second,
//! which is how this node knows who is alive (for placement) and what
//! `cluster status` reports.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::Worker;
use crate::cluster::replicated::Placement;
use crate::cluster::rpc::{Request, Response};
use crate::cluster::transport::Transport;
use crate::consensus::NodeId;

pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub struct Prober {
    pub transport: Arc<Transport>,
    pub placement: Placement,
    /// Probes missed in a row, per peer.
    pub misses: HashMap<NodeId, u32>,
}

/// Missed probes after which a peer's connection is closed and redialed.
const MISSES_BEFORE_REDIAL: u32 = 2;

impl Worker for Prober {
    fn name(&self) -> &'static str {
        "prober"
    }

    fn interval(&self) -> Duration {
        PROBE_INTERVAL
    }

    async fn run_once(&mut self) -> Result<(), String> {
        let me = self.placement.me;
        let calls = self
            .placement
            .members()
            .into_iter()
            .filter(|(id, _)| *id != me)
            .map(|(id, info)| {
                let transport = Arc::clone(&self.transport);
                async move {
                    let probe = || {
                        transport.call::<_, Response>(&info.quic, &Request::Status, PROBE_TIMEOUT)
                    };
                    let mut answer = probe().await;
                    if answer.is_err() && transport.was_reset(&info.quic).await {
                        // The peer restarted: its new process reset the
                        // connection to the old one. Ask it now rather
                        // than leave it suspect for another round.
                        tracing::debug!(peer = id, "peer restarted; probing it afresh");
                        answer = probe().await;
                    }
                    (id, info.quic, answer)
                }
            });
        for (id, addr, answer) in join_all(calls).await {
            if let Ok(Response::Status(status)) = answer {
                self.placement.liveness.record(id, status);
                self.misses.remove(&id);
                continue;
            }
            let misses = self.misses.entry(id).or_insert(0);
            *misses += 1;
            if *misses == MISSES_BEFORE_REDIAL {
                // Likely dead or restarted: calls on the old connection
                // would wait out their timeouts. Dial afresh next time.
                tracing::debug!(peer = id, "peer silent; dropping its connection");
                self.transport.drop_connection(&addr).await;
            }
        }
        Ok(())
    }
}
