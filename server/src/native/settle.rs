//! On the leader: gives files a native flush left with a provisional ETag,
//! and that no writer's close will settle, the BLAKE3 of their content
//! (see [`crate::meta::settle`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_proto::InodeId;
use tokio_util::sync::CancellationToken;

use super::content::hash_content;
use crate::api::AppState;
use crate::api::error::ApiResult;
use crate::meta::Command;
use crate::meta::apply::load_inode;
use crate::meta::settle::{has_writer, unsettled};

/// How often the leader looks for unsettled files.
const SETTLE_EVERY: Duration = Duration::from_secs(1);
/// Marks looked at per round. Files still open for writing are passed over
/// and looked at again in a later round, after the others.
const MARKS_PER_ROUND: usize = 64;
/// A file that could not be settled waits this long before the next try,
/// doubled at each failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(10);
const RETRY_MAX: Duration = Duration::from_secs(600);
/// Files remembered as failing, at most; past that they are tried at every
/// round.
const FAILING_MAX: usize = 4096;

/// Files whose settling failed (a chunk lost on every copy): when each
/// may be tried again, and the wait after its next failure.
#[derive(Default)]
struct Failing(HashMap<InodeId, (Instant, Duration)>);

impl Failing {
    fn waiting(&self, inode: InodeId) -> bool {
        self.0
            .get(&inode)
            .is_some_and(|(at, _)| Instant::now() < *at)
    }

    fn failed(&mut self, inode: InodeId) {
        let wait = self.0.get(&inode).map_or(RETRY_FIRST, |(_, w)| *w);
        if self.0.len() < FAILING_MAX || self.0.contains_key(&inode) {
            self.0
                .insert(inode, (Instant::now() + wait, (wait * 2).min(RETRY_MAX)));
        }
    }
}

/// Settles unsettled files until `stop`, while this node leads.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SETTLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Where the last round stopped, so that files held open for writing at
    // the front of the table do not keep the rest waiting.
    let mut after: Option<InodeId> = None;
    let mut failing = Failing::default();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = stop.cancelled() => return,
        }
        if !leads(&state) {
            continue;
        }
        // Stopping drops a round half done: it holds nothing but reads.
        let done = tokio::select! {
            done = round(&state, after, &mut failing) => done,
            () = stop.cancelled() => return,
        };
        match done {
            Ok(next) => after = next,
            Err(e) => tracing::warn!(error = %e.message, "settling ETags failed; trying again"),
        }
    }
}

fn leads(state: &AppState) -> bool {
    state.committer.raft().metrics().borrow().current_leader == Some(state.node_id)
}

/// One pass over up to [`MARKS_PER_ROUND`] marks after `after`; returns
/// where the next round starts.
async fn round(
    state: &Arc<AppState>,
    after: Option<InodeId>,
    failing: &mut Failing,
) -> ApiResult<Option<InodeId>> {
    let marks = unsettled(&state.meta.snapshot(), after, MARKS_PER_ROUND)?;
    let next = if marks.len() < MARKS_PER_ROUND {
        None
    } else {
        marks.last().map(|(id, _)| *id)
    };
    for (inode, provisional) in marks {
        if !leads(state) {
            break;
        }
        if failing.waiting(inode) {
            continue;
        }
        // One file that cannot be settled (a chunk lost on every copy)
        // must not hold up the others, nor be read again every second.
        match settle_one(state, inode, provisional).await {
            Ok(()) => {
                failing.0.remove(&inode);
            }
            Err(e) => {
                failing.failed(inode);
                tracing::warn!(inode = inode.0, error = %e.message, "could not settle a provisional ETag; trying again later");
            }
        }
    }
    Ok(next)
}

async fn settle_one(
    state: &Arc<AppState>,
    inode: InodeId,
    provisional: cairn_proto::ContentHash,
) -> ApiResult<()> {
    let snapshot = state.meta.snapshot();
    if has_writer(&snapshot, inode)? {
        return Ok(());
    }
    // Gone, or written again since (its mark is a later one then): the
    // command only clears this mark.
    let current = load_inode(&snapshot, inode)
        .ok()
        .and_then(|i| i.file)
        .filter(|f| f.etag == provisional);
    drop(snapshot);
    let real = match current {
        Some(file) => hash_content(state, &file).await?,
        None => provisional,
    };
    state
        .committer
        .commit(Command::SettleEtag {
            inode,
            provisional,
            real,
        })
        .await?;
    tracing::info!(inode = inode.0, etag = %real, "settled a provisional ETag");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_file_waits_longer_each_time() {
        let mut f = Failing::default();
        let id = InodeId(7);
        assert!(!f.waiting(id));
        f.failed(id);
        assert!(f.waiting(id));
        assert_eq!(f.0[&id].1, RETRY_FIRST * 2);
        for _ in 0..20 {
            f.failed(id);
        }
        assert_eq!(f.0[&id].1, RETRY_MAX);
        assert!(!f.waiting(InodeId(8)));
    }
}
