//! Read leases: a leader that a majority acknowledged a moment ago answers
//! read barriers without a heartbeat round.
//!
//! Why it is safe. A follower that accepted an append sent at `t` refuses
//! votes until at least `t + election_timeout_max` (openraft's follower
//! lease) and does not stand for election before then (openraft's timer
//! and the [watchdog](super::watchdog) both wait longer). So while a
//! majority has accepted appends sent after `t`, no other leader can be
//! elected before `t + election_timeout_max` unless this node votes for
//! it. That case is covered by seeing the higher term first: vote requests
//! and appends from other nodes pass the peer service, and answers to this
//! node's appends pass its network, and each records the term it carries
//! here before openraft acts on it. Any higher term ends this node's
//! leases for its current term. A lease lasts [`Leases::new`]'s `length`,
//! well under `election_timeout_max`, which leaves room for clocks that run
//! at slightly different rates and for scheduling delays.
//!
//! openraft's follower lease does not survive a restart, so a node that
//! just started grants no vote for a lease's length
//! ([`Leases::after_start`]): it may have accepted an append just before it
//! stopped.
//!
//! The read index under a lease is what this node has applied, once it has
//! applied an entry of its own term: every write acknowledged before the
//! barrier was applied here before its answer went out, or committed under
//! an earlier leader and so before that entry ([`AppliedMark`]).

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{LogId, NodeId};

/// What this node, as leader, knows of its followers' acknowledgements.
#[derive(Debug)]
pub struct Leases {
    length: Duration,
    started: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The term `acked` is for (the latest this node led or tried to).
    term: u64,
    /// Per peer, the latest send time of an append it accepted in `term`.
    acked: HashMap<NodeId, Instant>,
    /// The highest term any message to or from this node carried.
    highest_seen: u64,
}

impl Leases {
    /// Leases of `length`, which must stay well under the followers'
    /// `election_timeout_max`.
    pub fn new(length: Duration) -> Self {
        Self {
            length,
            started: Instant::now(),
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state whole; a panic elsewhere cannot
        // break it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `peer` accepted an append this node sent at `sent` as leader of
    /// `term`.
    pub fn acknowledged(&self, peer: NodeId, term: u64, sent: Instant) {
        let mut s = self.state();
        if term > s.term {
            s.term = term;
            s.acked.clear();
        }
        if term == s.term {
            let at = s.acked.entry(peer).or_insert(sent);
            *at = (*at).max(sent);
        }
    }

    /// A message carrying `term` reached or answered this node. Recorded
    /// before openraft sees the message.
    pub fn saw_term(&self, term: u64) {
        let mut s = self.state();
        s.highest_seen = s.highest_seen.max(term);
    }

    /// True while `me`, leading `term` with `voters` (one configuration,
    /// not a joint one), may serve reads without asking its followers.
    pub fn holds(&self, me: NodeId, term: u64, voters: &[NodeId]) -> bool {
        let s = self.state();
        if s.highest_seen > term {
            return false;
        }
        let majority = voters.len() / 2 + 1;
        let needed = majority - usize::from(voters.contains(&me));
        if needed == 0 {
            return true;
        }
        if s.term != term {
            return false;
        }
        let mut times: Vec<Instant> = voters
            .iter()
            .filter(|v| **v != me)
            .filter_map(|v| s.acked.get(v).copied())
            .collect();
        if times.len() < needed {
            return false;
        }
        times.sort_unstable_by(|a, b| b.cmp(a));
        times[needed - 1].elapsed() < self.length
    }

    /// Waits out the first lease length after this node started (see the
    /// module docs); returns at once after that.
    pub async fn after_start(&self) {
        tokio::time::sleep_until((self.started + self.length).into()).await;
    }
}

/// The last log entry this node's state machine applied, updated once its
/// effects are readable. Watchable: a request waiting for the state to
/// change (a blocking lock) wakes at each apply instead of polling.
#[derive(Debug)]
pub struct AppliedMark(tokio::sync::watch::Sender<Option<LogId>>);

impl AppliedMark {
    pub fn new(applied: Option<LogId>) -> Self {
        Self(tokio::sync::watch::Sender::new(applied))
    }

    pub fn set(&self, applied: Option<LogId>) {
        self.0.send_replace(applied);
    }

    pub fn get(&self) -> Option<LogId> {
        *self.0.borrow()
    }

    /// A receiver that sees each later [`AppliedMark::set`].
    pub fn watch(&self) -> tokio::sync::watch::Receiver<Option<LogId>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LENGTH: Duration = Duration::from_millis(200);

    #[test]
    fn a_lease_needs_a_recent_majority_of_the_current_term() {
        let l = Leases::new(LENGTH);
        let voters = [1, 2, 3];
        assert!(!l.holds(1, 5, &voters), "no acknowledgement yet");
        l.acknowledged(2, 4, Instant::now());
        assert!(!l.holds(1, 5, &voters), "an earlier term's ack");
        l.acknowledged(2, 5, Instant::now());
        assert!(l.holds(1, 5, &voters));
        l.acknowledged(3, 6, Instant::now());
        assert!(!l.holds(1, 5, &voters), "the node has moved past term 5");
    }

    #[test]
    fn a_lease_runs_from_when_the_append_was_sent() {
        let l = Leases::new(LENGTH);
        let old = Instant::now()
            .checked_sub(LENGTH)
            .unwrap_or_else(Instant::now);
        l.acknowledged(2, 1, old);
        assert!(!l.holds(1, 1, &[1, 2, 3]));
        l.acknowledged(3, 1, Instant::now());
        assert!(
            l.holds(1, 1, &[1, 2, 3]),
            "one recent ack makes a majority of 3"
        );
        assert!(
            !l.holds(1, 1, &[1, 2, 3, 4, 5]),
            "5 voters need two recent acks"
        );
    }

    #[test]
    fn a_higher_term_ends_the_lease() {
        let l = Leases::new(LENGTH);
        l.acknowledged(2, 3, Instant::now());
        assert!(l.holds(1, 3, &[1, 2, 3]));
        l.saw_term(4);
        assert!(!l.holds(1, 3, &[1, 2, 3]));
    }

    #[test]
    fn a_lone_voter_always_holds_its_lease() {
        let l = Leases::new(LENGTH);
        assert!(l.holds(1, 1, &[1]));
        l.saw_term(2);
        assert!(!l.holds(1, 1, &[1]), "another node stood for election");
    }
}
