//! Recently read chunks, verified, kept in memory up to a byte budget.
//!
//! Chunks are named by their content, so a cached chunk can never be
//! stale: the cache only saves the disk read and the BLAKE3 check that
//! small random reads would otherwise pay for a whole 4 MiB chunk each.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cairn_proto::ContentHash;

pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<ContentHash, (Arc<Vec<u8>>, u64)>,
    /// Last use -> chunk, oldest first.
    order: BTreeMap<u64, ContentHash>,
    bytes: usize,
    tick: u64,
}

impl ChunkCache {
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn get(&self, hash: &ContentHash) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let (data, used) = inner.map.get_mut(hash)?;
        inner.order.remove(used);
        *used = tick;
        inner.order.insert(tick, *hash);
        Some(Arc::clone(data))
    }

    /// Keeps a verified chunk, dropping the least recently used ones.
    pub fn insert(&self, hash: ContentHash, data: Arc<Vec<u8>>) {
        if data.len() > self.budget {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *g;
        inner.tick += 1;
        let tick = inner.tick;
        let len = data.len();
        if let Some((old, used)) = inner.map.insert(hash, (data, tick)) {
            inner.order.remove(&used);
            inner.bytes -= old.len();
        }
        inner.order.insert(tick, hash);
        inner.bytes += len;
        while inner.bytes > self.budget {
            let Some((_, oldest)) = inner.order.pop_first() else {
                break;
            };
            if let Some((old, _)) = inner.map.remove(&oldest) {
                inner.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_most_recently_used_within_budget() {
        let c = ChunkCache::new(10);
        let h = |i: u8| ContentHash([i; 32]);
        c.insert(h(1), Arc::new(vec![1; 4]));
        c.insert(h(2), Arc::new(vec![2; 4]));
        assert!(c.get(&h(1)).is_some());
        c.insert(h(3), Arc::new(vec![3; 4]));
        assert!(c.get(&h(2)).is_none(), "the least recently used goes");
        assert_eq!(c.get(&h(1)).as_deref(), Some(&vec![1; 4]));
        assert!(c.get(&h(3)).is_some());
        c.insert(h(4), Arc::new(vec![4; 11]));
        assert!(c.get(&h(4)).is_none(), "larger than the whole budget");
    }
}
