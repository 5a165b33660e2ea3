//! Which peers are alive, as this node sees them: a prober calls every
//! member once a second, and a node that has not answered for
//! `dead_after` is declared dead (placement then leaves it out, and the
//! repairer copies its chunks elsewhere).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::rpc::NodeStatus;
use crate::consensus::NodeId;

/// Silence after which a peer is skipped by writes (a few probe rounds).
pub const SUSPECT_AFTER: Duration = Duration::from_millis(2500);

pub struct Liveness {
    started: Instant,
    dead_after: Duration,
    seen: Mutex<HashMap<NodeId, Seen>>,
}

#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    status: NodeStatus,
}

impl Liveness {
    pub fn new(dead_after: Duration) -> Self {
        Self {
            started: Instant::now(),
            dead_after,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Records an answer from `id`.
    pub fn record(&self, id: NodeId, status: NodeStatus) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.insert(
            id,
            Seen {
                at: Instant::now(),
                status,
            },
        );
    }

    /// True once `id` has been silent for `dead_after` (counting from this
    /// node's start if it never answered).
    pub fn is_dead(&self, id: NodeId) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let last = seen.get(&id).map_or(self.started, |s| s.at);
        last.elapsed() >= self.dead_after
    }

    /// True if `id` missed the last few probes: writes skip it (the
    /// repairer fills its copy in later) rather than wait out a timeout.
    pub fn is_suspect(&self, id: NodeId) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let last = seen.get(&id).map_or(self.started, |s| s.at);
        last.elapsed() >= SUSPECT_AFTER
    }

    /// The last status `id` reported and how long ago, if it ever answered.
    pub fn last_status(&self, id: NodeId) -> Option<(NodeStatus, Duration)> {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(&id).map(|s| (s.status.clone(), s.at.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_nodes_die_and_answers_revive_them() {
        let l = Liveness::new(Duration::from_millis(30));
        assert!(!l.is_dead(2));
        std::thread::sleep(Duration::from_millis(40));
        assert!(l.is_dead(2));
        l.record(2, NodeStatus::default());
        assert!(!l.is_dead(2));
        assert!(l.last_status(2).is_some());
        assert!(l.last_status(3).is_none());
    }
}
