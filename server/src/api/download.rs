//! `GET` and `HEAD` of a file: ranges, conditional requests, and a body
//! streamed chunk by chunk with every chunk's BLAKE3 checked before any of
//! its bytes are sent.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cairn_proto::api::EntryKind;
use cairn_proto::{ContentHash, ErrorCode};
use futures::{StreamExt, TryStreamExt, stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;
use super::conditional::{etag_header, precondition};
use super::error::{ApiError, ApiResult};
use super::range::{ByteRange, RangeRequest, parse_range};
use crate::chunks::{ChunkCache, ChunkStore};
use crate::clock::ns_to_system_time;
use crate::meta::{ChunkRef, Content, Inode};
use crate::metrics::Metrics;

/// A later piece waits this many times the body idle timeout for a buffer.
const LATER_PIECE_WAIT_FACTOR: u32 = 10;

/// Chunks read ahead of the one being sent.
pub const READ_AHEAD_CHUNKS: usize = 2;

pub async fn get_file(
    state: &AppState,
    inode: &Inode,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    let Some(file) = inode.file.as_ref() else {
        return Err(ApiError::new(ErrorCode::IsDirectory, "not a file"));
    };
    if inode.kind == EntryKind::Symlink {
        // Cairn does not follow links; `?stat` shows this one.
        return Err(ApiError::new(
            ErrorCode::IsSymlink,
            "a symbolic link, not a file: the native protocol's read_link gives its target",
        ));
    }
    let etag = etag_header(&file.etag);
    // HTTP dates cannot say "before 1970".
    let last_modified = httpdate::fmt_http_date(ns_to_system_time(inode.mtime_ns.max(0)));
    if let Some(status) = conditional_status(headers, file.etag, inode.mtime_ns)? {
        return Ok(bodyless(status, &etag, &last_modified));
    }
    let range = match if_range_holds(headers, &etag) {
        true => parse_range(header_str(headers, header::RANGE), file.size),
        false => RangeRequest::Full,
    };
    let (status, span) = match range {
        RangeRequest::Full => (
            StatusCode::OK,
            (file.size > 0).then(|| ByteRange {
                start: 0,
                end: file.size - 1,
            }),
        ),
        RangeRequest::Partial(r) => (StatusCode::PARTIAL_CONTENT, Some(r)),
        RangeRequest::Unsatisfiable => {
            let mut resp = unsatisfiable(file.size).into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{}", file.size)) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let len = span.map_or(0, |r| r.len());
    let mut builder = Response::builder()
        .status(status)
        .header(header::ETAG, &etag)
        .header(header::LAST_MODIFIED, &last_modified)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_TYPE,
            file.content_type
                .as_deref()
                .unwrap_or("application/octet-stream"),
        );
    if let (StatusCode::PARTIAL_CONTENT, Some(r)) = (status, span) {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.end, file.size),
        );
    }
    let body = match (head, span) {
        (true, _) | (_, None) => Body::empty(),
        (false, Some(r)) => body_for(state, &file.content, r).await?,
    };
    builder
        .body(body)
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn bodyless(status: StatusCode, etag: &str, last_modified: &str) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(last_modified) {
        h.insert(header::LAST_MODIFIED, v);
    }
    resp
}

fn unsatisfiable(size: u64) -> ApiError {
    ApiError::new(
        ErrorCode::RangeNotSatisfiable,
        format!("the range lies outside the file's {size} bytes"),
    )
}

/// 412 or 304 when the request's conditions say so (RFC 9110 §13.2.2 order).
fn conditional_status(
    headers: &HeaderMap,
    etag: ContentHash,
    mtime_ns: i64,
) -> ApiResult<Option<StatusCode>> {
    let pre = precondition(headers)?;
    let current = Some(Some(etag));
    if pre.if_match.is_some() && !pre.holds_if_match(current) {
        return Ok(Some(StatusCode::PRECONDITION_FAILED));
    }
    if pre.if_none_match.is_some() {
        if !pre.holds_if_none_match(current) {
            return Ok(Some(StatusCode::NOT_MODIFIED));
        }
    } else if let Some(since) = header_str(headers, header::IF_MODIFIED_SINCE)
        && let Ok(since) = httpdate::parse_http_date(since)
    {
        // HTTP dates have whole seconds.
        let modified = ns_to_system_time(mtime_ns.div_euclid(1_000_000_000) * 1_000_000_000);
        if modified <= since {
            return Ok(Some(StatusCode::NOT_MODIFIED));
        }
    }
    Ok(None)
}

/// `If-Range`: honour Range only if the ETag still matches. Dates are not
/// accepted: with one-second resolution two writes in the same second would
/// splice two versions together.
fn if_range_holds(headers: &HeaderMap, etag: &str) -> bool {
    match header_str(headers, header::IF_RANGE) {
        None => true,
        Some(v) => v == etag,
    }
}

