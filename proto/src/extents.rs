//! Written-but-not-flushed bytes of one handle: non-overlapping extents,
//! the latest write winning where writes overlap. A node keeps a handle's
//! writes in one until they are flushed; a client merges its unflushed
//! writes into one before sending them again after a failover.
//!
//! Extents are views of the writes' own buffers: a write is kept and cut
//! without copying its bytes.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

#[derive(Default, Debug)]
pub struct Extents {
    map: BTreeMap<u64, Bytes>,
    bytes: usize,
}

impl Extents {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// One past the last byte written, if anything was.
    pub fn end(&self) -> Option<u64> {
        self.map.iter().next_back().map(|(s, d)| s + d.len() as u64)
    }

    pub fn insert(&mut self, off: u64, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let end = off + data.len() as u64;
        self.cut(off, end);
        self.bytes += data.len();
        self.map.insert(off, data);
    }

    /// Forgets everything at or after `size` (a truncate).
    pub fn truncate(&mut self, size: u64) {
        self.cut(size, u64::MAX);
    }

    /// Removes `[off, end)`, keeping the parts of extents outside it.
    fn cut(&mut self, off: u64, end: u64) {
        let overlapping: Vec<u64> = self
            .map
            .range(..end)
            .rev()
            .take_while(|(s, d)| **s + d.len() as u64 > off)
            .map(|(s, _)| *s)
            .collect();
        for s in overlapping {
            let Some(d) = self.map.remove(&s) else {
                continue;
            };
            self.bytes -= d.len();
            let d_end = s + d.len() as u64;
            if d_end > end {
                let tail = d.slice((end - s) as usize..);
                self.bytes += tail.len();
                self.map.insert(end, tail);
            }
            if s < off {
                let head = d.slice(..(off - s) as usize);
                self.bytes += head.len();
                self.map.insert(s, head);
            }
        }
    }

    /// Copies what was written inside `[off, off + buf.len())` over `buf`.
    pub fn overlay(&self, off: u64, buf: &mut [u8]) {
        let end = off + buf.len() as u64;
        for (s, d) in self
            .map
            .range(..end)
            .rev()
            .take_while(|(s, d)| **s + d.len() as u64 > off)
        {
            let from = off.max(*s);
            let to = end.min(s + d.len() as u64);
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&d[(from - s) as usize..(to - s) as usize]);
        }
    }

    /// The bytes of `[off, end)` when writes cover all of it: a view of
    /// one write's buffer when a single write spans it, else a copy.
    pub fn gather(&self, off: u64, end: u64) -> Option<Bytes> {
        self.views(off, end).map(join)
    }

    /// Views of the writes that make up `[off, end)`, in order, when they
    /// cover all of it. Nothing is copied: a caller that needs one buffer
    /// can join them when it is ready to pay for it.
    pub fn views(&self, off: u64, end: u64) -> Option<Vec<Bytes>> {
        if !self.covers(off, end) {
            return None;
        }
        let first = self.map.range(..=off).next_back().map_or(off, |(s, _)| *s);
        let views = self
            .map
            .range(first..end)
            .filter(|(s, d)| **s + d.len() as u64 > off)
            .map(|(s, d)| {
                let from = off.max(*s) - s;
                let to = end.min(s + d.len() as u64) - s;
                d.slice(from as usize..to as usize)
            })
            .collect();
        Some(views)
    }

    /// The written bytes as runs of at most `max` contiguous bytes, in
    /// offset order: what a client sends again so that the node ends up
    /// with what all the writes, in their order, would have left.
    pub fn runs(&self, max: usize) -> Vec<(u64, Bytes)> {
        let max = max.max(1);
        let mut out = Vec::new();
        let mut run = BytesMut::new();
        let mut start = 0u64;
        for (&s, d) in &self.map {
            let (mut at, mut d) = (s, &d[..]);
            while !d.is_empty() {
                if !run.is_empty() && (start + run.len() as u64 != at || run.len() == max) {
                    out.push((start, run.split().freeze()));
                }
                if run.is_empty() {
                    start = at;
                }
                let take = (max - run.len()).min(d.len());
                run.extend_from_slice(&d[..take]);
                d = &d[take..];
                at += take as u64;
            }
        }
        if !run.is_empty() {
            out.push((start, run.freeze()));
        }
        out
    }

    /// True if some write touches `[off, end)`.
    pub fn touches(&self, off: u64, end: u64) -> bool {
        self.map
            .range(..end)
            .next_back()
            .is_some_and(|(s, d)| s + d.len() as u64 > off)
    }

    /// True if writes cover every byte of `[off, end)`.
    pub fn covers(&self, off: u64, end: u64) -> bool {
        let mut at = off;
        for (s, d) in self.map.range(..end) {
            let d_end = s + d.len() as u64;
            if d_end <= at {
                continue;
            }
            if *s > at {
                return false;
            }
            at = d_end;
            if at >= end {
                return true;
            }
        }
        at >= end
    }

    /// Writes made after `older` was taken win over it: `self` is newer.
    pub fn absorb_older(&mut self, older: Extents) {
        let newer = std::mem::replace(self, older);
        for (s, d) in newer.map {
            self.insert(s, d);
        }
    }
}

