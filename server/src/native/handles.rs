//! What a node holds for an open handle besides its replicated record:
//! unflushed writes and a running hash. None of it needs to survive the
//! node: clients keep every write until a flush acknowledges it and send
//! them again to whichever node they reconnect to.

use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::wire::{HandleId, SessionId, access, open_flags};
use cairn_proto::{ContentHash, ErrorCode};
use tokio::sync::OwnedSemaphorePermit;

use super::content::{self, build, read_range, read_range_shared};
use super::running_hash::RunningHash;
use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::meta::command::AppendPlaced;
use crate::meta::sessions::{load_handle, placed_append};
use crate::meta::{Command, HandleRecord, Inode, MetaError};
use cairn_proto::extents::Extents;

/// Write buffers one handle may hold on a node before it flushes itself
/// (or half the node's, if less); clients flush well before.
pub const HELD_BYTES_PER_HANDLE_MAX: usize = 256 << 20;
/// Longest a write waits for buffer space after flushing its own handle.
const WRITE_BUFFER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Cells of one handle being stored ahead of its flush at once.
const STAGING_IN_FLIGHT: usize = 4;

type StageTask =
    tokio::task::JoinHandle<ApiResult<(crate::meta::ChunkRef, crate::chunks::PinGuard)>>;

/// Bytes a running hash takes on the async worker; more go to the
/// blocking pool.
const BLOCKING_HASH_BYTES_MIN: usize = 256 << 10;
/// Appends per handle whose answers a node keeps for repeats.
const APPENDS_REMEMBERED: usize = 1024;
/// Times a flush is rebuilt when another writer's flush got in first.
const FLUSH_ATTEMPTS: usize = 5;

/// The write buffers one handle may hold: at most half the node's.
fn held_max(state: &AppState) -> usize {
    HELD_BYTES_PER_HANDLE_MAX.min(state.write_buffer_bytes / 2)
}

/// The end of `len` bytes at `off`, refused past the largest file a node
/// takes (`upload_bytes_max`, as for an HTTP upload): every 4 MiB of a
/// file, hole or not, is a chunk reference in its metadata, built and
/// hashed at each flush.
fn file_end(state: &AppState, off: u64, len: usize) -> ApiResult<u64> {
    let max = state.limits.upload_bytes_max;
    match off.checked_add(len as u64) {
        Some(end) if end <= max => Ok(end),
        _ => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a file ends at most at byte {max}: {len} bytes at {off} would pass it"),
        )),
    }
}

pub struct OpenFile {
    pub id: HandleId,
    /// The session's binding this node holds the handle under: its
    /// flushes are fenced by it (see `Command::Fenced`).
    binding: u64,
    pub record: HandleRecord,
    dirty: Extents,
    /// The node's write buffers this handle's unflushed writes hold: each
    /// write's length until a flush, overwritten or not (what a write
    /// replaced may live on as a view sharing its request's buffer).
    held: Option<OwnedSemaphorePermit>,
    /// A truncate (or extend) of this handle no flush has recorded yet.
    /// Otherwise the size is the committed one or the end of this handle's
    /// writes, whichever is larger, worked out afresh each time: another
    /// handle may have grown the file since (a stale size kept here used
    /// to cut off what that handle had flushed).
    truncated: Option<u64>,
    /// BLAKE3 of the bytes written so far, while the handle has written an
    /// empty file from the start without going back: then closing needs
    /// no second read.
    sequential: Option<RunningHash>,
    /// The provisional ETag this handle's last flush gave the file.
    provisional: Option<ContentHash>,
    /// The ETag the content had when this handle's running hash started:
    /// each flush must build on it or on the handle's own last flush, or
    /// another writer's bytes are in the file and the hash is not its.
    hashed_from: Option<ContentHash>,
    /// Appends this node took, by sequence number: a repeat gets the
    /// first answer (offset, size) instead of appending again.
    appended: std::collections::VecDeque<(u64, u64, u64)>,
    /// The appends among the unflushed writes: the flush records where
    /// they went in the metadata, for repeats sent to another node.
    placed: std::collections::VecDeque<AppendPlaced>,
    /// Whole 4 MiB cells being stored as chunks while writes go on, so a
    /// flush finds most of its chunks already durable.
    /// Cells past [`STAGING_IN_FLIGHT`] wait their turn (a cell skipped
    /// then was left to the flush, which stored it with writes waiting).
    staging: std::collections::BTreeMap<u64, StageTask>,
    stage_slots: Arc<tokio::sync::Semaphore>,
    /// Read through a barrier before trusting local metadata: set after
    /// each flush (loading a handle does a barrier of its own).
    stale: bool,
}

