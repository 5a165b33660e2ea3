//! POSIX (fcntl) and BSD (flock) locks as protocol byte-range locks.
//!
//! A lock is taken through the protocol handle of the file descriptor it
//! was asked on, so it conflicts with every other handle (other processes
//! on this mount, other mounts) and survives failovers. The mount
//! remembers which owner took which range, to release an owner's locks at
//! its close(2) and to answer unlocks of ranges it never locked.

use std::time::Duration;

use fuser::{Errno, FileHandle};

use crate::errno::errno;
use crate::fs::{OpenFile, Shared};

/// One lock request from the kernel (`end` inclusive).
#[derive(Clone, Copy, Debug)]
pub struct Wanted {
    pub owner: u64,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

impl Wanted {
    /// The protocol length: 0 means "to the end of any file".
    fn len(&self) -> u64 {
        if self.end >= i64::MAX as u64 {
            0
        } else {
            self.end - self.start + 1
        }
    }
}

/// How long one blocking protocol request waits; F_SETLKW repeats it. Also
/// how long a waiting process's signal may go unanswered (see [`set`]).
const WAIT_SLICE: Duration = Duration::from_secs(1);

/// Takes the lock `w` through `fh`; with `sleep`, waits for it until it is
/// free or the waiting thread `tid` has a signal to take.
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
    let f = s.open_file(fh)?;
    // Writes made under a lock reach the cluster before a new one is
    // taken, and are flushed before one is given up: the next holder,
    // perhaps on another machine, must see them (as NFS flushes at
    // unlock). A clean handle's flush sends nothing.
    f.writes.wait().await;
    if w.typ == libc::F_UNLCK {
        f.file.sync().await.map_err(|e| errno(&e))?;
        return unlock(&f, w).await;
    }
    let exclusive = w.typ == libc::F_WRLCK;
    loop {
        let wait = if sleep { WAIT_SLICE } else { Duration::ZERO };
        let r = f.file.lock(w.start, w.len(), exclusive, wait).await;
        tracing::debug!(handle = %f.file.handle(), ino = f.ino, owner = w.owner, start = w.start, len = w.len(), exclusive, sleep, ok = r.is_ok(), "lock");
        match r {
            Ok(()) => {
                if let Ok(mut held) = f.locks.lock() {
                    held.retain(|&(start, len, _)| (start, len) != (w.start, w.len()));
                    held.push((w.start, w.len(), w.owner));
                }
                return Ok(());
            }
            Err(e) if sleep && errno(&e) == Errno::EAGAIN => {
                if signal_pending(tid) {
                    tracing::debug!(handle = %f.file.handle(), owner = w.owner, tid, "lock wait interrupted");
                    return Err(Errno::EINTR);
                }
            }
            Err(e) => return Err(lock_errno(&e)),
        }
    }
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

/// Releases the locks `w` covers that this handle holds.
async fn unlock(f: &OpenFile, w: Wanted) -> Result<(), Errno> {
    let end = w.start.saturating_add(w.len().wrapping_sub(1));
    let covered: Vec<(u64, u64, u64)> = match f.locks.lock() {
        Ok(held) => held
            .iter()
            .copied()
            .filter(|&(start, len, owner)| {
                let last = if len == 0 { u64::MAX } else { start + len - 1 };
                owner == w.owner && start >= w.start && (w.len() == 0 || last <= end)
            })
            .collect(),
        Err(_) => return Err(Errno::EIO),
    };
    for (start, len, _) in covered {
        tracing::debug!(handle = %f.file.handle(), owner = w.owner, start, len, "unlock");
        f.file.unlock(start, len).await.map_err(|e| errno(&e))?;
        if let Ok(mut held) = f.locks.lock() {
            held.retain(|&(s, l, _)| (s, l) != (start, len));
        }
    }
    Ok(())
}

/// Drops every lock `owner` holds through this handle (its close(2)).
pub async fn release_owner(f: &OpenFile, owner: u64) {
    let all = Wanted {
        owner,
        start: 0,
        end: u64::MAX,
        typ: libc::F_UNLCK,
    };
    if let Err(e) = unlock(f, all).await {
        tracing::warn!(error = ?e, "releasing locks at close failed");
    }
}

/// F_GETLK: the protocol has no "test" request, so this takes the lock
/// without waiting and gives it back. Returns the conflicting range and
/// type, or `None` if it could be placed.
pub async fn test(s: &Shared, fh: FileHandle, w: Wanted) -> Result<Option<(u64, u64, i32)>, Errno> {
    let f = s.open_file(fh)?;
    let exclusive = w.typ == libc::F_WRLCK;
    let already = f
        .locks
        .lock()
        .map(|h| h.iter().any(|&(st, l, _)| (st, l) == (w.start, w.len())))
        .unwrap_or(false);
    if already {
        // This handle's own lock: nothing of ours conflicts with it.
        return Ok(None);
    }
    match f
        .file
        .lock(w.start, w.len(), exclusive, Duration::ZERO)
        .await
    {
        Ok(()) => {
            f.file
                .unlock(w.start, w.len())
                .await
                .map_err(|e| errno(&e))?;
            Ok(None)
        }
        Err(e) if errno(&e) == Errno::EAGAIN => Ok(Some((w.start, w.end, libc::F_WRLCK))),
        Err(e) => Err(lock_errno(&e)),
    }
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
    fn this_process_has_no_signal_and_a_gone_one_is_given_up() {
        assert!(!signal_pending(std::process::id()));
        assert!(!signal_pending(0));
        assert!(signal_pending(u32::MAX - 1));
    }
}
