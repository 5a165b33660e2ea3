//! POSIX (fcntl) and BSD (flock) locks as the protocol's owner locks.
//!
//! The kernel names a lock owner with each request (a process's open
//! files for fcntl, an open file for flock), and the cluster keeps what
//! each owner holds through a handle (`LockRange`): extending a lock,
//! unlocking its middle or turning part of it shared is one atomic step,
//! as fcntl(2) defines it, and it conflicts with every other owner, on
//! this mount or another, across failovers.
//!
//! An owner's locks on a file go through one handle (see [`Routes`]): a
//! process that opened the file twice never conflicts with itself, and its
//! close(2) of either descriptor drops all its locks on the file, as POSIX
//! says.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::wire::{HeldLock, LockKind};
use fuser::{Errno, FileHandle};

use crate::errno::errno;
use crate::fs::{OpenFile, Shared};

mod routes;

use routes::Found;
pub use routes::Routes;

/// One lock request from the kernel (`end` inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

impl Wanted {
    /// The protocol's range: length 0 means "to the end of any file".
    fn range(&self) -> (u64, u64) {
        let len = if self.end >= i64::MAX as u64 {
            0
        } else {
            self.end - self.start + 1
        };
        (self.start, len)
    }

    fn kind(&self) -> LockKind {
        match self.typ {
            libc::F_UNLCK => LockKind::Unlocked,
            libc::F_WRLCK => LockKind::Exclusive,
            _ => LockKind::Shared,
        }
    }
}

/// How long one blocking protocol request waits; F_SETLKW repeats it. Also
/// how long a waiting process's signal may go unanswered (see [`set`]).
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Sets the lock `w` through `fh`'s file; with `sleep`, waits for it until
/// it is free or the waiting thread `tid` has a signal to take.
///
/// fuser answers the kernel's FUSE_INTERRUPT with ENOSYS, and from then on
/// the kernel waits for our answer even when the waiter is killed (it
/// would sit in D state). So the wait goes in slices: each slice ends with
/// a definite answer from the cluster, and if the lock was not taken and
/// the waiter has a signal pending, the call ends with EINTR. No lock is
/// left behind for a caller who gave up: a slice that takes the lock is a
/// success the signal comes after, as on a local file system.
pub async fn set(
    s: &Shared,
    fh: FileHandle,
    w: Wanted,
    sleep: bool,
    tid: u32,
) -> Result<(), Errno> {
    let own = s.open_file(fh)?;
    let kind = w.kind();
    let routed = s
        .lock_routes
        .find(s, own.ino, w.owner)
        .filter(|r| r.may_hold);
    // This descriptor's writes reach the cluster before a new lock is
    // taken, and every descriptor's are flushed before a lock is given up
    // or turned shared: the next holder, perhaps on another machine, must
    // see them (as NFS flushes at unlock).
    own.writes.wait_queued().await;
    let strays = s.lock_routes.strays(own.ino, w.owner);
    match (kind, routed) {
        // Nothing set through this mount: nothing to give up.
        (LockKind::Unlocked, None) if strays.is_empty() => return Ok(()),
        (LockKind::Unlocked, routed) => {
            flush_file(s, own.ino).await;
            let strays = unlock_strays(s, own.ino, w, &strays).await;
            let routed = match routed {
                Some(r) => unlock(s, own.ino, w, &r).await,
                None => Ok(()),
            };
            return routed.and(strays);
        }
        (LockKind::Shared, Some(_)) => flush_file(s, own.ino).await,
        _ => {}
    }
    // A lock set replaces what the owner held of the range, strays
    // included (through the route they would conflict with it). A failure
    // is the route's request to find out.
    let _ = unlock_strays(s, own.ino, w, &strays).await;
    // What a request may have set through a route that ended under it:
    // dropped before the range is asked for through another open file
    // (the owner's locks through two handles would conflict).
    let mut stray: Option<Arc<OpenFile>> = None;
    loop {
        let (f, running) = match s.lock_routes.taking(s, fh, own.ino, w.owner).await {
            Ok(taken) => taken,
            Err(e) => {
                if let Some(old) = stray {
                    let _ = drop_stray(s, own.ino, &old, w).await;
                }
                return Err(e);
            }
        };
        if let Some(old) = stray.take()
            && !Arc::ptr_eq(&old, &f)
        {
            // Asked for through `f` while still set through `old`, it
            // would conflict with itself.
            drop_stray(s, own.ino, &old, w).await?;
        }
        match take(s, &f, &running, w, sleep, tid).await {
            Taken::Answer(r) => return r,
            Taken::RouteEnded { maybe_set } => {
                tracing::debug!(handle = %f.file.handle(), owner = w.owner, maybe_set, "lock route ended under a request; asking again");
                if maybe_set {
                    stray = Some(f);
                }
                if sleep && signal_pending(tid) {
                    if let Some(old) = stray {
                        let _ = drop_stray(s, own.ino, &old, w).await;
                    }
                    return Err(Errno::EINTR);
                }
            }
        }
    }
}