fn stale(id: HandleId) -> ApiError {
    ApiError::new(ErrorCode::StaleHandle, format!("handle {id} is not open"))
}

impl OpenFile {
    /// The handle's state on this node, from replicated metadata.
    pub async fn load(
        state: &AppState,
        id: HandleId,
        session: &SessionId,
        binding: u64,
    ) -> ApiResult<Self> {
        // Catch up first: the handle may have been opened, or closed, a
        // moment ago through the leader. A node behind still had a closed
        // handle's record while applying its close dropped the file, and a
        // replayed close then failed on the missing inode instead of
        // getting the replay table's answer.
        state.committer.read_barrier().await?;
        let snapshot = state.meta.snapshot();
        let record = load_handle(&snapshot, id).map_err(|_| stale(id))?;
        if record.session != *session {
            return Err(stale(id));
        }
        if crate::meta::sessions::session_binding(&snapshot, session)? != binding {
            // A resume since (here or on another node) took the session
            // over; this connection's client has moved on.
            return Err(ApiError::new(
                ErrorCode::NoSession,
                format!("session {session} was resumed on another connection"),
            ));
        }
        let inode = load_inode(state, &record)?;
        let sequential =
            (inode.size() == 0).then(|| RunningHash::new(Arc::clone(&state.hash_ahead)));
        let hashed_from = inode.file.as_ref().map(|f| f.etag);
        Ok(Self {
            id,
            binding,
            record,
            dirty: Extents::default(),
            held: None,
            truncated: None,
            sequential,
            provisional: None,
            hashed_from,
            appended: std::collections::VecDeque::new(),
            placed: std::collections::VecDeque::new(),
            staging: std::collections::BTreeMap::new(),
            stage_slots: Arc::new(tokio::sync::Semaphore::new(STAGING_IN_FLIGHT)),
            // The barrier above is this first use's: a second one before
            // trusting local metadata would only cost a heartbeat round
            // (a create+close paid two on its close).
            stale: false,
        })
    }

    async fn committed(&mut self, state: &AppState) -> ApiResult<Inode> {
        if self.stale {
            state.committer.read_barrier().await?;
            self.stale = false;
        }
        load_inode(state, &self.record)
    }

