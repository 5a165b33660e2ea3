//! On the leader: gives files a native flush left with a provisional ETag,
//! and that no writer's close will settle, the BLAKE3 of their content
//! (see [`crate::meta::settle`]).

use std::sync::Arc;
use std::time::Duration;

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

/// Settles unsettled files until `stop`, while this node leads.
pub async fn run(state: Arc<AppState>, stop: CancellationToken) {
    let mut every = tokio::time::interval(SETTLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Where the last round stopped, so that files held open for writing at
    // the front of the table do not keep the rest waiting.
    let mut after: Option<InodeId> = None;
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
            done = round(&state, after) => done,
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
async fn round(state: &Arc<AppState>, after: Option<InodeId>) -> ApiResult<Option<InodeId>> {
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
        // One file that cannot be settled (a chunk lost on every copy)
        // must not hold up the others: it is tried again next time round.
        if let Err(e) = settle_one(state, inode, provisional).await {
            tracing::warn!(inode = inode.0, error = %e.message, "could not settle a provisional ETag");
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
