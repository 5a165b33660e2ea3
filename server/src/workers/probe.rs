//! The prober: asks every other member for its status once a second,
//! which is how this node knows who is alive (for placement) and what
//! `cluster status` reports.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use super::Worker;
use crate::cluster::replicated::Placement;
use crate::cluster::rpc::{Request, Response};
use crate::cluster::transport::Transport;

pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(800);

pub struct Prober {
    pub transport: Arc<Transport>,
    pub placement: Placement,
}

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
                    let answer = transport
                        .call::<_, Response>(&info.quic, &Request::Status, PROBE_TIMEOUT)
                        .await;
                    (id, answer)
                }
            });
        for (id, answer) in join_all(calls).await {
            if let Ok(Response::Status(status)) = answer {
                self.placement.liveness.record(id, status);
            }
        }
        Ok(())
    }
}
