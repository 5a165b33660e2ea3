//! BLAKE3 of a file's bytes worked out while a handle writes it from the
//! start, so closing needs no second read of everything just written.
//!
//! A client keeps several writes in flight on their own streams, and they
//! reach the node in any order: a write past the hashed prefix is held (a
//! view of its buffer, no copy) until the gap before it fills. Anything
//! else that would make the hash differ from the bytes (a write into the
//! hashed prefix or over a held write, a truncate elsewhere, too much held)
//! gives it up, and closing reads the file back as before.
//!
//! Until a flush, held writes are also unflushed writes, counted in the
//! node's write buffers. After it they are held here alone, so then they
//! count against a budget of their own, shared by all handles of a node.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::ContentHash;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most bytes held past the hashed prefix: a client keeps four 4 MiB
/// writes in flight, so in-order uploads need at most 12 MiB. A writer
/// leaving gaps reaches it soon and its file is read back at close; the
/// held bytes (kept past the flush that stored them) stay bounded.
const AHEAD_BYTES_MAX: usize = 16 << 20;
/// Most bytes all running hashes of a node hold past their flushes: eight
/// uploads' worth. Past it a hash gives up and that file is read back at
/// close.
pub const NODE_AHEAD_BYTES_MAX: usize = 8 * AHEAD_BYTES_MAX;

pub struct RunningHash {
    hasher: blake3::Hasher,
    /// One past the last byte hashed.
    at: u64,
    /// Writes past `at`, by offset, not overlapping each other, each with
    /// its share of the node's budget once a flush has stored it.
    ahead: BTreeMap<u64, (Bytes, Option<OwnedSemaphorePermit>)>,
    ahead_bytes: usize,
    budget: Arc<Semaphore>,
}

impl RunningHash {
    /// The hash of an empty file, ready for writes from offset 0; writes
    /// held past a flush take their room from `budget`.
    pub fn new(budget: Arc<Semaphore>) -> Self {
        Self {
            hasher: blake3::Hasher::new(),
            at: 0,
            ahead: BTreeMap::new(),
            ahead_bytes: 0,
            budget,
        }
    }

    /// Takes a write of `data` at `off`; false when the hash can no longer
    /// follow the file.
    #[must_use]
    pub fn write(&mut self, off: u64, data: &Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        if off < self.at || self.overlaps_ahead(off, off + data.len() as u64) {
            return false;
        }
        if off > self.at {
            self.ahead_bytes += data.len();
            self.ahead.insert(off, (data.clone(), None));
            return self.ahead_bytes <= AHEAD_BYTES_MAX;
        }
        self.hasher.update(data);
        self.at += data.len() as u64;
        while let Some(next) = self.ahead.first_entry().filter(|e| *e.key() == self.at) {
            let (d, _room) = next.remove();
            self.ahead_bytes -= d.len();
            self.hasher.update(&d);
            self.at += d.len() as u64;
        }
        true
    }

    /// At most the bytes a write of `len` at `off` would hash now: none if
    /// it is held (or refused), else it and what is held.
    pub fn would_hash(&self, off: u64, len: usize) -> usize {
        if off != self.at {
            return 0;
        }
        len + self.ahead_bytes
    }

    /// Charges the node's budget for the held writes a flush just stored
    /// (the flush let their write buffer go); false when there is no room
    /// and the hash must be given up.
    #[must_use]
    pub fn flushed(&mut self) -> bool {
        for (d, room) in self.ahead.values_mut().filter(|(_, r)| r.is_none()) {
            let n = u32::try_from(d.len()).unwrap_or(u32::MAX);
            match Arc::clone(&self.budget).try_acquire_many_owned(n) {
                Ok(p) => *room = Some(p),
                Err(_) => return false,
            }
        }
        true
    }

    /// Takes a truncate (or extend) to `size`; false when the hash can no
    /// longer follow the file.
    #[must_use]
    pub fn truncate(&self, size: u64) -> bool {
        size == self.at && self.ahead.is_empty()
    }

    /// The hash, if it covers exactly a file of `size` bytes.
    pub fn finish(&self, size: u64) -> Option<ContentHash> {
        (self.at == size && self.ahead.is_empty())
            .then(|| ContentHash(*self.hasher.finalize().as_bytes()))
    }

