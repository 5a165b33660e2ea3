//! An open file: positional reads and writes through a durable handle.
//!
//! Writes are kept until a flush acknowledges them, so after a failover the
//! client can send them again to the node it reconnected to; a flush every
//! [`FLUSH_BYTES`] bounds that memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use cairn_proto::wire::{
    Attr, Disposition, HandleId, HeldLock, Lock, LockKind, LockRange, Read, Request, Response,
    SetInfo, TestLock, Unlock, Write,
};
use futures::StreamExt;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use tokio::io::{AsyncRead, AsyncWrite};

use super::source::{Blocks, Source};
use super::state::{FileState, Unacked};
use super::target::{Out, Target};
use super::{Client, OpenOptions, conn, unexpected};
use crate::ClientError;

/// Largest single read or write request.
pub const IO_BYTES_MAX: usize = 4 << 20;
/// Unflushed bytes that make a write flush.
pub const FLUSH_BYTES: usize = 64 << 20;
/// Reads or writes one transfer keeps in flight.
const TRANSFERS_IN_FLIGHT: usize = 4;

/// Sends `data` to `handle` in requests of at most [`IO_BYTES_MAX`], each
/// kept to send again until a flush acknowledges it (at the end of the
/// file, if `append`).
async fn write_pieces(
    client: &Client,
    handle: HandleId,
    state: &FileState,
    append: bool,
    offset: u64,
    data: Bytes,
) -> Result<(), ClientError> {
    let mut at = 0;
    while at < data.len() {
        let end = (at + IO_BYTES_MAX).min(data.len());
        let piece = data.slice(at..end);
        // Appends are placed by the server, once per sequence number,
        // held until answered (see `seqs`).
        let held = if append {
            Some(client.hold_seq().await)
        } else {
            None
        };
        let seq = held.as_ref().map_or(0, |h| h.seq);
        let pending = Unacked::add(&state.unflushed, offset + at as u64, piece.clone(), seq);
        let req = Request::Write(Write {
            handle,
            offset: offset + at as u64,
            data: piece,
        });
        match client.call_with(req, seq).await? {
            Response::Written(w) => pending.ack(w.offset),
            other => return Err(unexpected(&other)),
        }
        drop(held);
        at = end;
        // Within the loop: one large write would otherwise pass the node's
        // limit on a handle's unflushed bytes.
        if state.unflushed.bytes() >= FLUSH_BYTES {
            state.flush_past(client, handle, FLUSH_BYTES).await?;
        }
    }
    Ok(())
}

/// An open file on the cluster.
pub struct File {
    client: Client,
    handle: HandleId,
    attr: Attr,
    state: Arc<FileState>,
    append: bool,
    created: bool,
    /// A close was sent (see the `Drop` impl).
    closed: AtomicBool,
}

impl File {
    pub(super) fn new(
        client: Client,
        (handle, attr, created): (HandleId, Attr, bool),
        state: Arc<FileState>,
        append: bool,
    ) -> Self {
        Self {
            client,
            handle,
            attr,
            state,
            append,
            created,
            closed: AtomicBool::new(false),
        }
    }

    /// True if the open made the file (it did not exist).
    pub fn created(&self) -> bool {
        self.created
    }

    /// The lease the handle holds now (`wire::lease` bits): what this
    /// client may cache. Breaks lower it (see [`Client::lease_breaks`]).
    pub fn lease(&self) -> u8 {
        self.state.lease()
    }

    pub fn handle(&self) -> HandleId {
        self.handle
    }

    /// The attributes when the file was opened.
    pub fn opened_attr(&self) -> &Attr {
        &self.attr
    }

