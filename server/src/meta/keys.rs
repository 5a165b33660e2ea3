//! The key layout of the metadata keyspace: one byte of prefix per table.
//!
//! Integers are big-endian so keys sort numerically; directory entries are
//! `D | parent | name`, so a directory's entries are one contiguous range in
//! name order, which is what listing and pagination need.

use cairn_proto::wire::{HandleId, SessionId};
use cairn_proto::{ContentHash, InodeId, ShareName};

pub const NEXT_INODE: &[u8] = b"Mnext_inode";
pub const SCHEMA: &[u8] = b"Mschema";

/// The Raft log position and membership the state machine has applied.
pub const RAFT_APPLIED: &[u8] = b"Mraft_applied";
/// Present while a snapshot is being loaded: a crash then left a partial
/// state, which is reloaded from the snapshot file at the next start.
pub const SNAPSHOT_LOADING: &[u8] = b"Msnapshot_loading";

pub fn share(name: &ShareName) -> Vec<u8> {
    prefixed(b'S', name.as_str().as_bytes())
}

pub const TOKEN_PREFIX: u8 = b'T';

pub fn token(token_hash: &ContentHash) -> Vec<u8> {
    prefixed(TOKEN_PREFIX, token_hash.as_bytes())
}

pub fn inode(id: InodeId) -> Vec<u8> {
    prefixed(b'I', &id.to_be_bytes())
}

/// The prefix shared by every entry of directory `dir`.
pub fn dir_prefix(dir: InodeId) -> Vec<u8> {
    prefixed(b'D', &dir.to_be_bytes())
}

pub fn dir_entry(dir: InodeId, name: &str) -> Vec<u8> {
    let mut k = dir_prefix(dir);
    k.extend_from_slice(name.as_bytes());
    k
}

pub const CHUNK_PREFIX: u8 = b'C';

pub fn chunk(hash: &ContentHash) -> Vec<u8> {
    prefixed(CHUNK_PREFIX, hash.as_bytes())
}

pub const NEXT_HANDLE: &[u8] = b"Mnext_handle";

pub const SESSION_PREFIX: u8 = b'N';

pub fn session(id: &SessionId) -> Vec<u8> {
    prefixed(SESSION_PREFIX, &id.0)
}

pub fn handle(id: HandleId) -> Vec<u8> {
    prefixed(b'H', &id.0.to_be_bytes())
}

/// The handles a session holds: `h | session | handle`.
pub fn session_handles(id: &SessionId) -> Vec<u8> {
    prefixed(b'h', &id.0)
}

pub fn session_handle(id: &SessionId, handle: HandleId) -> Vec<u8> {
    let mut k = session_handles(id);
    k.extend_from_slice(&handle.0.to_be_bytes());
    k
}

/// How many handles a session holds, an encoded u32 (absent: none):
/// `c | session`.
pub fn session_handle_count(id: &SessionId) -> Vec<u8> {
    prefixed(b'c', &id.0)
}

/// The handles open on an inode: `O | inode | handle`.
pub fn open_handles(inode: InodeId) -> Vec<u8> {
    prefixed(b'O', &inode.to_be_bytes())
}

pub fn open_handle(inode: InodeId, handle: HandleId) -> Vec<u8> {
    let mut k = open_handles(inode);
    k.extend_from_slice(&handle.0.to_be_bytes());
    k
}

/// Byte-range locks on an inode: `L | inode | handle | offset`.
pub fn locks(inode: InodeId) -> Vec<u8> {
    prefixed(b'L', &inode.to_be_bytes())
}

pub fn handle_locks(inode: InodeId, handle: HandleId) -> Vec<u8> {
    let mut k = locks(inode);
    k.extend_from_slice(&handle.0.to_be_bytes());
    k
}

