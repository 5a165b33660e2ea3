//! The HTTP listener: accepts connections within a limit, gives each a
//! header-read timeout, and drains them on shutdown.
//!
//! `axum::serve` has neither a connection limit nor a header timeout, and a
//! client that opens connections and never finishes its headers would hold
//! memory and file descriptors forever; hence this loop over hyper.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Limits of the HTTP listener.
#[derive(Clone, Debug)]
pub struct ListenLimits {
    /// Open connections at most; beyond it, new ones wait in the backlog.
    pub connections_max: usize,
    /// A request's headers must arrive within this long.
    pub header_timeout: Duration,
    /// After shutdown starts, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
}

/// How the listener stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished.
    Clean,
    /// The grace period ran out with requests still in flight.
    TimedOut,
}

/// Serves `router` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenLimits,
    shutdown: CancellationToken,
) -> Drained {
    let permits = Arc::new(Semaphore::new(limits.connections_max));
    let graceful = GracefulShutdown::new();
    // HTTP/1 only: its header timer runs from the moment the connection
    // waits for a request, so a client that connects and sends nothing is
    // cut off too (an HTTP/1-or-2 sniffing builder would wait forever).
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors or similar: back off, go on.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!(
        grace_secs = limits.shutdown_grace.as_secs(),
        "shutting down: finishing in-flight requests"
    );
    match tokio::time::timeout(limits.shutdown_grace, graceful.shutdown()).await {
        Ok(()) => Drained::Clean,
        Err(_) => {
            tracing::warn!(
                "in-flight requests did not finish within the grace period; stopping anyway"
            );
            Drained::TimedOut
        }
    }
}
