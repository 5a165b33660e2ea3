//! Writing and reading metadata through Raft from any node.
//!
//! A mutation goes to the leader: applied here if this node leads, else
//! forwarded over QUIC. Only a request that surely was not applied is sent
//! again; one whose fate is unknown (the leader died with it in flight) is
//! reported as such, and the HTTP client decides whether to replay it.
//!
//! Reads are linearizable by read-index: the leader confirms it still leads
//! and names an index; the reading node waits until it has applied that
//! far, then reads locally. A leader holding a read lease ([`lease`])
//! confirms from the acknowledgements it already has; otherwise it runs a
//! heartbeat round to a majority. Concurrent barriers share rounds, on the
//! leader and on the followers that ask it.
//!
//! [`lease`]: super::lease

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use openraft::error::{CheckIsLeaderError, RaftError};
use tokio::time::Instant;

use super::group_commit::GroupCommit;
use super::lease::{AppliedMark, Leases};
use super::{LogId, NodeId, Outcome, Raft};
use crate::cluster::rpc::{Refused, Request, Response};
use crate::cluster::transport::Transport;
use crate::meta::{Applied, Command, MetaError};
use crate::metrics::Metrics;

/// Why a command was not (known to be) committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CommitError {
    /// Refused by `apply`; nothing changed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// No leader could take it (this node may be cut off from the
    /// majority); nothing was applied.
    #[error("{0}")]
    Unavailable(String),
    /// The leader was lost with the request in flight: it may or may not
    /// have been applied.
    #[error("{0}")]
    Unknown(String),
    #[error("metadata store failed: {0}")]
    Store(String),
    #[error("the server is shutting down")]
    Stopped,
}

/// Time limits of metadata requests.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// How long a write may wait for a leader and its commit.
    pub write: Duration,
    /// How long a read may wait to be linearizable.
    pub read: Duration,
    /// A leader that has not heard from a majority for this long refuses
    /// writes instead of appending them (the leader lease).
    pub quorum_lease: Duration,
}

/// What a leader needs to serve reads under a lease.
pub struct ReadLease {
    pub leases: Arc<Leases>,
    /// What this node's state machine has applied.
    pub mark: Arc<AppliedMark>,
}

/// The handle through which everything writes (and barriers reads of)
/// metadata.
#[derive(Clone)]
pub struct Committer {
    inner: Arc<Inner>,
}

struct Inner {
    id: NodeId,
    raft: Raft,
    transport: Option<Arc<Transport>>,
    timeouts: Timeouts,
    lease: ReadLease,
    /// On the leader: barriers waiting for a heartbeat round.
    rounds: std::sync::Mutex<ReadRounds>,
    /// On a follower: barriers waiting for the leader's read index.
    asked: std::sync::Mutex<ReadRounds>,
    group: Arc<GroupCommit>,
    metrics: Arc<Metrics>,
}

/// Read barriers waiting for a read index. Concurrent barriers share
/// rounds: one that arrives while a round is out waits for the next (which
/// starts after it arrived, as linearizability needs), so a burst of reads
/// costs two rounds instead of one each.
#[derive(Default)]
struct ReadRounds {
    running: bool,
    waiting: Vec<tokio::sync::oneshot::Sender<Result<u64, Refused>>>,
}

/// Where a round gets its read index.
#[derive(Clone, Copy)]
enum Round {
    /// A heartbeat round from this node, the leader.
    Heartbeats,
    /// The leader, asked by this follower.
    AskLeader,
}

/// How often a waiting request looks for a leader again, at least.
const POLL: Duration = Duration::from_millis(50);

