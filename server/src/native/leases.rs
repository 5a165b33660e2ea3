//! Leases on the serving side: an open that conflicts with other sessions'
//! leases has them broken and waits for the holders (at most the break
//! timeout); every node pushes the pending breaks of the sessions
//! connected to it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use cairn_proto::wire::{LeaseBreak, Notice, RequestHeader, SessionId, lease};

use tokio_util::sync::CancellationToken;

use super::NativeServer;
use crate::api::error::{ApiError, ApiResult};
use crate::consensus::committer::CommitError;
use crate::meta::command::OpenFile;
use crate::meta::leases::{conflicts, session_breaks};
use crate::meta::{Applied, Command, MetaError};

/// How often a node looks for breaks to push.
pub(super) const PUSH_EVERY: Duration = Duration::from_millis(20);
/// Pending breaks of one session one round looks at, at most.
pub(super) const PUSH_BATCH: usize = if cfg!(test) { 16 } else { 1024 };
/// How long pushing one notice may take before it counts as failed.
const PUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an open checks whether its breaks were acknowledged.
const SETTLE_POLL: Duration = Duration::from_millis(5);

/// (session, handle, lease to, connection) of a notice already pushed.
pub(super) type Pushed = (cairn_proto::wire::SessionId, u64, u8, usize);

/// Opens a file as `header`'s sequenced request, breaking other sessions'
/// conflicting leases first. Stops waiting for the holders when `gone` is
/// cancelled (nobody waits for the answer any more): an open that lands
/// up to the break timeout later would hold a handle, and perhaps
/// truncate the file, behind the caller's back. A client that failed
/// over sends the open again where it went.
pub(super) async fn open(
    server: &NativeServer,
    header: &RequestHeader,
    mut args: OpenFile,
    gone: &CancellationToken,
) -> ApiResult<Applied> {
    let state = &server.state;
    let deadline = Instant::now() + server.lease_break_timeout;
    loop {
        let cmd = Command::Sequenced {
            session: header.session,
            seq: header.seq,
            cmd: Box::new(Command::OpenFile(args.clone())),
        };
        match state.committer.commit(cmd).await {
            Err(CommitError::Meta(MetaError::LeasesHeld(_))) => {}
            other => return Ok(other?),
        }
        // Refused, and a refusal for held leases is not recorded: the
        // client's resend is applied afresh.
        if gone.is_cancelled() {
            return Err(abandoned());
        }
        if Instant::now() >= deadline {
            tracing::warn!(path = %args.path, "lease holders did not acknowledge in time; breaking by force");
            args.force = true;
            continue;
        }
        // The file exists (a new one has no leases): its inode is known here.
        let Ok((inode, _)) = state.meta.snapshot().resolve(&args.share, &args.path) else {
            tokio::time::sleep(SETTLE_POLL).await;
            continue;
        };
        state
            .committer
            .commit(Command::BreakLeases {
                inode,
                session: args.session,
                access: args.access,
            })
            .await?;
        let started = Instant::now();
        while Instant::now() < deadline && !gone.is_cancelled() {
            match conflicts(&state.meta.snapshot(), inode, &args.session, args.access) {
                Ok(c) if c.is_empty() => break,
                Ok(_) => tokio::time::sleep(SETTLE_POLL).await,
                Err(e) => return Err(e.into()),
            }
        }
        if gone.is_cancelled() {
            return Err(abandoned());
        }
        tracing::debug!(path = %args.path, waited_ms = started.elapsed().as_millis() as u64, "leases broken");
    }
}

fn abandoned() -> ApiError {
    ApiError::new(
        cairn_proto::ErrorCode::Unavailable,
        "the client stopped waiting for this open",
    )
}

/// When the break pusher must scan the pending breaks again: the lease
/// records changed (the store's epoch moved), a connection came, a push
/// failed, or a second passed (a safety net).
#[derive(Default)]
pub(super) struct PushSeen {
    epoch: std::sync::atomic::AtomicU64,
    dirty: std::sync::atomic::AtomicBool,
    ticks: std::sync::atomic::AtomicU32,
}

/// Ticks of [`PUSH_EVERY`] between scans when nothing changed.
const IDLE_SCAN_TICKS: u32 = 50;

impl PushSeen {
    pub(super) fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }

    /// True if a scan is due; records `epoch` as scanned if so.
    fn should_scan(&self, epoch: u64) -> bool {
        let ticks = self.ticks.fetch_add(1, Ordering::AcqRel) + 1;
        let due = self.dirty.swap(false, Ordering::AcqRel)
            || self.epoch.swap(epoch, Ordering::AcqRel) != epoch
            || ticks >= IDLE_SCAN_TICKS;
        if due {
            self.ticks.store(0, Ordering::Release);
        }
        due
    }
}

impl NativeServer {
    /// Pushes each pending break once per connection of its holder's
    /// session (again after the holder reconnects anywhere).
    pub(super) fn push_breaks(self: &Arc<Self>) {
        // A scan costs a RocksDB iterator; most ticks have nothing new.
        if !self.push_seen.should_scan(self.state.meta.lease_epoch()) {
            return;
        }
        // Only the breaks of sessions connected here, each session's on
        // its own: a session that never acknowledges thousands of breaks
        // then holds back only its own, not every other session's.
        let sessions: Vec<SessionId> = match self.live.lock() {
            Ok(live) => live.keys().copied().collect(),
            Err(_) => return,
        };
        let snapshot = self.state.meta.snapshot();
        let mut pending = Vec::new();
        for session in &sessions {
            match session_breaks(&snapshot, session, PUSH_BATCH) {
                Ok(p) => pending.extend(p),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read pending lease breaks");
                    return;
                }
            }
        }
        drop(snapshot);
        let (Ok(live), Ok(mut pushed)) = (self.live.lock(), self.pushed.lock()) else {
            return;
        };
        let mut current = HashSet::new();
        for b in pending {
            let Some(sink) = live.get(&b.session).and_then(|s| s.last()) else {
                continue;
            };
            let key = (b.session, b.handle.0, b.to, sink.id());
            current.insert(key);
            if !pushed.insert(key) {
                continue;
            }
            let notice = Notice::LeaseBreak(LeaseBreak {
                handle: b.handle,
                from: b.from,
                to: b.to,
            });
            tracing::debug!(session = %b.session, handle = %b.handle, from = lease::name(b.from), to = lease::name(b.to), "pushing lease break");
            let sink = sink.clone();
            let server = Arc::clone(self);
            tokio::spawn(async move {
                let sent = tokio::time::timeout(PUSH_TIMEOUT, sink.push(&notice)).await;
                if let Err(e) = sent.map_err(|_| "timed out".to_owned()).and_then(|r| r) {
                    tracing::debug!(error = %e, "lease break not delivered; will try again");
                    if let Ok(mut p) = server.pushed.lock() {
                        p.remove(&key);
                    }
                    server.push_seen.mark_dirty();
                }
            });
        }
        pushed.retain(|k| current.contains(k));
    }
}
