//! Reading ranges of a file's committed content and building its next
//! content from that and a handle's unflushed writes.
//!
//! New content keeps a 4 MiB grid (every chunk but the last is full size),
//! so a flush rewrites only the cells that writes touched: chunks of
//! untouched cells are kept by reference, a cell that writes cover whole is
//! stored without reading anything, and a partly written cell is read,
//! patched and stored.

use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::{CHUNK_SIZE_MAX, ContentHash};
use futures::{StreamExt, TryStreamExt, stream};

use crate::api::AppState;
use crate::api::error::{ApiError, ApiResult};
use crate::chunks::PinGuard;
use crate::meta::{ChunkRef, Content, FileData};
use cairn_proto::extents::Extents;

/// Chunks of one flush stored at once.
const CHUNK_PUTS_IN_FLIGHT: usize = 4;
const CELL: u64 = CHUNK_SIZE_MAX as u64;
/// Bytes read at a time when hashing a whole file.
pub const HASH_PIECE: u64 = CELL;

/// Whole cells already stored while writes arrived: cell -> chunk (pinned).
pub type Staged = std::collections::BTreeMap<u64, (ChunkRef, PinGuard)>;

/// Stores a cell's bytes (`pieces`, in order) as a chunk ahead of the
/// flush, once one of `slots` is free. The pieces are views of the
/// handle's writes; they are joined only then, so cells waiting their turn
/// hold no copy. The slot goes with the blocking store itself: aborting
/// this task cannot stop a store under way, and the next cell must not
/// start beside it.
pub async fn stage(
    state: Arc<AppState>,
    slots: Arc<tokio::sync::Semaphore>,
    pieces: Vec<Bytes>,
) -> ApiResult<(ChunkRef, PinGuard)> {
    let slot = slots.acquire_owned().await.map_err(|_| {
        ApiError::new(
            cairn_proto::ErrorCode::Unavailable,
            "the handle's staging was shut",
        )
    })?;
    let store = Arc::clone(&state.chunks);
    let pins = Arc::clone(&state.pins);
    tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let bytes = cairn_proto::extents::join(pieces);
        let hash = ContentHash::of(&bytes);
        let pin = pins.pin(hash);
        let len = bytes.len() as u32;
        store.put_shared(&hash, bytes)?;
        Ok::<_, ApiError>((ChunkRef { hash, len }, pin))
    })
    .await?
}

/// BLAKE3 of a file's bytes, read chunk by chunk.
pub async fn hash_content(state: &Arc<AppState>, file: &FileData) -> ApiResult<ContentHash> {
    let mut h = blake3::Hasher::new();
    let mut off = 0;
    while off < file.size {
        let piece = read_range(state, &file.content, off, HASH_PIECE).await?;
        if piece.is_empty() {
            break;
        }
        off += piece.len() as u64;
        // Off the async workers, and a pause between pieces: chunks found
        // in the cache come back without one, and a large file would
        // otherwise hold a worker (and whatever shares its task) throughout.
        h = tokio::task::spawn_blocking(move || {
            h.update(&piece);
            h
        })
        .await?;
    }
    Ok(ContentHash(*h.finalize().as_bytes()))
}

/// The width of the grid new content is cut on.
pub const CELL_BYTES: u64 = CELL;

