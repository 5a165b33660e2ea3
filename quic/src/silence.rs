//! Gives up on a connection after a silence of its idle timeout since the
//! last datagram it *received*.
//!
//! QUIC's own idle timer cannot: it also restarts at the first
//! ack-eliciting packet an endpoint sends after its last receipt (RFC 9000
//! §10.1). A peer killed after acknowledging a request but before
//! answering it leaves the waiting side nothing to send but its next
//! keep-alive, up to a quarter of the timeout later, and that keep-alive
//! restarts the timer: a client's failovers took 1.25 s to notice instead
//! of 1 s most of the time. A live peer acknowledges every keep-alive
//! within milliseconds, so a whole timeout without a datagram means it is
//! gone (or cut off) either way.

use std::time::{Duration, Instant};

/// How often the received-datagram count is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// Watches `conn` until it closes; closes it (reason: locally closed,
/// "peer silent") once it has received nothing for `idle`. Whoever waits
/// on it then sees the connection lost, as after an idle timeout.
pub fn close_when_silent(conn: quinn::Connection, idle: Duration) {
    tokio::spawn(async move {
        let mut seen = conn.stats().udp_rx.datagrams;
        let mut heard_at = Instant::now();
        while conn.close_reason().is_none() {
            tokio::time::sleep(CHECK_EVERY).await;
            let now = conn.stats().udp_rx.datagrams;
            if now != seen {
                seen = now;
                heard_at = Instant::now();
            } else if heard_at.elapsed() >= idle {
                conn.close(0u32.into(), b"peer silent");
                return;
            }
        }
    });
}
