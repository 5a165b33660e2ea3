//! Prompt elections after a leader dies.
//!
//! openraft's followers refuse to vote until the leader lease
//! (`election_timeout_max` since the last heartbeat) has run out, and their
//! own election timers are random within the same window, so left alone
//! the first candidacy after a crash is nearly always refused and the
//! second succeeds: about two timeouts of stall. The watchdog starts the
//! election just after the lease runs out instead, followers in node-id
//! order a little apart so they do not split the vote. Starting an
//! election is always safe in Raft; this only changes when.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::ServerState;
use tokio_util::sync::CancellationToken;

use super::Raft;

/// How often the watchdog looks.
const TICK: Duration = Duration::from_millis(10);
/// Margin past the lease before a candidacy, and between followers.
const MARGIN: Duration = Duration::from_millis(30);
const STAGGER: Duration = Duration::from_millis(60);

/// When this node last heard from a leader (AppendEntries, heartbeats
/// included), in milliseconds since `epoch`, and how many of its appends
/// this node is still working on.
#[derive(Debug)]
pub struct LeaderContact {
    epoch: Instant,
    last_ms: AtomicU64,
    working: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            working: AtomicU64::new(0),
        }
    }
}

impl LeaderContact {
    pub fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Marks an append from the leader as arrived and being worked on
    /// until the guard drops. Meanwhile the leader waits for this node's
    /// answer (it sends one append at a time), so a slow sync of this
    /// node's own log is no silence of the leader's.
    pub fn working(&self) -> Working<'_> {
        self.touch();
        self.working.fetch_add(1, Ordering::Relaxed);
        Working(self)
    }

    fn silence(&self) -> Duration {
        if self.working.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// An append being worked on (see [`LeaderContact::working`]).
pub struct Working<'a>(&'a LeaderContact);

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
    }
}

/// Runs until `stop`: a follower whose leader has been silent past the
/// lease (plus its place in the stagger) asks for votes.
pub async fn run(
    raft: Raft,
    contact: Arc<LeaderContact>,
    lease: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
        let (me, state, leader, voters) = {
            let metrics = raft.metrics();
            let m = metrics.borrow();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            (m.id, m.state, m.current_leader, voters)
        };
        if state != ServerState::Follower || !voters.contains(&me) {
            continue;
        }
        let Some(leader) = leader else { continue };
        let rank = voters.iter().filter(|v| **v != leader && **v < me).count();
        let due = lease + MARGIN + STAGGER * u32::try_from(rank).unwrap_or(u32::MAX);
        if contact.silence() < due {
            continue;
        }
        tracing::info!(
            leader,
            silent_ms = contact.silence().as_millis() as u64,
            "leader silent past its lease: starting an election"
        );
        // Counted as contact: openraft's own timer takes over from here
        // if this candidacy fails.
        contact.touch();
        if raft.trigger().elect().await.is_err() {
            return;
        }
    }
}