/// The bytes `range` of `content`, read ahead and verified chunk by chunk.
/// The first chunk is read and verified before the response starts, so a
/// corrupt or missing first chunk is a clean 500; a later one cuts the
/// response short. Either way no unverified byte is sent.
async fn body_for(state: &AppState, content: &Content, range: ByteRange) -> ApiResult<Body> {
    let chunks = match content {
        Content::Inline(data) => {
            let (start, end) = (range.start as usize, range.end as usize);
            let slice = data
                .get(start..=end)
                .map(Bytes::copy_from_slice)
                .unwrap_or_default();
            state.metrics.http_bytes_out.inc_by(slice.len() as u64);
            return Ok(Body::from(slice));
        }
        Content::Chunks(chunks) => chunks,
    };
    let mut pieces = pieces(chunks, range).into_iter();
    let Some(first) = pieces.next() else {
        return Ok(Body::empty());
    };
    let reader = PieceReader {
        store: Arc::clone(&state.chunks),
        metrics: Arc::clone(&state.metrics),
        buffers: Arc::clone(&state.read_buffers),
        wait: state.limits.body_idle_timeout,
        cache: Arc::clone(&state.chunk_cache),
    };
    let first = reader.read(first, true).await?;
    let rest = stream::iter(pieces)
        .map(move |piece| reader.clone().read_owned(piece))
        .buffered(READ_AHEAD_CHUNKS);
    let s = stream::once(async move { Ok(first) })
        .chain(rest)
        .map_err(|e: ApiError| {
            // The client sees the response cut short, never bad bytes. A
            // copy that is only out of reach (its nodes restarting or cut
            // off) is a retryable condition, not one for a human.
            if e.code == ErrorCode::Unavailable {
                tracing::warn!(code = %e.code, "download aborted: {}", e.message);
            } else {
                tracing::error!(code = %e.code, "download aborted: {}", e.message);
            }
            std::io::Error::other(e.message)
        });
    Ok(Body::from_stream(s))
}

/// Reads chunks for one download within the shared read-buffer budget.
#[derive(Clone)]
struct PieceReader {
    store: Arc<dyn ChunkStore>,
    metrics: Arc<Metrics>,
    buffers: Arc<Semaphore>,
    /// Longest wait for a buffer before giving up with a retryable error.
    wait: Duration,
    /// Verified chunks of recent partial reads.
    cache: Arc<ChunkCache>,
}

/// A verified chunk and the budget permit it holds until it is dropped.
struct Held {
    data: Vec<u8>,
    _permit: OwnedSemaphorePermit,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl PieceReader {
    /// A later piece of a download: it waits for a buffer much longer than a
    /// new download does, since what frees buffers is clients reading, its
    /// own included; but not forever, so a budget held by clients that stop
    /// reading cannot stall everyone else's downloads indefinitely.
    async fn read_owned(self, piece: (ChunkRef, usize, usize)) -> ApiResult<Bytes> {
        self.read(piece, false).await
    }

    /// Reads one chunk on a blocking thread, verifies it, and cuts out the
    /// span. The returned bytes keep their buffer permit until sent. With
    /// `bounded`, waiting for a buffer gives up after `wait` (a new download
    /// gets a retryable 503 rather than queueing forever).
    async fn read(
        &self,
        (chunk, start, end): (ChunkRef, usize, usize),
        bounded: bool,
    ) -> ApiResult<Bytes> {
        let partial = end - start < chunk.len as usize;
        if partial && let Some(cached) = self.cache.get(&chunk.hash) {
            // A small range of a chunk read lately: no disk read, no hash.
            let piece = Bytes::copy_from_slice(cached.get(start..end).unwrap_or_default());
            self.metrics.http_bytes_out.inc_by(piece.len() as u64);
            return Ok(piece);
        }
        let acquire = Arc::clone(&self.buffers).acquire_owned();
        let wait = if bounded {
            self.wait
        } else {
            self.wait * LATER_PIECE_WAIT_FACTOR
        };
        let permit = match tokio::time::timeout(wait, acquire).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(ApiError::new(ErrorCode::Unavailable, "shutting down")),
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::Unavailable,
                    "download buffers are all in use; retry",
                ));
            }
        };
        let store = Arc::clone(&self.store);
        let data = tokio::task::spawn_blocking(move || store.get(&chunk.hash)).await?;
        self.metrics.chunk_reads.inc();
        let data = data.inspect_err(|_| {
            self.metrics.chunk_corrupt.inc();
        })?;
        if partial {
            // Range requests come back for nearby ranges (random reads):
            // keep the verified chunk, send a copy of the span.
            let data = Arc::new(data);
            self.cache.insert(chunk.hash, Arc::clone(&data));
            let piece = Bytes::copy_from_slice(data.get(start..end).unwrap_or_default());
            self.metrics.http_bytes_out.inc_by(piece.len() as u64);
            return Ok(piece);
        }
        let piece = Bytes::from_owner(Held {
            data,
            _permit: permit,
        })
        .slice(start..end);
        self.metrics.http_bytes_out.inc_by(piece.len() as u64);
        Ok(piece)
    }
}

/// The chunks overlapping `range`, each with the byte span to send from it.
fn pieces(chunks: &[ChunkRef], range: ByteRange) -> Vec<(ChunkRef, usize, usize)> {
    let mut out = Vec::new();
    let mut offset = 0u64;
    for c in chunks {
        let len = u64::from(c.len);
        let (chunk_start, chunk_end) = (offset, offset + len);
        offset = chunk_end;
        if chunk_end <= range.start || chunk_start > range.end {
            continue;
        }
        let from = range.start.max(chunk_start) - chunk_start;
        let to = (range.end + 1).min(chunk_end) - chunk_start;
        out.push((*c, from as usize, to as usize));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_exactly_the_range() {
        let c = |n: u8, len| ChunkRef {
            hash: ContentHash::of(&[n]),
            len,
        };
        let chunks = [c(1, 10), c(2, 10), c(3, 5)];
        let p = pieces(&chunks, ByteRange { start: 8, end: 21 });
        let spans: Vec<_> = p.iter().map(|(_, a, b)| (*a, *b)).collect();
        assert_eq!(spans, vec![(8, 10), (0, 10), (0, 2)]);
        let total: usize = spans.iter().map(|(a, b)| b - a).sum();
        assert_eq!(total, 14);
        assert_eq!(pieces(&chunks, ByteRange { start: 24, end: 24 }).len(), 1);
    }
}