impl Committer {
    pub fn new(
        id: NodeId,
        raft: Raft,
        transport: Option<Arc<Transport>>,
        metrics: Arc<Metrics>,
        lease: ReadLease,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                id,
                group: GroupCommit::new(raft.clone(), Arc::clone(&metrics)),
                metrics,
                raft,
                transport,
                timeouts,
                lease,
                rounds: std::sync::Mutex::default(),
                asked: std::sync::Mutex::default(),
            }),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    fn leader(&self) -> Option<NodeId> {
        self.inner.raft.metrics().borrow().current_leader
    }

    fn leader_addr(&self, leader: NodeId) -> Option<String> {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.quic.clone())
    }

    /// The current leader's QUIC address, if there is a leader.
    pub fn leader_quic(&self) -> Option<String> {
        self.leader_addr(self.leader()?)
    }

    /// Waits until the leader may have changed, or a short while.
    async fn wait_for_change(&self, deadline: Instant) {
        let mut rx = self.inner.raft.metrics();
        let until = deadline.min(Instant::now() + POLL * 4);
        let _ = tokio::time::timeout_at(until, rx.changed()).await;
        tokio::time::sleep(POLL.min(until.saturating_duration_since(Instant::now()))).await;
    }

    /// Commits `cmd` and returns what it did, once a majority holds it.
    pub async fn commit(&self, cmd: Command) -> Result<Applied, CommitError> {
        let deadline = Instant::now() + self.inner.timeouts.write;
        loop {
            let attempt = match self.leader() {
                Some(l) if l == self.inner.id && !self.in_touch_with_majority() => None,
                Some(l) if l == self.inner.id => {
                    Some(tokio::time::timeout_at(deadline, self.write_here(cmd.clone())).await)
                }
                Some(l) => Some(Ok(self.forward_write(l, &cmd, deadline).await)),
                None => None,
            };
            match attempt {
                Some(Ok(Ok(outcome))) => return outcome.map_err(CommitError::Meta),
                Some(Ok(Err(Refused::NotLeader))) | None => {}
                Some(Ok(Err(Refused::Unknown))) | Some(Err(_)) => {
                    return Err(CommitError::Unknown(
                        "the metadata leader was lost with this request in flight; it may or may \
                         not have been applied"
                            .into(),
                    ));
                }
                Some(Ok(Err(Refused::Failed(e)))) => return Err(CommitError::Store(e)),
            }
            if Instant::now() >= deadline {
                return Err(CommitError::Unavailable(
                    "no metadata leader is reachable: this node may be cut off from the majority"
                        .into(),
                ));
            }
            self.wait_for_change(deadline).await;
        }
    }

    /// True unless this node leads a cluster of several voters and has not
    /// heard from a majority of them within the lease: such a leader is
    /// likely cut off, and what it appended could commit much later.
    fn in_touch_with_majority(&self) -> bool {
        let metrics = self.inner.raft.metrics();
        let m = metrics.borrow();
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return true;
        }
        let lease = self.inner.timeouts.quorum_lease.as_millis() as u64;
        m.millis_since_quorum_ack.is_some_and(|ms| ms <= lease)
    }

    /// Applies `cmd` through Raft on this node, which believes it leads
    /// (sharing a log entry with other commands that arrive meanwhile).
    pub async fn write_here(&self, cmd: Command) -> Result<Outcome, Refused> {
        if !self.in_touch_with_majority() {
            return Err(Refused::NotLeader);
        }
        self.inner.group.write(cmd).await
    }

    /// Sends `cmd` to `leader`; gives up as soon as another leader shows up
    /// (the old one is then dead or deposed, and its answer may never come).
    async fn forward_write(
        &self,
        leader: NodeId,
        cmd: &Command,
        deadline: Instant,
    ) -> Result<Outcome, Refused> {
        let (Some(transport), Some(addr)) = (&self.inner.transport, self.leader_addr(leader))
        else {
            return Err(Refused::NotLeader);
        };
        let req = Request::Write(cmd.clone());
        let timeout = deadline.saturating_duration_since(Instant::now());
        let call = transport.call::<_, Response>(&addr, &req, timeout);
        tokio::select! {
            answer = call => match answer {
                Ok(Response::Write(result)) => result,
                Ok(other) => Err(Refused::Failed(format!("unexpected answer {other:?}"))),
                Err(e) if e.surely_not_delivered() => Err(Refused::NotLeader),
                Err(_) => Err(Refused::Unknown),
            },
            () = self.leader_changes(leader) => Err(Refused::Unknown),
        }
    }

    /// Returns once the known leader is no longer `leader`.
    async fn leader_changes(&self, leader: NodeId) {
        let mut rx = self.inner.raft.metrics();
        loop {
            if rx.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Changes each time this node's state machine has applied entries
    /// (their effects readable), for requests waiting on some state.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<Option<LogId>> {
        self.inner.lease.mark.watch()
    }

    /// Returns once this node's state machine reflects every write
    /// acknowledged before the call began.
    pub async fn read_barrier(&self) -> Result<(), CommitError> {
        let deadline = Instant::now() + self.inner.timeouts.read;
        loop {
            let index = match self.leader() {
                // The lease's index is applied here already.
                Some(l) if l == self.inner.id && self.leased_read_index().is_some() => {
                    return Ok(());
                }
                Some(l) if l == self.inner.id => {
                    tokio::time::timeout_at(deadline, self.shared_round(Round::Heartbeats))
                        .await
                        .ok()
                }
                Some(_) => tokio::time::timeout_at(deadline, self.shared_round(Round::AskLeader))
                    .await
                    .ok(),
                None => None,
            };
            match index {
                Some(Ok(index)) => return self.wait_applied(index, deadline).await,
                Some(Err(Refused::Failed(e))) => return Err(CommitError::Store(e)),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(CommitError::Unavailable(
                    "cannot confirm the latest metadata: no leader with a majority is reachable"
                        .into(),
                ));
            }
            self.wait_for_change(deadline).await;
        }
    }

    /// On the leader: confirms leadership with a majority and returns the
    /// index reads must wait for (under the lease, or from a heartbeat
    /// round that started after this call did).
    pub async fn read_index_here(&self) -> Result<u64, Refused> {
        match self.leased_read_index() {
            Some(index) => Ok(index),
            None => self.shared_round(Round::Heartbeats).await,
        }
    }

    /// The read index a leader holding its read lease may answer with:
    /// what it has applied, once that includes an entry of its own term.
    fn leased_read_index(&self) -> Option<u64> {
        let (term, voters) = {
            let metrics = self.inner.raft.metrics();
            let m = metrics.borrow();
            let leads = m.state == ServerState::Leader
                && m.vote.is_committed()
                && m.vote.leader_id().voted_for() == Some(self.inner.id);
            let membership = m.membership_config.membership();
            if !leads || membership.get_joint_config().len() != 1 {
                return None;
            }
            let voters: Vec<NodeId> = membership.voter_ids().collect();
            (m.vote.leader_id().get_term(), voters)
        };
        if !self.inner.lease.leases.holds(self.inner.id, term, &voters) {
            return None;
        }
        let applied = self.inner.lease.mark.get()?;
        let index = (applied.leader_id.term == term).then_some(applied.index)?;
        self.inner.metrics.meta_reads_leased.inc();
        Some(index)
    }

    /// Joins the next round of `round`, starting one if none runs.
    async fn shared_round(&self, round: Round) -> Result<u64, Refused> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let start = {
            let Ok(mut r) = self.rounds_of(round).lock() else {
                return Err(Refused::Failed("read rounds poisoned".into()));
            };
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            // Its own task: a caller giving up must not strand the others.
            let this = self.clone();
            tokio::spawn(async move { this.run_rounds(round).await });
        }
        rx.await.unwrap_or(Err(Refused::NotLeader))
    }

    fn rounds_of(&self, round: Round) -> &std::sync::Mutex<ReadRounds> {
        match round {
            Round::Heartbeats => &self.inner.rounds,
            Round::AskLeader => &self.inner.asked,
        }
    }

    /// Runs rounds until no barrier waits, each answering every barrier
    /// that arrived before it started.
    async fn run_rounds(&self, round: Round) {
        loop {
            let batch = match self.rounds_of(round).lock() {
                Ok(mut r) if r.waiting.is_empty() => {
                    r.running = false;
                    return;
                }
                Ok(mut r) => std::mem::take(&mut r.waiting),
                Err(_) => return,
            };
            let result = match round {
                Round::Heartbeats => self.read_index_round().await,
                Round::AskLeader => self.ask_leader().await,
            };
            for waiter in batch {
                let _ = waiter.send(result.clone());
            }
        }
    }

    async fn ask_leader(&self) -> Result<u64, Refused> {
        match self.leader() {
            Some(l) if l != self.inner.id => {
                let deadline = Instant::now() + self.inner.timeouts.read;
                self.forward_read_index(l, deadline).await
            }
            _ => Err(Refused::NotLeader),
        }
    }

    async fn read_index_round(&self) -> Result<u64, Refused> {
        self.inner.metrics.meta_read_rounds.inc();
        match self.inner.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                Err(Refused::NotLeader)
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_))) => {
                Err(Refused::NotLeader)
            }
            Err(RaftError::Fatal(e)) => Err(Refused::Failed(e.to_string())),
        }
    }

    async fn forward_read_index(&self, leader: NodeId, deadline: Instant) -> Result<u64, Refused> {
        let (Some(transport), Some(addr)) = (&self.inner.transport, self.leader_addr(leader))
        else {
            return Err(Refused::NotLeader);
        };
        let timeout = deadline.saturating_duration_since(Instant::now());
        let call = transport.call::<_, Response>(&addr, &Request::ReadIndex, timeout);
        tokio::select! {
            answer = call => match answer {
                Ok(Response::ReadIndex(result)) => result,
                Ok(other) => Err(Refused::Failed(format!("unexpected answer {other:?}"))),
                Err(_) => Err(Refused::NotLeader),
            },
            () = self.leader_changes(leader) => Err(Refused::NotLeader),
        }
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), CommitError> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.inner
            .raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map(|_| ())
            .map_err(|e| CommitError::Unavailable(format!("metadata is not caught up: {e}")))
    }
}
