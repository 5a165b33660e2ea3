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
//! changes the new one.
//!
//! A close ends a route in two steps: the route is marked ending, the
//! unlock goes through it, and only then is it gone (or, if the unlock
//! failed, back in use, so the locks it still holds stay reachable). New
//! requests of the owner wait out those steps: through a route of their
//! own meanwhile they would conflict with the locks being dropped. A
//! request that was under way when its route began to end knows it (see
//! [`Running::current`]) and sets its lock again once the end is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fuser::{Errno, FileHandle};
use tokio::sync::Notify;

use crate::fs::{OpenFile, Shared};

/// The routes of a mount, by (inode, owner).
#[derive(Default)]
pub struct Routes {
    map: Mutex<HashMap<(u64, u64), Route>>,
    next_id: AtomicU64,
    /// Woken when a route's end is done (or undone).
    ended: Notify,
    /// See [`Routes::stray`].
    strays: Mutex<HashMap<(u64, u64), Strays>>,
}

/// Open files one owner's locks on one file may stray on.
type Strays = Vec<Arc<OpenFile>>;

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
    /// A close is unlocking everything through it.
    ending: bool,
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
    /// this file (or had one since released); waits while a close is
    /// ending the owner's route. The route may hold locks from now on: one
    /// whose answer is lost is still released at close.
    pub async fn taking(
        &self,
        s: &Shared,
        fh: FileHandle,
        ino: u64,
        owner: u64,
    ) -> Result<(Arc<OpenFile>, Running<'_>), Errno> {
        self.unless_ending(|| self.take_route(s, fh, ino, owner))
            .await
    }

    /// Tries `look` until it gives an answer (`None`: the route is ending),
    /// waiting for an end to be done or undone between tries.
    async fn unless_ending<T>(
        &self,
        look: impl Fn() -> Result<Option<T>, Errno>,
    ) -> Result<T, Errno> {
        loop {
            // Registered before the look, so an end done in between still
            // wakes this wait.
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if let Some(answer) = look()? {
                return Ok(answer);
            }
            ended.await;
        }
    }

    /// [`Routes::taking`]'s critical section; `None` while the route is
    /// ending.
    fn take_route(
        &self,
        s: &Shared,
        fh: FileHandle,
        ino: u64,
        owner: u64,
    ) -> Result<Option<(Arc<OpenFile>, Running<'_>)>, Errno> {
        let mut map = self.map.lock().map_err(|_| Errno::EIO)?;
        let existing = match map.get(&(ino, owner)) {
            Some(r) if r.ending => return Ok(None),
            Some(r) => s.open_file(FileHandle(r.fh)).ok(),
            None => None,
        };
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
                    ending: false,
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
        Ok(Some((file, running)))
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

    /// Begins to end `owner`'s route on `ino` (a close(2), which drops all
    /// its locks on the file) and returns it, if its open file is still
    /// open: the caller unlocks through it, then calls [`Routes::ended`].
    /// Marked before that unlock is sent, so a request still under way
    /// either finished before it (and its lock goes with the close) or
    /// finds its route ending and sets its lock again afterwards. Waits
    /// while another close is ending it: if that close's unlock fails,
    /// this one tries again.
    pub async fn end(&self, s: &Shared, ino: u64, owner: u64) -> Option<Found> {
        let look = || {
            let mut map = self.map.lock().map_err(|_| Errno::EIO)?;
            let Some(r) = map.get_mut(&(ino, owner)) else {
                return Ok(Some(None));
            };
            if r.ending {
                return Ok(None);
            }
            match s.open_file(FileHandle(r.fh)) {
                Ok(file) => {
                    r.ending = true;
                    Ok(Some(Some(r.found(file))))
                }
                Err(_) => {
                    map.remove(&(ino, owner));
                    Ok(Some(None))
                }
            }
        };
        self.unless_ending(look).await.ok().flatten()
    }

    /// Records that `owner`'s locks on `ino` may also be held through
    /// `file`, which no route leads to: a request's route ended under it
    /// and dropping what it may have set there failed. The owner's unlocks,
    /// its later locks (which replace what it held of their range) and its
    /// next close go through it too, until an unlock of the whole file
    /// there succeeds or the open file is released (its handle's close
    /// takes them).
    pub fn stray(&self, ino: u64, owner: u64, file: Arc<OpenFile>) {
        if let Ok(mut strays) = self.strays.lock() {
            let of_owner = strays.entry((ino, owner)).or_default();
            if !of_owner.iter().any(|f| Arc::ptr_eq(f, &file)) {
                of_owner.push(file);
            }
        }
    }

    /// The open files `owner`'s locks on `ino` may stray on.
    pub fn strays(&self, ino: u64, owner: u64) -> Vec<Arc<OpenFile>> {
        self.strays
            .lock()
            .ok()
            .and_then(|strays| strays.get(&(ino, owner)).cloned())
            .unwrap_or_default()
    }

    /// Everything `owner` held on `ino` through `file` is unlocked.
    pub fn stray_dropped(&self, ino: u64, owner: u64, file: &Arc<OpenFile>) {
        if let Ok(mut strays) = self.strays.lock()
            && let Some(of_owner) = strays.get_mut(&(ino, owner))
        {
            of_owner.retain(|f| !Arc::ptr_eq(f, file));
            if of_owner.is_empty() {
                strays.remove(&(ino, owner));
            }
        }
    }

    /// The close's unlock through `found` is done: the route is gone if it
    /// `unlocked`, else back in use (its locks are still held through it,
    /// and the owner's next close tries again).
    pub fn ended(&self, ino: u64, owner: u64, found: &Found, unlocked: bool) {
        if let Ok(mut map) = self.map.lock()
            && let Some(r) = map.get_mut(&(ino, owner))
            && r.id == found.id
        {
            if unlocked {
                map.remove(&(ino, owner));
            } else {
                r.ending = false;
            }
        }
        self.ended.notify_waiters();
    }

    /// The open file `fh` (`file`) is being released: its handle's close
    /// drops every lock set through it, so the routes through it end, and
    /// it is no one's stray any more. True if one of the routes may hold
    /// locks (a BSD lock goes this way, at the open file's last close).
    pub fn forget(&self, fh: u64, file: &Arc<OpenFile>) -> bool {
        if let Ok(mut strays) = self.strays.lock() {
            strays.retain(|_, of_owner| {
                of_owner.retain(|f| !Arc::ptr_eq(f, file));
                !of_owner.is_empty()
            });
        }
        let Ok(mut map) = self.map.lock() else {
            return true;
        };
        let held = map.values().any(|r| r.fh == fh && r.may_hold);
        map.retain(|_, r| r.fh != fh);
        drop(map);
        self.ended.notify_waiters();
        held
    }
}

impl Running<'_> {
    /// False once the route this request began on is ending or gone (a
    /// close(2) of the owner's, or the release of its open file): what
    /// the request set through it may be dropped by that close, or may
    /// outlive it on the open file, which no route leads to any more.
    pub fn current(&self) -> bool {
        self.routes.map.lock().is_ok_and(|map| {
            map.get(&self.key)
                .is_some_and(|r| r.id == self.id && !r.ending)
        })
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
