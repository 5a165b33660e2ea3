//! Reads through uncommitted writes.
//!
//! `apply` runs many commands into one write batch (group commit). Each command
//! must see the effects of the commands before it in the same batch, so reads
//! go through an [`Overlay`] of pending puts and deletes over the store.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::store::StoreError;

/// What `apply` needs from the state it reads.
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The first existing key in `[start, end)`.
    fn first_key_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
}

/// Every key in `[prefix, prefix_end)`.
pub fn keys_under<R: KvRead + ?Sized>(tx: &R, prefix: &[u8]) -> Result<Vec<Vec<u8>>, StoreError> {
    let end = super::keys::prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut out = Vec::new();
    while let Some(key) = tx.first_key_in(&start, &end)? {
        start = key.clone();
        start.push(0);
        out.push(key);
    }
    Ok(out)
}

/// How many keys are under `prefix`, counting up to `max` at most.
pub fn count_under<R: KvRead + ?Sized>(
    tx: &R,
    prefix: &[u8],
    max: usize,
) -> Result<usize, StoreError> {
    let end = super::keys::prefix_end(prefix);
    let mut start = prefix.to_vec();
    let mut n = 0;
    while n < max
        && let Some(key) = tx.first_key_in(&start, &end)?
    {
        n += 1;
        start = key;
        start.push(0);
    }
    Ok(n)
}

/// Pending writes over a base: `Some(value)` is a put, `None` a delete.
pub struct Overlay<'a, R: KvRead + ?Sized> {
    base: &'a R,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a, R: KvRead + ?Sized> Overlay<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Self {
            base,
            pending: BTreeMap::new(),
        }
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.pending.insert(key, None);
    }

    /// The pending writes, in key order.
    pub fn into_pending(self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.pending
    }

    /// Adds writes made on top of this overlay (a command that succeeded).
    pub fn absorb(&mut self, writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>) {
        self.pending.extend(writes);
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

impl<R: KvRead + ?Sized> KvRead for Overlay<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.pending.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn first_key_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        let pending_first = self
            .pending
            .range::<[u8], _>(range)
            .find(|(_, v)| v.is_some())
            .map(|(k, _)| k.clone());
        // Skip base keys this overlay deleted; each skip consumes one pending
        // delete, so the loop is bounded by the overlay's size.
        let mut cursor = start.to_vec();
        let base_first = loop {
            match self.base.first_key_in(&cursor, end)? {
                Some(k) if matches!(self.pending.get(&k), Some(None)) => {
                    cursor = k;
                    cursor.push(0);
                }
                other => break other,
            }
        };
        Ok(match (pending_first, base_first) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }
}

/// A plain in-memory map, for unit tests of `apply`.
#[cfg(test)]
impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn first_key_in(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let range = (Bound::Included(start), Bound::Excluded(end));
        Ok(self.range::<[u8], _>(range).next().map(|(k, _)| k.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_hides_deletes_and_shows_puts() {
        let mut base = BTreeMap::new();
        for k in [b"a1", b"a2", b"a3"] {
            base.insert(k.to_vec(), b"x".to_vec());
        }
        let mut o = Overlay::new(&base);
        o.delete(b"a1".to_vec());
        o.delete(b"a2".to_vec());
        assert_eq!(o.first_key_in(b"a", b"b").unwrap(), Some(b"a3".to_vec()));
        o.delete(b"a3".to_vec());
        assert_eq!(o.first_key_in(b"a", b"b").unwrap(), None);
        o.put(b"a25".to_vec(), b"y".to_vec());
        assert_eq!(o.first_key_in(b"a", b"b").unwrap(), Some(b"a25".to_vec()));
        assert_eq!(o.get(b"a1").unwrap(), None);
        assert_eq!(o.get(b"a25").unwrap(), Some(b"y".to_vec()));

        let mut top = Overlay::new(&o);
        top.put(b"a0".to_vec(), b"z".to_vec());
        assert_eq!(top.first_key_in(b"a", b"b").unwrap(), Some(b"a0".to_vec()));
    }
}