/// Reads `[off, off + len)` of `content` (clipped to it), chunks verified.
pub async fn read_range(
    state: &Arc<AppState>,
    content: &Content,
    off: u64,
    len: u64,
) -> ApiResult<Vec<u8>> {
    let size = content.len();
    let end = size.min(off.saturating_add(len));
    if off >= end {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity((end - off) as usize);
    match content {
        Content::Inline(bytes) => out.extend_from_slice(&bytes[off as usize..end as usize]),
        Content::Chunks(chunks) => {
            let mut at = 0u64;
            for c in chunks {
                let c_end = at + u64::from(c.len);
                if c_end > off && at < end {
                    let data = get_chunk(state, c.hash).await?;
                    let from = (off.max(at) - at) as usize;
                    let to = (end.min(c_end) - at) as usize;
                    let piece = data.get(from..to).ok_or_else(|| {
                        ApiError::new(
                            cairn_proto::ErrorCode::Corrupt,
                            format!("chunk {} is shorter than its record", c.hash),
                        )
                    })?;
                    out.extend_from_slice(piece);
                }
                if c_end >= end {
                    break;
                }
                at = c_end;
            }
        }
    }
    Ok(out)
}

/// `[off, off + len)` of `content` as a view of one cached chunk, without
/// copying, when it lies inside one chunk (a sequential reader's 4 MiB
/// reads on the 4 MiB grid always do); `None` otherwise.
pub async fn read_range_shared(
    state: &Arc<AppState>,
    content: &Content,
    off: u64,
    len: u64,
) -> ApiResult<Option<Bytes>> {
    let Content::Chunks(chunks) = content else {
        return Ok(None);
    };
    let end = off.saturating_add(len);
    let mut at = 0u64;
    for c in chunks {
        let c_end = at + u64::from(c.len);
        if off >= at && end <= c_end {
            let data = get_chunk(state, c.hash).await?;
            if data.len() != c.len as usize {
                return Err(ApiError::new(
                    cairn_proto::ErrorCode::Corrupt,
                    format!("chunk {} is not as long as its record", c.hash),
                ));
            }
            let whole = Bytes::from_owner(SharedChunk(data));
            return Ok(Some(whole.slice((off - at) as usize..(end - at) as usize)));
        }
        if c_end > off {
            return Ok(None);
        }
        at = c_end;
    }
    Ok(None)
}

/// A cached chunk as the owner of [`Bytes`] views of it.
struct SharedChunk(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedChunk {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

async fn get_chunk(state: &Arc<AppState>, hash: ContentHash) -> ApiResult<Arc<Vec<u8>>> {
    let store = Arc::clone(&state.chunks);
    let metrics = Arc::clone(&state.metrics);
    state
        .chunk_cache
        .get_or_load(hash, || async move {
            let data = tokio::task::spawn_blocking(move || store.get(&hash)).await?;
            metrics.chunk_reads.inc();
            let data: ApiResult<Vec<u8>> = Ok(data.inspect_err(|_| {
                metrics.chunk_corrupt.inc();
            })?);
            data
        })
        .await
}

pub use crate::meta::settle::manifest_etag;

/// New content and the pins that keep GC off its chunks until committed.
pub struct Built {
    pub file: FileData,
    pub pins: Vec<PinGuard>,
}

/// The content `base` becomes with `dirty` written over it and the size set
/// to `size`.
pub async fn build(
    state: &Arc<AppState>,
    base: &FileData,
    dirty: &Extents,
    size: u64,
    staged: &Staged,
) -> ApiResult<Built> {
    if size <= state.limits.inline_bytes_max {
        let mut bytes = read_range(state, &base.content, 0, size).await?;
        bytes.resize(size as usize, 0);
        dirty.overlay(0, &mut bytes);
        return Ok(Built {
            file: FileData {
                size,
                etag: ContentHash::of(&bytes),
                content_type: base.content_type.clone(),
                content: Content::Inline(bytes),
            },
            pins: Vec::new(),
        });
    }
    let cells = size.div_ceil(CELL);
    let built: Vec<(ChunkRef, Option<PinGuard>)> = stream::iter(0..cells)
        .map(|k| cell(state, base, dirty, k, size, staged))
        .buffered(CHUNK_PUTS_IN_FLIGHT)
        .try_collect()
        .await?;
    let mut chunks = Vec::with_capacity(built.len());
    let mut pins = Vec::new();
    for (c, pin) in built {
        chunks.push(c);
        pins.extend(pin);
    }
    Ok(Built {
        file: FileData {
            size,
            etag: manifest_etag(&chunks),
            content_type: base.content_type.clone(),
            content: Content::Chunks(chunks),
        },
        pins,
    })
}

/// Cell `k` of the new content: the base's own chunk when nothing changed
/// in it, else a new chunk.
async fn cell(
    state: &Arc<AppState>,
    base: &FileData,
    dirty: &Extents,
    k: u64,
    size: u64,
    staged: &Staged,
) -> ApiResult<(ChunkRef, Option<PinGuard>)> {
    let start = k * CELL;
    let end = size.min(start + CELL);
    if end - start == CELL
        && let Some((c, _pin)) = staged.get(&k)
    {
        // Stored while the writes came in; its pin lives in `staged`.
        return Ok((*c, None));
    }
    if !dirty.touches(start, end)
        && let Some(c) = base_chunk_at(&base.content, start, end)
    {
        return Ok((c, None));
    }
    let bytes = match dirty.gather(start, end) {
        Some(written) => written,
        None => {
            let mut b = read_range(state, &base.content, start, end - start).await?;
            b.resize((end - start) as usize, 0);
            dirty.overlay(start, &mut b);
            Bytes::from(b)
        }
    };
    let hash = ContentHash::of(&bytes);
    let pin = state.pins.pin(hash);
    let len = bytes.len() as u32;
    let store = Arc::clone(&state.chunks);
    tokio::task::spawn_blocking(move || store.put_shared(&hash, bytes)).await??;
    Ok((ChunkRef { hash, len }, Some(pin)))
}

/// The base chunk spanning exactly `[start, end)`, if there is one.
fn base_chunk_at(content: &Content, start: u64, end: u64) -> Option<ChunkRef> {
    let mut at = 0u64;
    for c in content.chunks() {
        if at == start {
            return (at + u64::from(c.len) == end).then_some(*c);
        }
        if at > start {
            return None;
        }
        at += u64::from(c.len);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_chunks_are_found_only_on_exact_cells() {
        let h = ContentHash::of(b"a");
        let content = Content::Chunks(vec![
            ChunkRef { hash: h, len: 4 },
            ChunkRef { hash: h, len: 6 },
        ]);
        assert!(base_chunk_at(&content, 0, 4).is_some());
        assert!(base_chunk_at(&content, 4, 10).is_some());
        assert!(base_chunk_at(&content, 4, 9).is_none());
        assert!(base_chunk_at(&content, 2, 4).is_none());
        assert!(base_chunk_at(&content, 10, 12).is_none());
    }

    #[test]
    fn manifest_etags_differ_from_content_hashes_and_each_other() {
        let a = ChunkRef {
            hash: ContentHash::of(b"a"),
            len: 1,
        };
        let b = ChunkRef {
            hash: ContentHash::of(b"b"),
            len: 1,
        };
        assert_ne!(manifest_etag(&[a]), manifest_etag(&[b]));
        assert_ne!(manifest_etag(&[a, b]), manifest_etag(&[b, a]));
    }
}
