//! Recently read chunks, verified, kept in memory up to a byte budget.
//!
//! Chunks are named by their content, so a cached chunk can never be
//! stale: the cache only saves the disk read and the BLAKE3 check that
//! small random reads would otherwise pay for a whole 4 MiB chunk each.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use cairn_proto::ContentHash;
use tokio::sync::OnceCell;

pub struct ChunkCache {
    budget: usize,
    inner: Mutex<Inner>,
    /// Chunks being read and verified right now, so that readers asking
    /// for one at the same time share a single load.
    loading: Mutex<HashMap<ContentHash, Arc<Loading>>>,
}

/// One chunk's load, shared by the readers waiting for it.
type Loading = OnceCell<Arc<Vec<u8>>>;

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
            loading: Mutex::new(HashMap::new()),
        }
    }

    /// The chunk from the cache, or from `load` (which reads and verifies
    /// it) run once however many readers ask at the same time: the
    /// kernel's read-ahead on a mount asks for one chunk four times at
    /// once (1 MiB reads of a 4 MiB chunk), and each reader used to read
    /// and hash all of it.
    pub async fn get_or_load<F, Fut, E>(
        &self,
        hash: ContentHash,
        load: F,
    ) -> Result<Arc<Vec<u8>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        if let Some(data) = self.get(&hash) {
            return Ok(data);
        }
        let cell = {
            let mut l = self.loading.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(l.entry(hash).or_default())
        };
        let r = cell
            .get_or_try_init(|| async {
                let data = Arc::new(load().await?);
                self.insert(hash, Arc::clone(&data));
                Ok(data)
            })
            .await
            .map(Arc::clone);
        let mut l = self.loading.lock().unwrap_or_else(|p| p.into_inner());
        if l.get(&hash).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            l.remove(&hash);
        }
        r
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn readers_at_the_same_time_share_one_load() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let c = Arc::new(ChunkCache::new(100));
        let loads = Arc::new(AtomicUsize::new(0));
        let h = ContentHash([7; 32]);
        let readers: Vec<_> = (0..4)
            .map(|_| {
                let (c, loads) = (Arc::clone(&c), Arc::clone(&loads));
                tokio::spawn(async move {
                    c.get_or_load(h, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        Ok::<_, ()>(vec![7; 8])
                    })
                    .await
                })
            })
            .collect();
        for r in readers {
            assert_eq!(r.await.unwrap().unwrap().as_slice(), &[7; 8]);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        // A failed load is not kept: the next reader tries again.
        let other = ContentHash([8; 32]);
        assert!(
            c.get_or_load(other, || async { Err::<Vec<u8>, _>(()) })
                .await
                .is_err()
        );
        let again = c
            .get_or_load(other, || async { Ok::<_, ()>(vec![8]) })
            .await;
        assert_eq!(again.unwrap().as_slice(), &[8]);
    }
}