/// How a lock request through one route ended.
enum Taken {
    Answer(Result<(), Errno>),
    /// The route ended while the request ran (a close(2) of the owner's,
    /// or the release of its open file); `maybe_set` unless the cluster
    /// refused the lock (an answer lost on the way may hide one it set).
    RouteEnded {
        maybe_set: bool,
    },
}

/// Sets `w` through the route's open file `f`, in slices if `sleep`.
async fn take(
    s: &Shared,
    f: &OpenFile,
    running: &routes::Running<'_>,
    w: Wanted,
    sleep: bool,
    tid: u32,
) -> Taken {
    loop {
        let wait = if sleep { WAIT_SLICE } else { Duration::ZERO };
        let r = f.file.lock_range(w.owner, w.range(), w.kind(), wait).await;
        tracing::debug!(handle = %f.file.handle(), ino = f.ino, owner = w.owner, start = w.start, end = w.end, kind = ?w.kind(), sleep, ok = r.is_ok(), "lock");
        if !running.current() {
            let refused = matches!(&r, Err(e) if errno(e) == Errno::EAGAIN);
            return Taken::RouteEnded {
                maybe_set: !refused,
            };
        }
        match r {
            Ok(()) => {
                drop_cache(s, f.ino).await;
                return Taken::Answer(Ok(()));
            }
            Err(e) if sleep && errno(&e) == Errno::EAGAIN => {
                if signal_pending(tid) {
                    tracing::debug!(handle = %f.file.handle(), owner = w.owner, tid, "lock wait interrupted");
                    return Taken::Answer(Err(Errno::EINTR));
                }
            }
            Err(e) => return Taken::Answer(Err(lock_errno(&e))),
        }
    }
}

/// Unlocks `w`'s range through `f`, which no route leads to any more, in
/// case a request set it there. A handle already closed took its locks
/// with it. If this fails, the lock may still be held through `f`: it is
/// recorded as a stray, which the owner's unlocks, later locks and next
/// close go through too.
async fn drop_stray(s: &Shared, ino: u64, f: &Arc<OpenFile>, w: Wanted) -> Result<(), Errno> {
    let r = f
        .file
        .lock_range(w.owner, w.range(), LockKind::Unlocked, Duration::ZERO)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if closed(&e) => Ok(()),
        Err(e) => {
            tracing::warn!(handle = %f.file.handle(), owner = w.owner, error = %e, "dropping a lock set through an ended route failed; kept as a stray");
            s.lock_routes.stray(ino, w.owner, Arc::clone(f));
            // Recorded first, then checked: an open file released in
            // between (whose handle's close takes its locks) is not kept,
            // and one released after is dropped by its release.
            if !s.is_open(f) {
                s.lock_routes.stray_dropped(ino, w.owner, f);
            }
            Err(lock_errno(&e))
        }
    }
}

/// Unlocks `w`'s range through each of the owner's strays (see
/// [`Routes::stray`]); one unlocked whole is a stray no more. Returns
/// the first failure (the stray stays, for the next unlock or close).
async fn unlock_strays(
    s: &Shared,
    ino: u64,
    w: Wanted,
    strays: &[Arc<OpenFile>],
) -> Result<(), Errno> {
    let mut first = Ok(());
    for f in strays {
        let r = f
            .file
            .lock_range(w.owner, w.range(), LockKind::Unlocked, Duration::ZERO)
            .await;
        match r {
            Err(e) if !closed(&e) => {
                tracing::warn!(handle = %f.file.handle(), owner = w.owner, error = %e, "unlocking a stray lock failed");
                first = first.and(Err(lock_errno(&e)));
            }
            _ if w.range() == (0, 0) => s.lock_routes.stray_dropped(ino, w.owner, f),
            _ => {}
        }
    }
    first
}

