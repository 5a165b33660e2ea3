//! `PUT /v1/{share}/{path}`: a streaming upload.
//!
//! The body is cut into chunks of at most 4 MiB as it arrives; each chunk is
//! hashed and made durable on a blocking thread while the next one is being
//! received, with at most [`CHUNK_WRITES_IN_FLIGHT`] per upload and a global
//! budget of chunk buffers, so memory does not grow with the file. Only when
//! every chunk is durable is the file's metadata committed; until then the
//! upload is invisible, and a client that goes away leaves only unreferenced
//! chunks for GC.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, BodyDataStream};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use cairn_proto::api::WriteResult;
use cairn_proto::{CHUNK_SIZE_MAX, ContentHash, ErrorCode};
use futures::StreamExt;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::AppState;
use super::conditional::{etag_header, precondition};
use super::error::{ApiError, ApiResult};
use super::target::Target;
use crate::chunks::{ChunkError, PinGuard};
use crate::meta::{ChunkRef, Command, Content, FileData, Precondition};

/// Chunks of one upload being hashed and written at once.
pub const CHUNK_WRITES_IN_FLIGHT: usize = 3;
/// Permission bits of files created over HTTP.
pub const FILE_MODE_DEFAULT: u32 = 0o644;

/// When an upload is refused, the rest of its body is read and discarded
/// (like nginx's lingering close) for up to this many bytes and this long,
/// so clients that do not wait for `100 Continue` (reqwest, Python requests)
/// get the error instead of a reset connection.
pub const REFUSED_BODY_DRAIN_BYTES_MAX: u64 = 1 << 30;
pub const REFUSED_BODY_DRAIN_TIME_MAX: Duration = Duration::from_secs(10);

pub async fn put(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let announced = content_length(headers)?;
    let precondition = match check_before_body(state, target, headers, announced) {
        Ok(p) => p,
        Err(e) => {
            // A client waiting for `100 Continue` has sent nothing yet;
            // reading the body would invite it to send it all for nothing.
            let expects_continue = headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !expects_continue {
                linger(body.into_data_stream()).await;
            }
            return Err(e);
        }
    };
    let content_type = content_type(headers, target);
    receive_and_commit(state, target, announced, precondition, content_type, body).await
}

/// Everything that can refuse an upload before its body is read.
fn check_before_body(
    state: &AppState,
    target: &Target,
    headers: &HeaderMap,
    announced: Option<u64>,
) -> ApiResult<Precondition> {
    if target.path.is_root() || target.trailing_slash {
        return Err(ApiError::new(
            ErrorCode::IsDirectory,
            "PUT needs a file path; create directories with POST ?mkdir",
        ));
    }
    let limits = &state.limits;
    if announced.is_some_and(|n| n > limits.upload_bytes_max) {
        return Err(too_large(limits.upload_bytes_max));
    }
    check_free_space(state, announced.unwrap_or(0))?;
    let precondition = precondition(headers)?;
    early_precondition_check(state, target, &precondition)?;
    Ok(precondition)
}

/// Reads and discards what is left of a refused upload's body, within
/// [`REFUSED_BODY_DRAIN_BYTES_MAX`] and [`REFUSED_BODY_DRAIN_TIME_MAX`].
async fn linger(mut stream: BodyDataStream) {
    let drain = async {
        let mut drained = 0u64;
        while let Some(Ok(frame)) = stream.next().await {
            drained += frame.len() as u64;
            if drained > REFUSED_BODY_DRAIN_BYTES_MAX {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIME_MAX, drain).await;
}

async fn receive_and_commit(
    state: &AppState,
    target: &Target,
    announced: Option<u64>,
    precondition: Precondition,
    content_type: String,
    body: Body,
) -> ApiResult<Response> {
    state.metrics.uploads_in_flight.inc();
    let _in_flight = scopeguard(&state.metrics.uploads_in_flight);
    let mut stream = body.into_data_stream();
    let received = match Receiver::new(state).receive(&mut stream).await {
        Ok(r) => r,
        Err(e) => {
            // Refusals the client should read (not a broken body): drain so
            // it can finish sending and see them.
            if matches!(
                e.code,
                ErrorCode::PayloadTooLarge
                    | ErrorCode::InsufficientStorage
                    | ErrorCode::Unavailable
            ) {
                linger(stream).await;
            }
            return Err(e);
        }
    };
    if let Some(n) = announced
        && n != received.size
    {
        return Err(ApiError::bad_request(format!(
            "body has {} bytes, Content-Length said {n}",
            received.size
        )));
    }
    let etag = received.etag;
    let size = received.size;
    let cmd = Command::PutFile {
        share: target.share.clone(),
        path: target.path.clone(),
        file: FileData {
            size,
            etag,
            content_type: Some(content_type),
            content: received.content,
        },
        mode: FILE_MODE_DEFAULT,
        now_ns: state.clock.now_ns(),
        precondition,
    };
    // The commit runs in its own task holding the pins: if the client goes
    // away now, the handler is dropped but the queued command may still be
    // applied, and GC must not delete its chunks before it is.
    let committer = state.committer.clone();
    let pins = received.pins;
    let applied = tokio::spawn(async move {
        let result = committer.commit(cmd).await;
        drop(pins);
        result
    })
    .await??;
    tracing::debug!(share = %target.share, path = %target.path, size, etag = %etag, "stored");
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let result = WriteResult {
        path: target.path.as_str().to_owned(),
        created: applied.created,
        etag: Some(etag.to_hex()),
        size,
    };
    let mut resp = (status, Json(result)).into_response();
    if let Ok(v) = HeaderValue::from_str(&etag_header(&etag)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

fn too_large(max: u64) -> ApiError {
    ApiError::new(
        ErrorCode::PayloadTooLarge,
        format!("uploads are limited to {max} bytes"),
    )
}

fn content_length(headers: &HeaderMap) -> ApiResult<Option<u64>> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))
        })
        .transpose()
}

