//! Pins: chunks that an upload has stored or found but not yet referenced.
//!
//! Between "chunk X is on disk" and "metadata referencing X committed", X is
//! unreferenced, and GC could delete it. An upload pins X before it checks
//! for or writes the chunk and unpins after its metadata commits; GC deletes
//! only under the same lock, after seeing X unpinned and unreferenced. So
//! either GC sees the pin, or the upload finds the chunk gone and writes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_proto::ContentHash;

const SHARDS: usize = 64;

pub struct Pins {
    shards: [Mutex<HashMap<ContentHash, u32>>; SHARDS],
}

impl Pins {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        })
    }

    fn shard(&self, hash: &ContentHash) -> MutexGuard<'_, HashMap<ContentHash, u32>> {
        let i = usize::from(hash.0[0]) % SHARDS;
        // A poisoned shard only means another thread panicked mid-update of a
        // counter map; the counts themselves are still consistent.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins `hash` until the guard is dropped.
    pub fn pin(self: &Arc<Self>, hash: ContentHash) -> PinGuard {
        *self.shard(&hash).entry(hash).or_insert(0) += 1;
        PinGuard {
            pins: Arc::clone(self),
            hash,
        }
    }

    /// Runs `f` with `hash` known to be unpinned, holding off new pins of it
    /// until `f` returns. Returns `None` (without calling `f`) if pinned.
    pub fn if_unpinned<T>(&self, hash: &ContentHash, f: impl FnOnce() -> T) -> Option<T> {
        let shard = self.shard(hash);
        if shard.contains_key(hash) {
            return None;
        }
        let out = f();
        drop(shard);
        Some(out)
    }

    pub fn count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }
}

/// Holds one pin on a chunk.
pub struct PinGuard {
    pins: Arc<Pins>,
    hash: ContentHash,
}

impl PinGuard {
    pub fn hash(&self) -> &ContentHash {
        &self.hash
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        let mut shard = self.pins.shard(&self.hash);
        if let Some(n) = shard.get_mut(&self.hash) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.hash);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_nest_and_block_gc() {
        let pins = Pins::new();
        let h = ContentHash::of(b"x");
        let a = pins.pin(h);
        let b = pins.pin(h);
        assert_eq!(pins.if_unpinned(&h, || ()), None);
        drop(a);
        assert_eq!(pins.if_unpinned(&h, || ()), None);
        drop(b);
        assert_eq!(pins.if_unpinned(&h, || 7), Some(7));
        assert_eq!(pins.count(), 0);
    }
}
