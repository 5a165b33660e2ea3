//! Directory attributes the mount answers getattr with, for up to the
//! attribute TTL.
//!
//! The kernel checks permissions on every directory a path walks through
//! (`default_permissions`) and drops a directory's cached attributes
//! whenever an entry is made in it, so each create in a directory cost a
//! getattr round trip to the cluster. What a create does to its directory
//! is known: its times become the new file's ctime (one command sets
//! both). So the mount keeps directories' attributes for the TTL the
//! kernel would have cached them anyway, moves their times forward on its
//! own creates, and forgets them on any other change it makes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::api::EntryKind;
use cairn_proto::wire::Attr;

/// Most directories remembered; past it, expired ones are dropped.
const MAX_ENTRIES: usize = 4096;

pub struct DirAttrs {
    ttl: Duration,
    map: Mutex<HashMap<u64, (Attr, Instant)>>,
}

impl DirAttrs {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// `ino`'s attributes, if fetched from the cluster less than a TTL ago.
    pub fn get(&self, ino: u64) -> Option<Attr> {
        let map = self.map.lock().ok()?;
        let (a, at) = map.get(&ino)?;
        (at.elapsed() < self.ttl).then(|| a.clone())
    }

    /// Remembers what the cluster just said of directory `ino`.
    pub fn put(&self, ino: u64, a: &Attr) {
        if a.kind != EntryKind::Directory {
            return;
        }
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= MAX_ENTRIES {
                return;
            }
        }
        map.insert(ino, (a.clone(), Instant::now()));
    }

    /// This mount created `child` in `dir` (it did not exist before): the
    /// directory's times are the child's creation time now.
    pub fn created_in(&self, dir: u64, child: &Attr) {
        if let Ok(mut map) = self.map.lock()
            && let Some((a, _)) = map.get_mut(&dir)
        {
            a.mtime_ns = a.mtime_ns.max(child.ctime_ns);
            a.ctime_ns = a.ctime_ns.max(child.ctime_ns);
        }
    }

    /// `ino` changed in a way only the cluster can tell.
    pub fn forget(&self, ino: u64) {
        if let Ok(mut map) = self.map.lock() {
            map.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(mtime_ns: i64) -> Attr {
        Attr {
            name: "d".into(),
            kind: EntryKind::Directory,
            inode: 5,
            size: 0,
            mode: 0o755,
            nlink: 2,
            mtime_ns,
            ctime_ns: mtime_ns,
            etag: None,
        }
    }

    #[test]
    fn directories_are_kept_for_the_ttl_and_follow_creates() {
        let c = DirAttrs::new(Duration::from_millis(200));
        c.put(5, &dir(10));
        let mut file = dir(0);
        file.kind = EntryKind::File;
        c.put(6, &file);
        assert!(c.get(6).is_none(), "only directories are kept");
        file.ctime_ns = 50;
        c.created_in(5, &file);
        let a = c.get(5).unwrap();
        assert_eq!((a.mtime_ns, a.ctime_ns), (50, 50));
        c.forget(5);
        assert!(c.get(5).is_none());
        c.put(5, &dir(10));
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get(5).is_none(), "expired after the TTL");
    }
}