    fn need(&self, bits: u8, what: &str) -> ApiResult<()> {
        if self.record.access & bits == 0 {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!("handle {} is not open for {what}", self.id),
            ));
        }
        Ok(())
    }

    pub fn has_unflushed(&self) -> bool {
        !self.dirty.is_empty() || self.truncated.is_some()
    }

    /// The size as this handle sees it.
    pub async fn size(&mut self, state: &AppState) -> ApiResult<u64> {
        let committed = self.committed(state).await?.size();
        Ok(self.size_over(committed))
    }

    /// The size this handle sees over a committed size of `committed`.
    fn size_over(&self, committed: u64) -> u64 {
        let end = self.dirty.end().unwrap_or(0);
        self.truncated.unwrap_or(committed).max(end)
    }

    /// What a read of `[off, off + len)` needs: the committed content and
    /// the span, and whether this handle's unflushed writes overlap it
    /// (then [`OpenFile::read`] must run under the handle's lock).
    pub async fn plan_read(
        &mut self,
        state: &Arc<AppState>,
        off: u64,
        len: u32,
    ) -> ApiResult<ReadPlan> {
        self.need(access::READ, "reading")?;
        let inode = self.committed(state).await?;
        let size = self.size_over(inode.size());
        let end = size.min(off.saturating_add(u64::from(len)));
        let file = inode.file.ok_or_else(|| not_a_file(self.id))?;
        Ok(ReadPlan {
            content: file.content,
            off,
            end: end.max(off),
            eof: end <= off || end == size,
            private: self.dirty.touches(off, end),
        })
    }

    /// Reads with this handle's unflushed writes laid over the content.
    pub async fn read(&mut self, state: &Arc<AppState>, plan: &ReadPlan) -> ApiResult<Vec<u8>> {
        let mut buf = plan.read(state).await?;
        self.dirty.overlay(plan.off, &mut buf);
        Ok(buf)
    }

    /// Takes `data` at `off`, or at the end for a sequenced write on an
    /// append handle; returns where it went and the size this handle now
    /// sees.
    pub async fn write(
        &mut self,
        state: &Arc<AppState>,
        off: u64,
        data: Bytes,
        seq: u64,
    ) -> ApiResult<(u64, u64)> {
        let append = self.record.flags & open_flags::APPEND != 0 && seq != 0;
        if append && let Some(&(_, at, size)) = self.appended.iter().find(|(s, _, _)| *s == seq) {
            return Ok((at, size));
        }
        // Only a session that moved here can repeat an append another
        // node flushed: a handle never resumed skips the metadata read.
        if append
            && self.may_have_flushed_elsewhere()
            && let Some(placed) = placed_append(&state.meta.snapshot(), &self.record.session, seq)?
        {
            // Flushed by a node the client lost before the answer came.
            return Ok(placed);
        }
        self.need(access::WRITE, "writing")?;
        if self.held_bytes() + data.len() > held_max(state) && self.has_unflushed() {
            // Past its share the handle flushes itself: one rewriting the
            // same range must not take the node's every write buffer.
            self.flush(state).await?;
        }
        let size = self.size(state).await?;
        let off = if append { size } else { off };
        let end = file_end(state, off, data.len())?;
        let permit = self.write_buffer(state, data.len()).await?;
        self.hash_write(off, &data).await?;
        // Only once the write is held: a permit kept for a write that
        // failed would never be released (a flush with nothing to write
        // returns early).
        self.hold(permit);
        self.dirty.insert(off, data);
        self.stage_cells(state, off, end);
        let size = size.max(end);
        if append {
            if self.appended.len() >= APPENDS_REMEMBERED {
                self.appended.pop_front();
            }
            self.appended.push_back((seq, off, size));
            self.placed.push_back(AppendPlaced {
                seq,
                offset: off,
                size,
            });
            // Older ones are out of every client's replay window.
            while self.placed.len() > APPENDS_REMEMBERED {
                self.placed.pop_front();
            }
        }
        Ok((off, size))
    }

    /// Feeds a write to the running hash, if the handle keeps one. Hashing
    /// megabytes takes a millisecond or more: that goes to the blocking
    /// pool, off the workers that drive the QUIC connections.
    async fn hash_write(&mut self, off: u64, data: &Bytes) -> ApiResult<()> {
        let Some(mut hash) = self.sequential.take() else {
            return Ok(());
        };
        let kept = if hash.would_hash(off, data.len()) < BLOCKING_HASH_BYTES_MIN {
            hash.write(off, data).then_some(hash)
        } else {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash.write(off, &data).then_some(hash)).await?
        };
        self.sequential = kept;
        Ok(())
    }

    fn hold(&mut self, permit: OwnedSemaphorePermit) {
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
    }

    fn held_bytes(&self) -> usize {
        self.held.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Room for `len` more unflushed bytes on this node. When all handles
    /// together have used the budget up, this one flushes what it holds
    /// first (so writers cannot all wait on each other), then waits a
    /// bounded time for the rest.
    async fn write_buffer(
        &mut self,
        state: &Arc<AppState>,
        len: usize,
    ) -> ApiResult<OwnedSemaphorePermit> {
        let n = u32::try_from(len).unwrap_or(u32::MAX);
        let budget = &state.write_buffers;
        if let Ok(p) = Arc::clone(budget).try_acquire_many_owned(n) {
            return Ok(p);
        }
        if self.has_unflushed() {
            // Its size must be kept: the flush records it.
            self.flush(state).await?;
        }
        match tokio::time::timeout(WRITE_BUFFER_WAIT, Arc::clone(budget).acquire_many_owned(n))
            .await
        {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is shutting down",
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "write buffers are all in use; retry",
            )),
        }
    }

    pub fn truncate(&mut self, state: &AppState, size: u64) -> ApiResult<()> {
        self.need(access::WRITE, "writing")?;
        file_end(state, size, 0)?;
        for (_, task) in std::mem::take(&mut self.staging) {
            task.abort();
        }
        self.dirty.truncate(size);
        if self.sequential.as_ref().is_some_and(|h| !h.truncate(size)) {
            self.sequential = None;
        }
        self.truncated = Some(size);
        Ok(())
    }

    /// Starts storing the cells that `[off, end)` completed; drops staged
    /// cells it changed.
    fn stage_cells(&mut self, state: &Arc<AppState>, off: u64, end: u64) {
        let cell = content::CELL_BYTES;
        for k in off / cell..end.div_ceil(cell) {
            // Any write into a staged cell makes its chunk stale.
            if let Some(stale) = self.staging.remove(&k) {
                stale.abort();
            }
            let Some(pieces) = self.dirty.views(k * cell, (k + 1) * cell) else {
                continue;
            };
            let slots = Arc::clone(&self.stage_slots);
            let task = tokio::spawn(content::stage(Arc::clone(state), slots, pieces));
            self.staging.insert(k, task);
        }
    }

    /// The cells staged so far, awaited; failures are left to the flush.
    async fn take_staged(&mut self) -> content::Staged {
        let mut out = content::Staged::new();
        for (k, task) in std::mem::take(&mut self.staging) {
            match task.await {
                Ok(Ok(done)) => {
                    out.insert(k, done);
                }
                Ok(Err(e)) => {
                    tracing::debug!(cell = k, error = %e.message, "staging failed; the flush stores it")
                }
                Err(e) => tracing::debug!(cell = k, error = %e, "staging task failed"),
            }
        }
        out
    }

    /// Makes every write so far durable on the cluster.
    pub async fn flush(&mut self, state: &Arc<AppState>) -> ApiResult<Inode> {
        if !self.has_unflushed() {
            return self.committed(state).await;
        }
        let started = std::time::Instant::now();
        let staged = self.take_staged().await;
        let staging_wait = started.elapsed();
        let dirty = std::mem::take(&mut self.dirty);
        let permits = self.held.take();
        let truncated = self.truncated.take();
        let placed = std::mem::take(&mut self.placed);
        match self
            .flush_taken(state, &dirty, truncated, &staged, &placed)
            .await
        {
            Ok(inode) => {
                // Where a flush's time goes: waiting for chunks still
                // being stored, or building and committing the content.
                tracing::debug!(
                    bytes = dirty.bytes(),
                    staged_cells = staged.len(),
                    staging_wait_ms = staging_wait.as_millis() as u64,
                    took_ms = started.elapsed().as_millis() as u64,
                    "flushed"
                );
                drop(permits);
                // Writes the hash still holds are now held by it alone.
                if self.sequential.as_mut().is_some_and(|h| !h.flushed()) {
                    self.sequential = None;
                }
                Ok(inode)
            }
            Err(e) => {
                // Keep the writes for the next flush; later ones win.
                self.dirty.absorb_older(dirty);
                if let Some(p) = permits {
                    self.hold(p);
                }
                self.truncated = self.truncated.or(truncated);
                for a in placed.into_iter().rev() {
                    self.placed.push_front(a);
                }
                while self.placed.len() > APPENDS_REMEMBERED {
                    self.placed.pop_front();
                }
                Err(e)
            }
        }
    }

    async fn flush_taken(
        &mut self,
        state: &Arc<AppState>,
        dirty: &Extents,
        truncated: Option<u64>,
        staged: &content::Staged,
        placed: &std::collections::VecDeque<AppendPlaced>,
    ) -> ApiResult<Inode> {
        for _ in 0..FLUSH_ATTEMPTS {
            let base_inode = self.committed(state).await?;
            let base = base_inode.file.clone().ok_or_else(|| not_a_file(self.id))?;
            if Some(base.etag) != self.provisional.or(self.hashed_from) {
                // Another handle flushed since: its bytes are in the base.
                self.sequential = None;
            }
            let new_size = truncated.unwrap_or(base.size).max(dirty.end().unwrap_or(0));
            let built = build(state, &base, dirty, new_size, staged).await?;
            let etag = built.file.etag;
            let cmd = Command::Fenced {
                session: self.record.session,
                binding: self.binding,
                cmd: Box::new(Command::SetContent {
                    handle: self.id,
                    base: base.etag,
                    file: built.file,
                    now_ns: state.clock.now_ns(),
                }),
                appends: placed.iter().copied().collect(),
            };
            match state.committer.commit(cmd).await {
                Ok(_) => {
                    drop(built.pins);
                    self.provisional = Some(etag);
                    self.stale = true;
                    return self.committed(state).await;
                }
                Err(crate::consensus::committer::CommitError::Meta(
                    MetaError::PreconditionFailed(_),
                )) => {
                    // Another handle flushed since we read the base.
                    self.stale = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            ErrorCode::Unavailable,
            "other writers kept changing the file; flush again",
        ))
    }

    /// A handle that may write, loaded on this node after its session
    /// moved here: its flushes elsewhere left what its close settles.
    fn may_have_flushed_elsewhere(&self) -> bool {
        self.record.access & access::WRITE != 0 && self.binding != 0
    }

    /// What closing should tell the metadata: the real ETag of content this
    /// handle's flush left with a provisional one.
    pub async fn settle(
        &mut self,
        state: &Arc<AppState>,
    ) -> ApiResult<Option<(ContentHash, ContentHash)>> {
        if self.provisional.is_none() && !self.may_have_flushed_elsewhere() {
            return Ok(None);
        }
        let inode = self.committed(state).await?;
        // This handle's last flush here; or, after a failover, a flush
        // the node that lost the session made (the ETag is still a chunk
        // list's: nobody settled it).
        let Some(file) = inode.file.as_ref().filter(|f| {
            self.provisional == Some(f.etag)
                || (self.provisional.is_none()
                    && f.etag == content::manifest_etag(f.content.chunks()))
        }) else {
            return Ok(None);
        };
        let provisional = file.etag;
        let running = self.sequential.as_ref().and_then(|h| h.finish(file.size));
        let real = match running {
            Some(hash) => hash,
            None => content::hash_content(state, file).await?,
        };
        Ok(Some((provisional, real)))
    }
}