/// Waits for the queued writes of every open file of `ino` on this mount
/// and flushes them: the process may have written through any of its
/// descriptors (a lock file and a data file are often two). A clean
/// handle's flush sends nothing. A failure is logged, not returned: the
/// lock change goes ahead (a lock kept would block others until close),
/// and the writer is told at its own close or fsync, whose flush tries
/// the same writes again (as NFS ignores write-back errors at unlock).
pub(crate) async fn flush_file(s: &Shared, ino: u64) {
    for f in s.open_of(ino) {
        f.writes.wait_queued().await;
        if let Err(e) = f.file.sync().await {
            tracing::warn!(handle = %f.file.handle(), error = %e, "flush before a lock change failed");
            // Reported at the handle's next write, flush, fsync or close,
            // even if that flush's retry of the same writes succeeds.
            f.writes.fail(errno(&e));
        }
    }
}

/// Drops what the kernel caches of the file (pages and attributes) once a
/// lock is taken: the last holder, perhaps on another machine, may have
/// changed it since this mount read it (as NFS clears its cache at a
/// lock). On a blocking thread: the kernel waits for locked pages, which
/// reads this mount is answering may hold.
async fn drop_cache(s: &Shared, ino: u64) {
    let Some(n) = s.notifier.get().cloned() else {
        return;
    };
    let dropped =
        tokio::task::spawn_blocking(move || n.inval_inode(fuser::INodeNo(ino), 0, 0)).await;
    if let Ok(Err(e)) = dropped {
        tracing::debug!(ino, error = %e, "cache invalidation after a lock failed");
    }
}

/// Unlocks `w`'s range through the owner's route `r`, and marks the
/// route free if that was everything.
async fn unlock(s: &Shared, ino: u64, w: Wanted, r: &Found) -> Result<(), Errno> {
    let range = w.range();
    r.file
        .file
        .lock_range(w.owner, range, LockKind::Unlocked, Duration::ZERO)
        .await
        .map_err(|e| lock_errno(&e))?;
    tracing::debug!(handle = %r.file.file.handle(), owner = w.owner, start = w.start, end = w.end, "unlock");
    if range == (0, 0) {
        s.lock_routes.released(ino, w.owner, r);
    }
    Ok(())
}

/// True if the handle a lock request went through is closed: its locks
/// went with it.
fn closed(e: &cairn_client::ClientError) -> bool {
    e.code() == Some(cairn_proto::ErrorCode::StaleHandle)
}

/// [`errno`] for a lock request: a handle at its limit of locks is what
/// fcntl(2) calls ENOLCK.
fn lock_errno(e: &cairn_client::ClientError) -> Errno {
    match e.code() {
        Some(cairn_proto::ErrorCode::TooMany) => Errno::ENOLCK,
        _ => errno(e),
    }
}

/// True if thread `tid` (in this process's PID namespace) has a signal
/// pending that it does not block, or is gone. 0 (a requester outside our
/// namespace) tells nothing.
fn signal_pending(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{tid}/status")) {
        Ok(status) => pending_in_status(&status),
        Err(_) => true,
    }
}

/// Reads the signal masks of a /proc/PID/status text: SigPnd (the
/// thread's own), ShdPnd (its process's), SigBlk (blocked).
fn pending_in_status(status: &str) -> bool {
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    pending & !mask("SigBlk:") != 0
}