    fn overlaps_ahead(&self, off: u64, end: u64) -> bool {
        // Held writes do not overlap each other, so the last one starting
        // before `end` is the only one that can reach past `off`.
        self.ahead
            .range(..end)
            .next_back()
            .is_some_and(|(s, (d, _))| s + d.len() as u64 > off)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash() -> RunningHash {
        RunningHash::new(Arc::new(Semaphore::new(NODE_AHEAD_BYTES_MAX)))
    }

    fn bytes(n: usize, seed: u8) -> Bytes {
        Bytes::from(
            (0..n)
                .map(|i| (i as u8).wrapping_mul(31) ^ seed)
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn in_order_writes_hash_to_the_file() {
        let (a, b) = (bytes(1000, 1), bytes(500, 2));
        let mut h = hash();
        assert!(h.write(0, &a) && h.write(1000, &b));
        let whole = [&a[..], &b[..]].concat();
        assert_eq!(h.finish(1500), Some(ContentHash::of(&whole)));
        assert_eq!(h.finish(1400), None);
    }

    #[test]
    fn writes_out_of_order_wait_for_the_gap() {
        let parts: Vec<Bytes> = (0..4).map(|i| bytes(100, i)).collect();
        let mut h = hash();
        for i in [2usize, 3, 1] {
            assert!(h.write(i as u64 * 100, &parts[i]));
        }
        assert_eq!(h.finish(400), None, "the first 100 bytes are missing");
        assert!(h.write(0, &parts[0]));
        assert_eq!(h.finish(400), Some(ContentHash::of(&parts.concat())));
    }

    #[test]
    fn rewriting_what_was_written_gives_up() {
        let mut h = hash();
        assert!(h.write(0, &bytes(100, 0)));
        assert!(!h.write(50, &bytes(10, 1)), "into the hashed prefix");
        let mut h = hash();
        assert!(h.write(200, &bytes(100, 0)));
        assert!(!h.write(250, &bytes(100, 1)), "over a held write");
        let mut h = hash();
        assert!(h.write(200, &bytes(100, 0)));
        assert!(
            !h.write(150, &bytes(100, 1)),
            "over the start of a held write"
        );
    }

    #[test]
    fn truncates_keep_the_hash_only_at_its_end() {
        let mut h = hash();
        assert!(h.write(0, &bytes(100, 0)));
        assert!(h.truncate(100));
        assert!(!h.truncate(99));
        assert!(h.write(300, &bytes(10, 0)));
        assert!(!h.truncate(100), "a held write lies past it");
    }

    #[test]
    fn holding_too_much_gives_up() {
        let mut h = hash();
        let big = Bytes::from(vec![0u8; AHEAD_BYTES_MAX]);
        assert!(h.write(1, &big));
        assert!(!h.write(1 + big.len() as u64, &bytes(1, 0)));
    }

    #[test]
    fn writes_held_past_a_flush_share_the_node_budget_until_the_gap_fills() {
        let budget = Arc::new(Semaphore::new(300));
        let mut a = RunningHash::new(Arc::clone(&budget));
        let mut b = RunningHash::new(Arc::clone(&budget));
        assert!(a.write(100, &bytes(200, 0)));
        assert_eq!(budget.available_permits(), 300, "unflushed: not charged");
        assert!(a.flushed());
        assert_eq!(budget.available_permits(), 100);
        assert!(a.flushed(), "charged once");
        assert!(b.write(100, &bytes(200, 1)));
        assert!(!b.flushed(), "the node's budget is used up");
        assert!(a.write(0, &bytes(100, 2)), "the gap fills");
        assert_eq!(budget.available_permits(), 300, "hashed bytes are let go");
        let mut c = RunningHash::new(Arc::clone(&budget));
        assert!(c.write(50, &bytes(250, 3)) && c.flushed());
        drop(c);
        assert_eq!(budget.available_permits(), 300, "a dropped hash lets go");
    }

    proptest! {
        /// Whatever order disjoint pieces arrive in, the hash is the
        /// file's once all have come.
        #[test]
        fn any_arrival_order_hashes_the_same(
            lens in proptest::collection::vec(1usize..300, 1..12),
            order in any::<proptest::sample::Index>(),
            rotate in 0usize..12,
        ) {
            let mut pieces = Vec::new();
            let mut off = 0u64;
            for (i, n) in lens.iter().enumerate() {
                pieces.push((off, bytes(*n, i as u8)));
                off += *n as u64;
            }
            let whole: Vec<u8> = pieces.iter().flat_map(|(_, d)| d.to_vec()).collect();
            let k = order.index(pieces.len());
            pieces.swap(0, k);
            let r = rotate % pieces.len();
            pieces.rotate_left(r);
            let mut h = hash();
            for (o, d) in &pieces {
                prop_assert!(h.write(*o, d));
            }
            prop_assert_eq!(h.finish(off), Some(ContentHash::of(&whole)));
        }
    }
}