impl Drop for OpenFile {
    /// Cells still being staged are of no use once the handle is gone.
    fn drop(&mut self) {
        for task in self.staging.values() {
            task.abort();
        }
    }
}

/// A read, planned under the handle's lock, done outside it.
pub struct ReadPlan {
    content: crate::meta::Content,
    off: u64,
    end: u64,
    pub eof: bool,
    /// Unflushed writes of the handle overlap the span.
    pub private: bool,
}

impl ReadPlan {
    /// The committed bytes of the span; a view of a cached chunk when the
    /// span lies inside one, so a 4 MiB read is never copied on the node.
    pub async fn read_shared(&self, state: &Arc<AppState>) -> ApiResult<Bytes> {
        if self.end > self.off
            && let Some(b) =
                read_range_shared(state, &self.content, self.off, self.end - self.off).await?
        {
            return Ok(b);
        }
        Ok(Bytes::from(self.read(state).await?))
    }

    pub async fn read(&self, state: &Arc<AppState>) -> ApiResult<Vec<u8>> {
        if self.off >= self.end {
            return Ok(Vec::new());
        }
        let mut buf = read_range(state, &self.content, self.off, self.end - self.off).await?;
        buf.resize((self.end - self.off) as usize, 0);
        Ok(buf)
    }
}

fn not_a_file(id: HandleId) -> ApiError {
    ApiError::new(ErrorCode::IsDirectory, format!("handle {id} is not a file"))
}

fn load_inode(state: &AppState, record: &HandleRecord) -> ApiResult<Inode> {
    use crate::meta::store::StoreError;
    crate::meta::apply::load_inode(&state.meta.snapshot(), record.inode).map_err(|e| match e {
        // An open handle keeps its file's inode, unlinked or not: gone,
        // the handle was closed (a close that is now being retried).
        StoreError::Dangling(_) => ApiError::new(
            ErrorCode::StaleHandle,
            format!(
                "the file of {} is gone: the handle was closed",
                record.inode
            ),
        ),
        e => ApiError::new(ErrorCode::Internal, e.to_string()),
    })
}