/// Drops every lock `owner` holds on `f`'s file (its close(2) of any
/// descriptor of the file): through any open file a request left one on
/// (see [`Routes::stray`]), then through its route, which ends (if that
/// unlock fails, the route stays and the owner's next close tries
/// again). Writes made through any descriptor of the file are flushed
/// first when the owner may hold a lock: the next holder must read them.
pub async fn release_owner(s: &Shared, f: &OpenFile, owner: u64) {
    let route = s.lock_routes.find(s, f.ino, owner);
    let strays = s.lock_routes.strays(f.ino, owner);
    if route.as_ref().is_some_and(|r| r.may_hold) || !strays.is_empty() {
        flush_file(s, f.ino).await;
    }
    let all = Wanted {
        owner,
        start: 0,
        end: u64::MAX,
        typ: libc::F_UNLCK,
    };
    let _ = unlock_strays(s, f.ino, all, &strays).await;
    if route.is_none() {
        return;
    }
    // Only now: the owner's requests during the flush still went through
    // the route (their locks go with this close, as they came before it).
    let Some(r) = s.lock_routes.end(s, f.ino, owner).await else {
        return;
    };
    if !r.may_hold {
        s.lock_routes.ended(f.ino, owner, &r, true);
        return;
    }
    let all = r
        .file
        .file
        .lock_range(owner, (0, 0), LockKind::Unlocked, Duration::ZERO)
        .await;
    let done = match all {
        Ok(()) => {
            tracing::debug!(handle = %r.file.file.handle(), owner, "locks released at close");
            true
        }
        Err(e) if closed(&e) => true,
        Err(e) => {
            tracing::warn!(error = %e, handle = %r.file.file.handle(), owner, "releasing locks at close failed; the next close tries again");
            false
        }
    };
    s.lock_routes.ended(f.ino, owner, &r, done);
}

/// F_GETLK: the lock that would stop `w`, as (start, end inclusive, type),
/// or `None` if it could be set. Takes nothing.
pub async fn test(s: &Shared, fh: FileHandle, w: Wanted) -> Result<Option<(u64, u64, i32)>, Errno> {
    let own = s.open_file(fh)?;
    let f = match s.lock_routes.find(s, own.ino, w.owner) {
        Some(r) => r.file,
        None => own,
    };
    let exclusive = w.typ == libc::F_WRLCK;
    match f.file.test_lock(w.owner, w.range(), exclusive).await {
        Ok(held) => Ok(held.map(|h| as_flock(&h))),
        Err(e) => Err(lock_errno(&e)),
    }
}

/// A held lock as the kernel reports it: inclusive ends at most
/// `i64::MAX` (FUSE refuses larger ones), "to the end" as `i64::MAX`.
fn as_flock(h: &HeldLock) -> (u64, u64, i32) {
    let max = i64::MAX as u64;
    let start = h.offset.min(max);
    let end = if h.len == 0 {
        max
    } else {
        h.offset.saturating_add(h.len - 1).min(max)
    };
    let typ = if h.exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    };
    (start, end, typ)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_signal_counts_unless_blocked() {
        let status = |pnd: &str, shd: &str, blk: &str| {
            format!(
                "Name:\tpython3\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t0000000001001000\n"
            )
        };
        let none = "0000000000000000";
        let alarm = "0000000000002000"; // SIGALRM, 14
        assert!(!pending_in_status(&status(none, none, none)));
        assert!(pending_in_status(&status(none, alarm, none)));
        assert!(pending_in_status(&status(alarm, none, none)));
        assert!(!pending_in_status(&status(none, alarm, alarm)));
    }

    #[test]
    fn held_locks_are_reported_within_what_the_kernel_takes() {
        let held = |offset, len, exclusive| HeldLock {
            offset,
            len,
            exclusive,
        };
        let max = i64::MAX as u64;
        assert_eq!(as_flock(&held(10, 5, true)), (10, 14, libc::F_WRLCK));
        assert_eq!(as_flock(&held(10, 0, false)), (10, max, libc::F_RDLCK));
        assert_eq!(as_flock(&held(u64::MAX - 1, 1, true)).0, max);
        assert_eq!(as_flock(&held(max, u64::MAX, true)).1, max);
    }

    #[test]
    fn wanted_ranges_from_the_kernel_map_to_the_protocol() {
        let w = |start, end, typ| Wanted {
            owner: 1,
            start,
            end,
            typ,
        };
        assert_eq!(w(0, 99, libc::F_WRLCK).range(), (0, 100));
        assert_eq!(w(5, i64::MAX as u64, libc::F_RDLCK).range(), (5, 0));
        assert_eq!(w(5, 5, libc::F_UNLCK).kind(), LockKind::Unlocked);
        assert_eq!(w(5, 5, libc::F_RDLCK).kind(), LockKind::Shared);
    }

    #[test]
    fn this_process_has_no_signal_and_a_gone_one_is_given_up() {
        assert!(!signal_pending(std::process::id()));
        assert!(!signal_pending(0));
        assert!(signal_pending(u32::MAX - 1));
    }
}
