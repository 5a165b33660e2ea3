//! The session's sequence numbers, handed out so that the replay table
//! still holds the answer of any request the client may send again.
//!
//! The cluster keeps the results of the numbers within its replay window
//! (1,024) of the highest it has seen; a request numbered further below is
//! not recognized as a repeat, and would be applied again. A request still
//! waiting for its answer (an open waiting out a lease break, say) is one
//! the client sends again after a failover, so no number that far past it
//! may go out meanwhile: a new number waits until it is within
//! [`SPREAD_MAX`] of the oldest request under way. Appends are held the
//! same way: the record a flush keeps of where each append went has the
//! same window.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

/// Most numbers handed out from the oldest request under way, the
/// protocol's replay window (1,024) less a margin.
pub const SPREAD_MAX: u64 = 1_000;

pub struct Seqs {
    state: Mutex<State>,
    /// Woken when a held number is given back.
    freed: Notify,
}

struct State {
    next: u64,
    under_way: BTreeSet<u64>,
}

impl Seqs {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                next: 1,
                under_way: BTreeSet::new(),
            }),
            freed: Notify::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The next number, at once, whatever is under way (protocol tools and
    /// tests number requests themselves).
    pub fn next_unchecked(&self) -> u64 {
        let mut s = self.state();
        s.next += 1;
        s.next - 1
    }

    /// The next number, held (counted as under way) until the returned
    /// [`Held`] is dropped: a request's, for as long as it may be sent.
    pub async fn hold(self: &Arc<Self>) -> Held {
        let seq = self
            .take(|s, n| {
                s.under_way.insert(n);
            })
            .await;
        Held {
            seqs: Arc::clone(self),
            seq,
        }
    }

    async fn take(&self, mark: impl Fn(&mut State, u64)) -> u64 {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before looking: a number given back between the
            // look and the wait still wakes it.
            freed.as_mut().enable();
            {
                let mut s = self.state();
                let oldest = s.under_way.first().copied().unwrap_or(s.next);
                if s.next - oldest < SPREAD_MAX {
                    let n = s.next;
                    s.next += 1;
                    mark(&mut s, n);
                    return n;
                }
            }
            tracing::debug!("a request is under way {SPREAD_MAX} numbers back; waiting for it");
            freed.await;
        }
    }
}

/// A sequence number counted as under way until dropped.
pub struct Held {
    seqs: Arc<Seqs>,
    pub seq: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.seqs.state().under_way.remove(&self.seq);
        self.seqs.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    #[tokio::test]
    async fn no_number_goes_out_a_window_past_a_request_under_way() {
        let seqs = Arc::new(Seqs::new());
        let oldest = seqs.hold().await;
        assert_eq!(oldest.seq, 1);
        // Numbers given back at once do not count; the held one does.
        for n in 2..=SPREAD_MAX {
            assert_eq!(seqs.hold().await.seq, n);
        }
        assert!(seqs.hold().now_or_never().is_none());
        assert_eq!(seqs.next_unchecked(), SPREAD_MAX + 1, "a tool's own number");
        let waiting = tokio::spawn({
            let seqs = Arc::clone(&seqs);
            async move { seqs.hold().await.seq }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(oldest);
        assert_eq!(waiting.await.unwrap(), SPREAD_MAX + 2);
    }
}