    /// Up to `len` bytes at `offset`; shorter only at the end of the file.
    /// A read of at most 4 MiB is the answer's own buffer, not a copy.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Bytes, ClientError> {
        let want = len.min(IO_BYTES_MAX) as u32;
        let (first, mut eof) = self.read_piece(offset, want).await?;
        if first.len() >= len || eof || first.is_empty() {
            return Ok(first);
        }
        let mut out = BytesMut::with_capacity(len);
        out.extend_from_slice(&first);
        while out.len() < len && !eof {
            let want = (len - out.len()).min(IO_BYTES_MAX) as u32;
            let (data, at_end) = self.read_piece(offset + out.len() as u64, want).await?;
            out.extend_from_slice(&data);
            eof = at_end || data.is_empty();
        }
        Ok(out.freeze())
    }

    /// [`File::read_at`] as views of the answers' own buffers, never
    /// joined: for a download that writes them out one after the other.
    async fn read_pieces_at(&self, offset: u64, len: usize) -> Result<Vec<Bytes>, ClientError> {
        let mut out = Vec::new();
        let mut got = 0;
        while got < len {
            let req = Request::Read(Read {
                handle: self.handle,
                offset: offset + got as u64,
                len: (len - got).min(IO_BYTES_MAX) as u32,
            });
            let (n, eof) = match self.client.call_answer(req, 0).await? {
                conn::Answer::Data(d) => {
                    let n = d.len();
                    out.extend(d.data);
                    (n, d.eof)
                }
                conn::Answer::Whole(Response::Data(d)) => {
                    let n = d.data.len();
                    out.push(d.data);
                    (n, d.eof)
                }
                conn::Answer::Whole(other) => return Err(unexpected(&other)),
            };
            got += n;
            if eof || n == 0 {
                break;
            }
        }
        Ok(out)
    }

    async fn read_piece(&self, offset: u64, len: u32) -> Result<(Bytes, bool), ClientError> {
        let req = Request::Read(Read {
            handle: self.handle,
            offset,
            len,
        });
        match self.client.call(req).await? {
            Response::Data(d) => Ok((d.data, d.eof)),
            other => Err(unexpected(&other)),
        }
    }

    /// Writes `data` at `offset` (at the end of the file, for a file
    /// opened to append: all of `data` in one run, appends through this
    /// handle one at a time). Durable only after [`File::flush`] or
    /// [`File::close`]; until then the client keeps it to send again.
    ///
    /// An append goes on to its end if this future is dropped: the node
    /// may have placed part of it already, and a later append must not be
    /// placed after a hole no resend would fill.
    pub async fn write_at(&self, offset: u64, data: Bytes) -> Result<(), ClientError> {
        if !self.append {
            return write_pieces(&self.client, self.handle, &self.state, false, offset, data).await;
        }
        let turn = self.state.append_turn();
        let (client, handle, state) = (self.client.clone(), self.handle, Arc::clone(&self.state));
        tokio::spawn(async move {
            let _turn = turn.lock_owned().await;
            write_pieces(&client, handle, &state, true, offset, data).await
        })
        .await
        .map_err(|e| ClientError::Connection(format!("the append's task failed: {e}")))?
    }

    /// Makes every acknowledged write durable on the cluster.
    pub async fn flush(&self) -> Result<Attr, ClientError> {
        self.state.flush(&self.client, self.handle).await
    }

    /// Like [`File::flush`], but sends nothing when no write was made
    /// since the last flush (a close of a file only read, or created
    /// empty).
    pub async fn sync(&self) -> Result<(), ClientError> {
        if self.state.unflushed.is_empty() {
            return Ok(());
        }
        self.flush().await.map(drop)
    }

    /// Truncates or extends (with zeros); durable on return.
    pub async fn set_len(&self, size: u64) -> Result<Attr, ClientError> {
        self.flush().await?;
        let req = Request::SetInfo(SetInfo {
            handle: self.handle,
            size: Some(size),
            mtime_ns: None,
            mode: None,
        });
        match self.client.call(req).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets the permission bits and/or the modification time.
    pub async fn set_attr(
        &self,
        mode: Option<u32>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr, ClientError> {
        let req = Request::SetInfo(SetInfo {
            handle: self.handle,
            size: None,
            mtime_ns,
            mode,
        });
        match self.client.call(req).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Takes a byte-range lock (`len` 0: to the end of any file), waiting
    /// up to `wait` for conflicting locks of other handles to go away;
    /// `lock_conflict` if they do not. Held across failovers until
    /// [`File::unlock`] or close.
    pub async fn lock(
        &self,
        offset: u64,
        len: u64,
        exclusive: bool,
        wait: std::time::Duration,
    ) -> Result<(), ClientError> {
        let req = Request::Lock(Lock {
            handle: self.handle,
            offset,
            len,
            exclusive,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        });
        match self.client.call(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Releases the lock taken with exactly this range.
    pub async fn unlock(&self, offset: u64, len: u64) -> Result<(), ClientError> {
        let req = Request::Unlock(Unlock {
            handle: self.handle,
            offset,
            len,
        });
        match self.client.call(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sets what `owner` holds on `[offset, offset + len)` (`len` 0: to the
    /// end of any file) through this handle, as fcntl's F_SETLK does:
    /// whatever the owner held there is replaced, its other ranges are
    /// kept, cut where this one cuts them. Waits up to `wait` for other
    /// owners' and handles' conflicting locks to go away; `lock_conflict`
    /// if they do not. Held across failovers until unlocked or close.
    pub async fn lock_range(
        &self,
        owner: u64,
        (offset, len): (u64, u64),
        kind: LockKind,
        wait: std::time::Duration,
    ) -> Result<(), ClientError> {
        let req = Request::LockRange(LockRange {
            handle: self.handle,
            owner,
            offset,
            len,
            kind,
            wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
        });
        match self.client.call(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The lock (the one at the lowest offset) that would stop `owner`
    /// taking `[offset, offset + len)` through this handle, as fcntl's
    /// F_GETLK asks; `None` if it could. Takes nothing.
    pub async fn test_lock(
        &self,
        owner: u64,
        (offset, len): (u64, u64),
        exclusive: bool,
    ) -> Result<Option<HeldLock>, ClientError> {
        let req = Request::TestLock(TestLock {
            handle: self.handle,
            owner,
            offset,
            len,
            exclusive,
        });
        match self.client.call(req).await? {
            Response::LockTested(t) => Ok(t.conflict),
            other => Err(unexpected(&other)),
        }
    }

    /// The attributes as this handle sees them (its writes included).
    pub async fn metadata(&self) -> Result<Attr, ClientError> {
        match self.client.call(Request::StatHandle(self.handle)).await? {
            Response::Attr(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Flushes and closes; the handle is gone on every node.
    pub async fn close(self) -> Result<(), ClientError> {
        self.close_shared().await
    }

    /// [`File::close`] for a file others may still hold a reference to
    /// (a mount's handle table); later calls on it fail with
    /// `stale_handle`.
    pub async fn close_shared(&self) -> Result<(), ClientError> {
        // The node flushes what it holds before it closes; after a
        // failover the reconnect sent it every unflushed write first.
        let answer = self.client.call(Request::Close(self.handle)).await;
        // A close that reached no node, or that a node could not carry
        // out just now, leaves the handle open on the cluster (with its
        // locks, leases and share modes, for the session's life): the drop
        // tries once more in the background. Any other answer is final.
        let again = match &answer {
            Err(ClientError::Connection(_)) => true,
            Err(e) => e.code() == Some(cairn_proto::ErrorCode::Unavailable),
            Ok(_) => false,
        };
        if !again {
            self.closed.store(true, Ordering::Relaxed);
        }
        match answer? {
            Response::Done => {
                self.client.forget_file(self.handle);
                Ok(())
            }
            other => Err(unexpected(&other)),
        }
    }
}

/// A file dropped without a close is closed in the background, as a
/// dropped `tokio::fs::File` is: the node flushes what it holds, and the
/// handle (with its locks and leases) does not stay open until the
/// session ends. One whose close was refused is forgotten, so its
/// unflushed writes are not sent again at every failover; one whose close
/// reached no node is closed once more here, in the background.
impl Drop for File {
    fn drop(&mut self) {
        if self.closed.swap(true, Ordering::Relaxed) {
            self.client.forget_file(self.handle);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.client.forget_file(self.handle);
            return;
        };
        let client = self.client.clone();
        let handle = self.handle;
        runtime.spawn(async move {
            if let Err(e) = client.call(Request::Close(handle)).await {
                tracing::debug!(%handle, error = %e, "closing a dropped file failed");
            }
            client.forget_file(handle);
        });
    }
}

/// Called with each transferred byte count.
pub type TransferProgress<'a> = &'a (dyn Fn(u64) + Sync);

impl Client {
    /// Uploads everything `reader` yields to `path` (created or replaced),
    /// several writes in flight. The bytes go to a hidden file beside
    /// `path` that is renamed over it once they are all flushed, as an
    /// HTTP PUT commits at its end: readers never see half an upload, and
    /// one that fails leaves what was at `path` as it was.
    pub async fn put(
        &self,
        path: &str,
        reader: &mut (dyn AsyncRead + Unpin + Send),
        progress: TransferProgress<'_>,
    ) -> Result<Attr, ClientError> {
        self.put_from(path, Source::Reader(reader), progress).await
    }

    /// [`Client::put`] from any [`Source`]: bytes in memory and local
    /// files go without being copied into each write.
    pub async fn put_from(
        &self,
        path: &str,
        source: Source<'_>,
        progress: TransferProgress<'_>,
    ) -> Result<Attr, ClientError> {
        let mut blocks = Blocks::from(source);
        let staging = upload_path(path);
        let file = self
            .open(&staging, OpenOptions::create().with(Disposition::CreateNew))
            .await?;
        let done = async {
            upload(&file, &mut blocks, progress).await?;
            let mut attr = file.flush().await?;
            file.close_shared().await?;
            self.rename(&staging, path, true).await?;
            attr.name = path.rsplit('/').next().unwrap_or(path).to_owned();
            Ok(attr)
        }
        .await;
        if done.is_err() {
            // Best effort: a session that ends closes the handle anyway,
            // and a staging file left behind is hidden and named as one.
            let _ = file.close_shared().await;
            if let Err(e) = self.remove(&staging).await {
                tracing::debug!(path = %staging, error = %e, "could not remove a failed upload");
            }
        }
        done
    }

    /// Downloads `path` into `writer`, several reads in flight; returns the
    /// byte count.
    pub async fn get(
        &self,
        path: &str,
        writer: &mut (dyn AsyncWrite + Unpin + Send),
        progress: TransferProgress<'_>,
    ) -> Result<u64, ClientError> {
        self.get_into(path, Target::Writer(writer), progress).await
    }

    /// [`Client::get`] into any [`Target`]: a local file is written from
    /// each answer's own buffer, without a copy.
    pub async fn get_into(
        &self,
        path: &str,
        target: Target<'_>,
        progress: TransferProgress<'_>,
    ) -> Result<u64, ClientError> {
        let mut out = Out::from(target);
        let file = self.open(path, OpenOptions::read()).await?;
        let size = file.opened_attr().size;
        let mut pieces = FuturesOrdered::new();
        let mut next = 0u64;
        let mut written = 0u64;
        loop {
            while next < size && pieces.len() < TRANSFERS_IN_FLIGHT {
                let len = (size - next).min(IO_BYTES_MAX as u64) as usize;
                let f = &file;
                let at = next;
                pieces.push_back(async move { f.read_pieces_at(at, len).await.map(|d| (d, len)) });
                next += len as u64;
            }
            let Some(piece) = pieces.next().await else {
                break;
            };
            let (data, wanted) = piece?;
            let got: usize = data.iter().map(Bytes::len).sum();
            if got != wanted {
                return Err(ClientError::Connection(format!(
                    "the file shrank while being read ({written} + {got} of {size} bytes)"
                )));
            }
            out.write(data).await?;
            written += got as u64;
            progress(got as u64);
        }
        drop(pieces);
        out.flush().await?;
        file.close().await?;
        Ok(written)
    }
}

/// Where [`Client::put`] stages an upload to `path`: a hidden name in the
/// same directory (a rename within a directory is one metadata command),
/// short enough for any directory, unique per upload.
fn upload_path(path: &str) -> String {
    let name = format!(".cairn-put-{:016x}", rand::random::<u64>());
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{name}"),
        None => name,
    }
}

/// Writes every block of `blocks` to `file` from offset 0, several writes
/// in flight.
async fn upload(
    file: &File,
    blocks: &mut Blocks<'_>,
    progress: TransferProgress<'_>,
) -> Result<(), ClientError> {
    let mut in_flight = FuturesUnordered::new();
    let mut offset = 0u64;
    loop {
        let block = blocks.next(IO_BYTES_MAX).await?;
        if block.is_empty() {
            break;
        }
        let len = block.len() as u64;
        in_flight.push(async move {
            file.write_at(offset, block).await?;
            progress(len);
            Ok::<_, ClientError>(())
        });
        offset += len;
        if in_flight.len() >= TRANSFERS_IN_FLIGHT
            && let Some(r) = in_flight.next().await
        {
            r?;
        }
    }
    while let Some(r) = in_flight.next().await {
        r?;
    }
    Ok(())
}
