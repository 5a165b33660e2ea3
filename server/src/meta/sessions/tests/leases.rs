//! Lease grants, breaks and acknowledgements on real RocksDB.

use cairn_proto::wire::{Disposition, HandleId, SessionId, access, lease};
use cairn_proto::{ErrorCode, InodeId};

use super::{ALL, Fixture, RW, S1, S2, path, share};
use crate::meta::command::OpenFile;
use crate::meta::leases::{breaks_settled, conflicts, pending_breaks};
use crate::meta::{Applied, Command, MetaError};

const S3: SessionId = SessionId([3; 16]);

fn open(session: SessionId, acc: u8, want: u8, force: bool) -> Command {
    Command::OpenFile(OpenFile {
        session,
        share: share(),
        path: path("f"),
        disposition: Disposition::OpenOrCreate,
        access: acc,
        share_access: ALL,
        flags: 0,
        mode: 0o644,
        now_ns: 20,
        lease: want,
        force,
    })
}

fn opened(a: &Applied) -> (HandleId, InodeId, u8) {
    (HandleId(a.handle.unwrap()), a.inode.unwrap(), a.lease)
}

fn held(f: &Fixture, h: HandleId) -> u8 {
    crate::meta::sessions::load_handle(&f.store.snapshot(), h)
        .unwrap()
        .lease
}

#[test]
fn grants_follow_the_other_sessions_opens() {
    let f = Fixture::new();
    f.ok(Command::OpenSession {
        session: S3,
        share: share(),
        writable: true,
        now_ns: 10,
    });
    // Alone: everything asked for; WRITE alone means READ | WRITE.
    let (a, inode, l) = opened(&f.ok(open(S1, RW, lease::WRITE, false)));
    assert_eq!(l, lease::READ_WRITE);
    // The same session's second open conflicts with nothing.
    let (_, _, l) = opened(&f.ok(open(S1, access::READ, lease::READ, false)));
    assert_eq!(l, lease::READ);
    // A reader from another session must wait for the RW lease to drop
    // to R, and nothing is remembered for its sequence number.
    let first = f.seq(S2, 1, open(S2, access::READ, lease::READ, false));
    assert!(matches!(first, Err(MetaError::LeasesHeld(_))), "{first:?}");
    let found = conflicts(&f.store.snapshot(), inode, &S2, access::READ).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].handle, found[0].to), (a, lease::READ));
    f.ok(Command::BreakLeases {
        inode,
        session: S2,
        access: access::READ,
    });
    let pending = pending_breaks(&f.store.snapshot(), 100).unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].session,
            pending[0].handle,
            pending[0].from,
            pending[0].to
        ),
        (S1, a, lease::READ_WRITE, lease::READ)
    );
    assert!(!breaks_settled(&f.store.snapshot(), &found).unwrap());
    assert_eq!(
        held(&f, a),
        lease::READ_WRITE,
        "lowered only when acknowledged"
    );
    f.ok(Command::AckLease {
        handle: a,
        lease: lease::READ,
    });
    assert!(breaks_settled(&f.store.snapshot(), &found).unwrap());
    assert!(pending_breaks(&f.store.snapshot(), 100).unwrap().is_empty());
    let (_, _, l) = opened(
        &f.seq(S2, 1, open(S2, access::READ, lease::READ, false))
            .unwrap(),
    );
    assert_eq!(l, lease::NONE, "S1 has the file open for writing");
    // A writer breaks every other session's R lease to none (S2's handle
    // has none to break), and gets none itself while others are open.
    let err = f.run(open(S3, RW, lease::READ_WRITE, false)).unwrap_err();
    assert_eq!(err.code(), ErrorCode::Unavailable);
    let found = conflicts(&f.store.snapshot(), inode, &S3, RW).unwrap();
    assert_eq!(found.len(), 2, "S1's two handles");
    assert!(found.iter().all(|c| c.to == lease::NONE));
    let (_, _, l) = opened(&f.ok(open(S3, RW, lease::READ_WRITE, true)));
    assert_eq!(l, lease::NONE);
}