/// `pieces` as one buffer: the piece itself when there is only one.
pub fn join(mut pieces: Vec<Bytes>) -> Bytes {
    if pieces.len() == 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut buf = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
    for p in &pieces {
        buf.extend_from_slice(p);
    }
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Against a plain byte array: any sequence of writes and truncates
        /// reads back the same, and the byte count is what is held.
        #[test]
        fn matches_a_byte_array(ops in proptest::collection::vec((0u64..200, 0usize..50, any::<u8>(), any::<bool>()), 1..40)) {
            let mut model = vec![None::<u8>; 300];
            let mut ext = Extents::default();
            for (off, len, byte, truncate) in ops {
                if truncate {
                    ext.truncate(off);
                    for b in &mut model[off as usize..] { *b = None; }
                } else {
                    ext.insert(off, Bytes::from(vec![byte; len]));
                    for b in &mut model[off as usize..off as usize + len] { *b = Some(byte); }
                }
            }
            let mut buf = vec![0xEE; 300];
            ext.overlay(0, &mut buf);
            for (i, m) in model.iter().enumerate() {
                prop_assert_eq!(buf[i], m.unwrap_or(0xEE), "byte {}", i);
            }
            prop_assert_eq!(ext.bytes(), model.iter().filter(|b| b.is_some()).count());
            // Runs: in order, apart, at most 7 bytes, together the same bytes.
            let mut replay = vec![0xEE; 300];
            let mut end = 0;
            for (at, run) in ext.runs(7) {
                prop_assert!(at >= end && !run.is_empty() && run.len() <= 7);
                replay[at as usize..at as usize + run.len()].copy_from_slice(&run);
                end = at + run.len() as u64;
            }
            prop_assert_eq!(&replay, &buf);
            for a in (0..300u64).step_by(7) {
                for b in (a + 1..300).step_by(11) {
                    let written = model[a as usize..b as usize].iter().filter(|x| x.is_some()).count();
                    prop_assert_eq!(ext.touches(a, b), written > 0);
                    prop_assert_eq!(ext.covers(a, b), written == (b - a) as usize);
                    match ext.gather(a, b) {
                        Some(g) => prop_assert_eq!(&g[..], &buf[a as usize..b as usize]),
                        None => prop_assert!(written < (b - a) as usize),
                    }
                    if let Some(views) = ext.views(a, b) {
                        prop_assert!(views.iter().all(|v| !v.is_empty()));
                        prop_assert_eq!(views.concat(), buf[a as usize..b as usize].to_vec());
                    }
                }
            }
        }
    }

    #[test]
    fn runs_join_adjacent_writes_up_to_the_limit() {
        let mut ext = Extents::default();
        for (at, byte) in [(8, 3), (0, 1), (4, 2), (20, 4)] {
            ext.insert(at, Bytes::from(vec![byte; 4]));
        }
        let runs: Vec<(u64, Vec<u8>)> = ext
            .runs(10)
            .into_iter()
            .map(|(a, b)| (a, b.to_vec()))
            .collect();
        assert_eq!(
            runs,
            [
                (0, [&[1; 4][..], &[2; 4], &[3; 2]].concat()),
                (10, vec![3; 2]),
                (20, vec![4; 4])
            ]
        );
    }

    #[test]
    fn newer_writes_win_when_merged_back() {
        let mut older = Extents::default();
        older.insert(0, Bytes::from(vec![1; 10]));
        let mut newer = Extents::default();
        newer.insert(5, Bytes::from(vec![2; 10]));
        newer.absorb_older(older);
        let mut buf = vec![0; 15];
        newer.overlay(0, &mut buf);
        assert_eq!(buf, [[1; 5], [2; 5], [2; 5]].concat());
    }
}