pub fn lock(inode: InodeId, handle: HandleId, offset: u64) -> Vec<u8> {
    let mut k = handle_locks(inode, handle);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// POSIX-style locks (`LockRange`) on an inode:
/// `P | inode | handle | owner | offset`.
pub fn owner_locks(inode: InodeId) -> Vec<u8> {
    prefixed(b'P', &inode.to_be_bytes())
}

pub fn handle_owner_locks(inode: InodeId, handle: HandleId) -> Vec<u8> {
    let mut k = owner_locks(inode);
    k.extend_from_slice(&handle.0.to_be_bytes());
    k
}

pub fn owner_locks_of(inode: InodeId, handle: HandleId, owner: u64) -> Vec<u8> {
    let mut k = handle_owner_locks(inode, handle);
    k.extend_from_slice(&owner.to_be_bytes());
    k
}

pub fn owner_lock(inode: InodeId, handle: HandleId, owner: u64, offset: u64) -> Vec<u8> {
    let mut k = owner_locks_of(inode, handle, owner);
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// The `n`th u64 counted back from the end of `key` (0: the last one).
pub fn u64_from_end(key: &[u8], n: usize) -> Option<u64> {
    trailing_u64(&key[..key.len().checked_sub(8 * n)?])
}

pub const LEASE_BREAK_PREFIX: u8 = b'B';

/// Unacknowledged lease breaks: `B | session | handle`.
pub fn lease_breaks(id: &SessionId) -> Vec<u8> {
    prefixed(LEASE_BREAK_PREFIX, &id.0)
}

pub fn lease_break(id: &SessionId, handle: HandleId) -> Vec<u8> {
    let mut k = lease_breaks(id);
    k.extend_from_slice(&handle.0.to_be_bytes());
    k
}

/// The binding a session is under (see `Command::BindSession`): a
/// big-endian u64, absent for the one it was set up with (0).
pub fn session_binding(id: &SessionId) -> Vec<u8> {
    prefixed(b'b', &id.0)
}

/// Where a session's flushed appends went, by sequence number:
/// `a | session | seq` (see `Command::Fenced`).
pub fn appends(id: &SessionId) -> Vec<u8> {
    prefixed(b'a', &id.0)
}

pub fn append(id: &SessionId, seq: u64) -> Vec<u8> {
    let mut k = appends(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Below this sequence number (a big-endian u64), a session's replay
/// entries are all deleted already: `r | session`.
pub fn replays_floor(id: &SessionId) -> Vec<u8> {
    prefixed(b'r', &id.0)
}

/// The same for its append records: `A | session`.
pub fn appends_floor(id: &SessionId) -> Vec<u8> {
    prefixed(b'A', &id.0)
}

/// A session's remembered results: `R | session | seq`.
pub fn replays(id: &SessionId) -> Vec<u8> {
    prefixed(b'R', &id.0)
}

pub fn replay(id: &SessionId, seq: u64) -> Vec<u8> {
    let mut k = replays(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Files a native flush left with a provisional ETag: `U | inode`, the
/// provisional ETag as value (see [`super::settle`]).
pub const UNSETTLED_PREFIX: u8 = b'U';

pub fn unsettled(inode: InodeId) -> Vec<u8> {
    prefixed(UNSETTLED_PREFIX, &inode.to_be_bytes())
}

/// The last 8 bytes of a key as a big-endian number (handle ids in index keys).
pub fn trailing_u64(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn prefixed(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + body.len());
    k.push(tag);
    k.extend_from_slice(body);
    k
}

/// The smallest key greater than every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_entries_sort_by_parent_then_name() {
        let a = dir_entry(InodeId(1), "b");
        let b = dir_entry(InodeId(1), "c");
        let c = dir_entry(InodeId(2), "a");
        assert!(a < b && b < c);
        assert!(a.starts_with(&dir_prefix(InodeId(1))));
        assert!(prefix_end(&dir_prefix(InodeId(1))) <= dir_prefix(InodeId(2)));
        assert_eq!(prefix_end(&[1, 0xff]), vec![2]);
    }
}