/// Refuses an upload that would eat into the reserve kept for metadata.
fn check_free_space(state: &AppState, incoming: u64) -> ApiResult<()> {
    let free = state.chunks.free_bytes()?;
    if free < incoming {
        return Err(ApiError::new(
            ErrorCode::InsufficientStorage,
            format!(
                "not enough free space: {free} bytes free above the reserve, {incoming} needed"
            ),
        ));
    }
    Ok(())
}

/// Fails fast on a precondition that already does not hold, before the
/// body is received. The authoritative check is in `apply`.
fn early_precondition_check(
    state: &AppState,
    target: &Target,
    pre: &Precondition,
) -> ApiResult<()> {
    if *pre == Precondition::default() {
        return Ok(());
    }
    let current = match state.meta.snapshot().resolve(&target.share, &target.path) {
        Ok((_, inode)) => Some(inode.etag()),
        Err(crate::meta::apply::ApplyError::Meta(_)) => None,
        Err(e) => return Err(e.into()),
    };
    if pre.holds(current) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!("precondition failed for {}", target.path),
        ))
    }
}

/// The client's Content-Type, unless it is the one curl sends by default for
/// `--data-binary`; otherwise a guess from the file name.
fn content_type(headers: &HeaderMap, target: &Target) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && !v.starts_with("application/x-www-form-urlencoded"))
        .map(str::to_owned)
        .unwrap_or_else(|| {
            mime_guess::from_path(target.path.file_name())
                .first_or_octet_stream()
                .to_string()
        })
}

/// Decrements the in-flight gauge however the upload ends.
fn scopeguard(g: &prometheus_client::metrics::gauge::Gauge) -> impl Drop + '_ {
    struct Dec<'a>(&'a prometheus_client::metrics::gauge::Gauge);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Dec(g)
}

/// A body that was received in full, with its chunks durable and pinned.
struct Received {
    content: Content,
    size: u64,
    etag: ContentHash,
    pins: Vec<PinGuard>,
}

type ChunkWrite = JoinHandle<Result<(ChunkRef, PinGuard), ChunkError>>;

/// The state of one upload's pipeline.
struct Receiver<'a> {
    state: &'a AppState,
    buf: BytesMut,
    size: u64,
    /// Set once the body outgrew the inline limit.
    chunked: bool,
    permit: Option<OwnedSemaphorePermit>,
    writes: VecDeque<ChunkWrite>,
    done: Vec<ChunkRef>,
    pins: Vec<PinGuard>,
    hasher: Option<blake3::Hasher>,
    hashing: Option<JoinHandle<blake3::Hasher>>,
}

impl<'a> Receiver<'a> {
    fn new(state: &'a AppState) -> Self {
        Self {
            state,
            buf: BytesMut::new(),
            size: 0,
            chunked: false,
            permit: None,
            writes: VecDeque::new(),
            done: Vec::new(),
            pins: Vec::new(),
            hasher: Some(blake3::Hasher::new()),
            hashing: None,
        }
    }

    async fn receive(mut self, stream: &mut BodyDataStream) -> ApiResult<Received> {
        let idle = self.state.limits.body_idle_timeout;
        loop {
            let frame = match tokio::time::timeout(idle, stream.next()).await {
                Err(_) => {
                    return Err(ApiError::bad_request(format!(
                        "no body data for {} s",
                        idle.as_secs()
                    )));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    return Err(ApiError::bad_request(format!(
                        "upload body broken off: {e}"
                    )));
                }
                Ok(Some(Ok(frame))) => frame,
            };
            self.push(frame).await?;
        }
        self.finish().await
    }

