//! Group commit: commands that reach the leader while earlier ones are
//! being committed share one log entry ([`Command::Batch`]).
//!
//! Why: openraft appends each client write as an entry of its own and
//! syncs the log once per entry, one after another, so a leader committed
//! at most one command per log sync. A file create is two commands (the
//! open, the close), which held a 3-node cluster near 450 creates/s with
//! the disks mostly waiting on syncs. Here at most [`BATCHES_IN_FLIGHT`]
//! entries are out at once; commands arriving meanwhile wait for one of
//! them and then go out together. A leader with nothing in flight sends a
//! command at once, alone, so an idle cluster sees no added latency.
//!
//! Each command keeps its own outcome (the state machine applies a batch's
//! commands one by one, in order), and a batch whose fate is unknown is
//! unknown for every command in it, exactly as for a single entry.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{Semaphore, oneshot};

use super::{Outcome, Raft};
use crate::cluster::rpc::Refused;
use crate::meta::Command;
use crate::metrics::Metrics;

/// Entries the leader has handed to Raft and not yet seen applied.
pub const BATCHES_IN_FLIGHT: usize = 2;
/// Most commands in one entry.
pub const BATCH_COMMANDS_MAX: usize = 128;
/// Most encoded bytes of commands in one entry (a larger command goes
/// alone). A lagging follower is sent up to 64 entries in one message of
/// at most 32 MiB (`max_payload_entries`, `transport::MESSAGE_MAX`): 64 of
/// these fit with room to spare.
pub const BATCH_BYTES_MAX: usize = 256 << 10;
/// Most commands waiting for an entry; further writers wait for room.
pub const WAITING_MAX: usize = 4096;

type Reply = oneshot::Sender<Result<Outcome, Refused>>;

pub struct GroupCommit {
    raft: Raft,
    metrics: Arc<Metrics>,
    queue: Mutex<Queue>,
    room: Semaphore,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

struct Waiting {
    cmd: Command,
    bytes: usize,
    reply: Reply,
}

impl Queue {
    /// The oldest waiting commands that fit in one entry (at least one).
    fn take_batch(&mut self) -> Vec<Waiting> {
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.waiting.front() {
            let fits = batch.len() < BATCH_COMMANDS_MAX && bytes + next.bytes <= BATCH_BYTES_MAX;
            if !batch.is_empty() && !fits {
                break;
            }
            bytes += next.bytes;
            batch.extend(self.waiting.pop_front());
        }
        batch
    }
}

impl GroupCommit {
    pub fn new(raft: Raft, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            raft,
            metrics,
            queue: Mutex::default(),
            room: Semaphore::new(WAITING_MAX),
        })
    }

    /// Commits `cmd` through Raft on this node (which believes it leads)
    /// and returns what it did.
    pub async fn write(self: &Arc<Self>, cmd: Command) -> Result<Outcome, Refused> {
        let _room = self
            .room
            .acquire()
            .await
            .map_err(|_| Refused::Failed("the commit queue is closed".into()))?;
        let bytes = postcard::experimental::serialized_size(&cmd).unwrap_or(BATCH_BYTES_MAX);
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            q.waiting.push_back(Waiting { cmd, bytes, reply });
            (q.in_flight < BATCHES_IN_FLIGHT).then(|| {
                q.in_flight += 1;
                q.take_batch()
            })
        };
        if let Some(batch) = start {
            // Its own task: a writer giving up must not strand the others.
            let this = Arc::clone(self);
            tokio::spawn(async move { this.run(batch).await });
        }
        // The sender dropped unanswered: the runtime is stopping with the
        // entry's fate unknown.
        answer.await.unwrap_or(Err(Refused::Unknown))
    }

    /// Commits `batch`, then whatever waited meanwhile, until nothing
    /// waits.
    async fn run(&self, mut batch: Vec<Waiting>) {
        loop {
            self.submit(batch).await;
            let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if q.waiting.is_empty() {
                q.in_flight -= 1;
                return;
            }
            batch = q.take_batch();
        }
    }

    async fn submit(&self, batch: Vec<Waiting>) {
        let (cmds, replies): (Vec<Command>, Vec<Reply>) =
            batch.into_iter().map(|w| (w.cmd, w.reply)).unzip();
        let n = cmds.len();
        let entry = match <[Command; 1]>::try_from(cmds) {
            Ok([one]) => one,
            Err(cmds) => Command::Batch(cmds),
        };
        tracing::trace!(commands = n, "appending an entry");
        self.metrics.meta_groups.inc();
        self.metrics.meta_commands.inc_by(n as u64);
        self.metrics.meta_group_size.observe(n as f64);
        let started = std::time::Instant::now();
        let written = self.raft.client_write(entry).await;
        self.metrics
            .meta_commit_seconds
            .observe(started.elapsed().as_secs_f64());
        let refused = match written {
            Ok(resp) if resp.data.len() == n => {
                for (reply, outcome) in replies.into_iter().zip(resp.data) {
                    let _ = reply.send(Ok(outcome));
                }
                return;
            }
            Ok(resp) => Refused::Failed(format!(
                "an entry of {n} commands was applied with {} outcomes",
                resp.data.len()
            )),
            // openraft answers this only before appending, or for entries a
            // new leader truncated: either way it was never applied.
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => Refused::NotLeader,
            Err(RaftError::APIError(e)) => Refused::Failed(e.to_string()),
            Err(RaftError::Fatal(e)) => Refused::Failed(e.to_string()),
        };
        for reply in replies {
            let _ = reply.send(Err(refused.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(bytes: usize) -> Waiting {
        Waiting {
            cmd: Command::DeleteToken {
                token_hash: cairn_proto::ContentHash::of(b"t"),
            },
            bytes,
            reply: oneshot::channel().0,
        }
    }

    fn queue(sizes: &[usize]) -> Queue {
        Queue {
            waiting: sizes.iter().map(|&b| waiting(b)).collect(),
            in_flight: 0,
        }
    }

    #[test]
    fn batches_stop_at_the_command_and_byte_limits() {
        let mut q = queue(&[10; BATCH_COMMANDS_MAX + 5]);
        assert_eq!(q.take_batch().len(), BATCH_COMMANDS_MAX);
        assert_eq!(q.take_batch().len(), 5);
        assert!(q.take_batch().is_empty());

        let half = BATCH_BYTES_MAX / 2;
        let mut q = queue(&[half, half, 1, 7]);
        assert_eq!(q.take_batch().len(), 2);
        assert_eq!(q.take_batch().len(), 2);
    }

    #[test]
    fn a_command_over_the_byte_limit_goes_alone() {
        let mut q = queue(&[BATCH_BYTES_MAX * 3, 1, 1]);
        assert_eq!(q.take_batch().len(), 1);
        assert_eq!(q.take_batch().len(), 2);
    }
}