#[test]
fn readers_of_different_sessions_share_read_leases() {
    let f = Fixture::new();
    let (_, inode, l1) = opened(&f.ok(open(S1, access::READ, lease::READ_WRITE, false)));
    assert_eq!(l1, lease::READ_WRITE, "alone: the whole lease");
    let err = f
        .run(open(S2, access::READ, lease::READ, false))
        .unwrap_err();
    assert_eq!(
        err.code(),
        ErrorCode::Unavailable,
        "RW must drop to R first"
    );
    let (_, _, l2) = opened(&f.ok(open(S2, access::READ, lease::READ, true)));
    assert_eq!(l2, lease::READ);
    assert!(
        conflicts(&f.store.snapshot(), inode, &S1, access::READ)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_forced_open_takes_the_leases_and_leaves_the_notice() {
    let f = Fixture::new();
    let (a, inode, _) = opened(&f.ok(open(S1, RW, lease::READ_WRITE, false)));
    let (_, _, l) = opened(&f.ok(open(S2, RW, lease::READ_WRITE, true)));
    assert_eq!(l, lease::NONE, "S1 still has the file open for writing");
    assert_eq!(held(&f, a), lease::NONE);
    let pending = pending_breaks(&f.store.snapshot(), 100).unwrap();
    assert_eq!(pending.len(), 1, "the holder still hears about it");
    assert_eq!((pending[0].handle, pending[0].to), (a, lease::NONE));
    // A late acknowledgement of a higher level changes nothing but clears it.
    f.ok(Command::AckLease {
        handle: a,
        lease: lease::READ,
    });
    assert_eq!(held(&f, a), lease::NONE);
    assert!(pending_breaks(&f.store.snapshot(), 100).unwrap().is_empty());
    assert!(
        conflicts(&f.store.snapshot(), inode, &S2, RW)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn closing_acknowledges_and_acks_never_fail() {
    let f = Fixture::new();
    let (a, inode, _) = opened(&f.ok(open(S1, RW, lease::READ, false)));
    f.ok(Command::BreakLeases {
        inode,
        session: S2,
        access: RW,
    });
    assert_eq!(pending_breaks(&f.store.snapshot(), 100).unwrap().len(), 1);
    f.ok(Command::CloseHandle {
        handle: a,
        settle: None,
        now_ns: 30,
    });
    assert!(pending_breaks(&f.store.snapshot(), 100).unwrap().is_empty());
    // A retried acknowledgement of a closed handle is still a success.
    f.ok(Command::AckLease {
        handle: a,
        lease: lease::NONE,
    });
    let (_, _, l) = opened(&f.ok(open(S2, RW, lease::READ_WRITE, false)));
    assert_eq!(l, lease::READ_WRITE);
}

#[test]
fn a_later_break_lowers_a_pending_one() {
    let f = Fixture::new();
    let (a, inode, _) = opened(&f.ok(open(S1, RW, lease::READ_WRITE, false)));
    f.ok(Command::BreakLeases {
        inode,
        session: S2,
        access: access::READ,
    });
    f.ok(Command::BreakLeases {
        inode,
        session: S2,
        access: RW,
    });
    let pending = pending_breaks(&f.store.snapshot(), 100).unwrap();
    assert_eq!((pending[0].handle, pending[0].to), (a, lease::NONE));
    // Acknowledging only the first level keeps the break pending.
    f.ok(Command::AckLease {
        handle: a,
        lease: lease::READ,
    });
    assert_eq!(pending_breaks(&f.store.snapshot(), 100).unwrap().len(), 1);
    f.ok(Command::AckLease {
        handle: a,
        lease: lease::NONE,
    });
    assert!(pending_breaks(&f.store.snapshot(), 100).unwrap().is_empty());
}
