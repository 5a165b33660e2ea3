//! Which open file an owner's locks on a file go through.
//!
//! The cluster keeps locks per handle and owner. A process may open a file
//! twice and lock through either descriptor, and POSIX makes both one
//! owner, which never conflicts with itself. So the mount sends all of an
//! owner's locks on a file through one open file: the one it first locked
//! through. The choice is made and recorded in one critical section, so
//! two threads locking at once through two descriptors agree on it, and it
//! lasts until the owner's next close(2) of the file, which drops all its
//! locks, or until that open file is released (its handle's close drops
//! its locks on the cluster). Each route has an id of its own, so a
//! request that began on a route that has since been replaced never
//! changes the new one, and a request that was under way when its route
//! ended (another thread's close) knows to set its lock again through a
//! route of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{Errno, FileHandle};

use crate::fs::{OpenFile, Shared};

/// The routes of a mount, by (inode, owner).
#[derive(Default)]
pub struct Routes {
    map: Mutex<HashMap<(u64, u64), Route>>,
    next_id: AtomicU64,
}

struct Route {
    id: u64,
    fh: u64,
    /// False only once everything was unlocked and no lock was set since:
    /// a close(2) then sends nothing.
    may_hold: bool,
    /// Lock requests begun through this route, ever.
    begun: u64,
    /// Lock requests under way.
    running: u32,
}

impl Route {
    fn found(&self, file: Arc<OpenFile>) -> Found {
        Found {
            file,
            may_hold: self.may_hold,
            id: self.id,
            begun: self.begun,
            running: self.running,
        }
    }
}

/// A route as a request found it.
pub struct Found {
    pub file: Arc<OpenFile>,
    pub may_hold: bool,
    id: u64,
    begun: u64,
    /// Lock requests under way when this was found: one may apply after
    /// an unlock sent now, so the unlock cannot say nothing is held.
    running: u32,
}

/// Held while a lock request runs: the route is not marked free meanwhile.
pub struct Running<'a> {
    routes: &'a Routes,
    key: (u64, u64),
    id: u64,
}

impl Routes {
    /// For a lock about to be set by `owner` through `fh` (of `ino`): the
    /// open file it goes through, recorded now if the owner had none on
    /// this file (or had one since released). The route may hold locks from
    /// now on: one whose answer is lost is still released at close.
    pub fn taking(
        &self,
        s: &Shared,
        fh: FileHandle,
        ino: u64,
        owner: u64,
    ) -> Result<(Arc<OpenFile>, Running<'_>), Errno> {
        let mut map = self.map.lock().map_err(|_| Errno::EIO)?;
        let existing = map
            .get(&(ino, owner))
            .and_then(|r| s.open_file(FileHandle(r.fh)).ok());
        let file = match existing {
            Some(f) => f,
            None => {
                let f = s.open_file(fh)?;
                let route = Route {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    fh: fh.0,
                    may_hold: false,
                    begun: 0,
                    running: 0,
                };
                map.insert((ino, owner), route);
                f
            }
        };
        let r = map.get_mut(&(ino, owner)).ok_or(Errno::EIO)?;
        r.may_hold = true;
        r.begun += 1;
        r.running += 1;
        let running = Running {
            routes: self,
            key: (ino, owner),
            id: r.id,
        };
        Ok((file, running))
    }

    /// The route of `owner`'s locks on `ino`, if it has one that is open.
    pub fn find(&self, s: &Shared, ino: u64, owner: u64) -> Option<Found> {
        let map = self.map.lock().ok()?;
        let r = map.get(&(ino, owner))?;
        let file = s.open_file(FileHandle(r.fh)).ok()?;
        Some(r.found(file))
    }

    /// Everything `owner` held on `ino` was unlocked by a request made when
    /// `found` was: nothing is held now, unless a lock was set since or is
    /// still being set.
    pub fn released(&self, ino: u64, owner: u64, found: &Found) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        let Some(r) = map.get_mut(&(ino, owner)) else {
            return;
        };
        let quiet = found.running == 0 && r.running == 0;
        if r.id == found.id && r.begun == found.begun && quiet {
            r.may_hold = false;
        }
    }

    /// Ends `owner`'s route on `ino` (a close(2), which drops all its locks
    /// on the file) and returns it, if its open file is still open: the
    /// caller unlocks through it. Ended before that unlock is sent, so a
    /// request still under way either finished before it (and its lock
    /// goes with the close) or finds its route gone and sets its lock
    /// again through a route of its own (see [`Running::current`]).
    pub fn end(&self, s: &Shared, ino: u64, owner: u64) -> Option<Found> {
        let r = self.map.lock().ok()?.remove(&(ino, owner))?;
        let file = s.open_file(FileHandle(r.fh)).ok()?;
        Some(r.found(file))
    }

    /// The open file `fh` is being released: its handle's close drops
    /// every lock set through it, so the routes through it end. True if
    /// one of them may hold locks (a BSD lock goes this way, at the open
    /// file's last close).
    pub fn forget(&self, fh: u64) -> bool {
        let Ok(mut map) = self.map.lock() else {
            return true;
        };
        let held = map.values().any(|r| r.fh == fh && r.may_hold);
        map.retain(|_, r| r.fh != fh);
        held
    }
}

impl Running<'_> {
    /// False once the route this request began on has ended (a close(2)
    /// of the owner's, or the release of its open file): what the request
    /// set through it is dropped, or soon will be.
    pub fn current(&self) -> bool {
        self.routes
            .map
            .lock()
            .is_ok_and(|map| map.get(&self.key).is_some_and(|r| r.id == self.id))
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Ok(mut map) = self.routes.map.lock()
            && let Some(r) = map.get_mut(&self.key)
            && r.id == self.id
        {
            r.running = r.running.saturating_sub(1);
        }
    }
}
