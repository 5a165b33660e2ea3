//! Files whose ETag a native flush left provisional.
//!
//! A native flush gives the file the hash of its chunk list as ETag, since
//! hashing the whole content at every flush would cost a read of the file.
//! The writer's close replaces it with the BLAKE3 of the content. A writer
//! that never closes (its session logged off or expired with the file
//! open) would leave the provisional value for good, and clients that
//! check downloads against the ETag (`cairn get`) would refuse the file.
//! So every such flush marks the file (`U | inode`), a settling close
//! clears the mark, and the leader settles what stays marked once no
//! writer has the file open (`native::settle`).

use cairn_proto::wire::{HandleId, access};
use cairn_proto::{ContentHash, InodeId};

use super::apply::{Applied, ApplyError, get};
use super::keys;
use super::overlay::{KvRead, Overlay};
use super::records::{ChunkRef, FileData, HandleRecord, Inode, encode};
use super::store::StoreError;

/// The ETag a native flush gives content kept in chunks: a hash of the
/// chunk list, not of the bytes (see the module's comment).
pub fn manifest_etag(chunks: &[ChunkRef]) -> ContentHash {
    let mut h = blake3::Hasher::new();
    h.update(b"cairn manifest v1");
    for c in chunks {
        h.update(c.hash.as_bytes());
        h.update(&c.len.to_le_bytes());
    }
    ContentHash(*h.finalize().as_bytes())
}

/// Marks `inode` as unsettled if `file` (its new content) has a
/// provisional ETag, and clears an older mark if not.
pub(super) fn mark<R: KvRead + ?Sized>(tx: &mut Overlay<'_, R>, inode: InodeId, file: &FileData) {
    let chunks = file.content.chunks();
    if !chunks.is_empty() && file.etag == manifest_etag(chunks) {
        tx.put(keys::unsettled(inode), file.etag.as_bytes().to_vec());
    } else {
        tx.delete(keys::unsettled(inode));
    }
}

/// Clears the mark on `inode` if it names `provisional` (a later flush's
/// mark stays).
pub(super) fn clear<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    inode: InodeId,
    provisional: &ContentHash,
) -> Result<(), StoreError> {
    let key = keys::unsettled(inode);
    if tx.get(&key)?.as_deref() == Some(provisional.as_bytes().as_slice()) {
        tx.delete(key);
    }
    Ok(())
}

/// Applies [`super::Command::SettleEtag`].
pub(super) fn settle<R: KvRead + ?Sized>(
    tx: &mut Overlay<'_, R>,
    inode: InodeId,
    provisional: &ContentHash,
    real: &ContentHash,
) -> Result<Applied, ApplyError> {
    clear(tx, inode, provisional)?;
    if let Some(mut record) = get::<Inode, _>(tx, &keys::inode(inode))?
        && let Some(file) = record.file.as_mut()
        && file.etag == *provisional
    {
        file.etag = *real;
        tx.put(keys::inode(inode), encode(&record));
    }
    Ok(Applied::nothing())
}

/// Up to `limit` marked files from `after` on (exclusive; `None`: from the
/// first), with the provisional ETag each was marked with.
pub fn unsettled<R: KvRead + ?Sized>(
    tx: &R,
    after: Option<InodeId>,
    limit: usize,
) -> Result<Vec<(InodeId, ContentHash)>, StoreError> {
    let prefix = [keys::UNSETTLED_PREFIX];
    let end = keys::prefix_end(&prefix);
    let mut start = match after {
        Some(id) => {
            let mut k = keys::unsettled(id);
            k.push(0);
            k
        }
        None => prefix.to_vec(),
    };
    let mut out = Vec::new();
    while out.len() < limit
        && let Some(key) = tx.first_key_in(&start, &end)?
    {
        let value = tx.get(&key)?;
        if let (Some(id), Some(Ok(etag))) = (
            keys::trailing_u64(&key),
            value.map(|v| <[u8; 32]>::try_from(v.as_slice())),
        ) {
            out.push((InodeId(id), ContentHash(etag)));
        }
        start = key;
        start.push(0);
    }
    Ok(out)
}

/// True if a handle open for writing has `inode` open: its close settles.
pub fn has_writer<R: KvRead + ?Sized>(tx: &R, inode: InodeId) -> Result<bool, StoreError> {
    let prefix = keys::open_handles(inode);
    let end = keys::prefix_end(&prefix);
    let mut start = prefix.clone();
    while let Some(key) = tx.first_key_in(&start, &end)? {
        if let Some(h) = keys::trailing_u64(&key)
            && let Some(record) = get::<HandleRecord, _>(tx, &keys::handle(HandleId(h)))?
            && record.access & access::WRITE != 0
        {
            return Ok(true);
        }
        start = key;
        start.push(0);
    }
    Ok(false)
}
