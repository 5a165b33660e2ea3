//! Background work, each piece a [`Worker`] that stops cleanly on shutdown.

pub mod gc;
pub mod probe;
pub mod repair;
pub mod scrub;

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A periodic background task.
pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    fn interval(&self) -> Duration;
    /// One pass. Errors are logged and the worker tries again next interval.
    fn run_once(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Runs `worker` every interval until `stop` is cancelled. A pass in
/// progress is allowed to finish: passes are not cancellation-safe.
pub async fn run_worker<W: Worker>(mut worker: W, stop: CancellationToken) {
    let name = worker.name();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(worker.interval()) => {}
        }
        if let Err(e) = worker.run_once().await {
            tracing::warn!(worker = name, error = %e, "background pass failed; retrying next interval");
        }
    }
    tracing::debug!(worker = name, "stopped");
}