    async fn push(&mut self, mut frame: Bytes) -> ApiResult<()> {
        self.size += frame.len() as u64;
        self.state.metrics.http_bytes_in.inc_by(frame.len() as u64);
        if self.size > self.state.limits.upload_bytes_max {
            return Err(too_large(self.state.limits.upload_bytes_max));
        }
        if !self.chunked && self.size > self.state.limits.inline_bytes_max {
            self.chunked = true;
        }
        while !frame.is_empty() {
            if self.chunked && self.permit.is_none() {
                self.permit = Some(self.acquire_buffer().await?);
                self.buf
                    .reserve(CHUNK_SIZE_MAX.saturating_sub(self.buf.len()));
            }
            let room = CHUNK_SIZE_MAX - self.buf.len();
            let take = room.min(frame.len());
            self.buf.extend_from_slice(&frame.split_to(take));
            if self.buf.len() == CHUNK_SIZE_MAX {
                self.seal().await?;
            }
        }
        Ok(())
    }

    /// A chunk buffer from the budget all uploads share. Waiting is bounded:
    /// when slow uploads hold the budget, others get a retryable 503.
    async fn acquire_buffer(&self) -> ApiResult<OwnedSemaphorePermit> {
        let busy = || {
            ApiError::new(
                ErrorCode::Unavailable,
                "upload buffers are all in use; retry",
            )
        };
        let acquire = Arc::clone(&self.state.chunk_buffers).acquire_owned();
        match tokio::time::timeout(self.state.limits.body_idle_timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "the server is shutting down",
            )),
            Err(_) => Err(busy()),
        }
    }

    /// Hands the full buffer to the content hasher and a chunk writer.
    async fn seal(&mut self) -> ApiResult<()> {
        let data = self.buf.split().freeze();
        if data.is_empty() {
            return Ok(());
        }
        self.hash_content(data.clone()).await?;
        if self.writes.len() >= CHUNK_WRITES_IN_FLIGHT {
            self.collect_oldest().await?;
        }
        let chunks = Arc::clone(&self.state.chunks);
        let pins = Arc::clone(&self.state.pins);
        let metrics = Arc::clone(&self.state.metrics);
        let permit = self.permit.take();
        self.writes.push_back(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            // Every node the chunk goes to keeps its reserve for metadata
            // (the local store refuses a new chunk that would eat into it),
            // announced length or not.
            let hash = ContentHash::of(&data);
            let pin = pins.pin(hash);
            let bytes = data.len() as u64;
            let len = u32::try_from(bytes).unwrap_or(u32::MAX);
            chunks.put_shared(&hash, data)?;
            metrics.chunk_writes.inc();
            metrics.chunk_bytes_written.inc_by(bytes);
            Ok((ChunkRef { hash, len }, pin))
        }));
        Ok(())
    }

    /// Feeds `data` to the whole-content hasher, one block behind the
    /// receiver so hashing overlaps with the network.
    async fn hash_content(&mut self, data: Bytes) -> ApiResult<()> {
        if let Some(job) = self.hashing.take() {
            self.hasher = Some(job.await?);
        }
        let Some(mut hasher) = self.hasher.take() else {
            return Err(ApiError::new(ErrorCode::Internal, "content hasher lost"));
        };
        self.hashing = Some(tokio::task::spawn_blocking(move || {
            hasher.update(&data);
            hasher
        }));
        Ok(())
    }

    async fn collect_oldest(&mut self) -> ApiResult<()> {
        if let Some(job) = self.writes.pop_front() {
            let (chunk, pin) = job.await??;
            self.done.push(chunk);
            self.pins.push(pin);
        }
        Ok(())
    }

    async fn finish(mut self) -> ApiResult<Received> {
        if !self.chunked {
            let data = self.buf.split().freeze();
            let etag = ContentHash::of(&data);
            return Ok(Received {
                content: Content::Inline(data.to_vec()),
                size: self.size,
                etag,
                pins: Vec::new(),
            });
        }
        self.seal().await?;
        while !self.writes.is_empty() {
            self.collect_oldest().await?;
        }
        let hasher = match self.hashing.take() {
            Some(job) => job.await?,
            None => self.hasher.take().unwrap_or_default(),
        };
        let content = Content::Chunks(std::mem::take(&mut self.done));
        assert_eq!(
            content.len(),
            self.size,
            "chunk lengths must add up to the body size"
        );
        Ok(Received {
            content,
            size: self.size,
            etag: hasher.finalize().into(),
            pins: std::mem::take(&mut self.pins),
        })
    }
}
