//! POSIX-style locks (`LockRange`, `TestLock`) on real RocksDB.

use cairn_proto::ErrorCode;
use cairn_proto::wire::{Disposition, HandleId, HeldLock, LockKind, SessionId};

use super::{ALL, Fixture, RW, S1, S2};
use crate::meta::keys;
use crate::meta::locks::{LOCKS_PER_HANDLE_MAX, test_lock};
use crate::meta::overlay::{KvRead, keys_under};
use crate::meta::records::{LockRecord, decode};
use crate::meta::sessions::load_handle;
use crate::meta::{Applied, Command, MetaError};

const TO_END: u64 = 0;

fn set(handle: HandleId, owner: u64, offset: u64, len: u64, kind: LockKind) -> Command {
    Command::LockRange {
        handle,
        owner,
        offset,
        len,
        kind,
    }
}

fn open(f: &Fixture, session: SessionId) -> HandleId {
    let d = if session == S1 {
        Disposition::Create
    } else {
        Disposition::Open
    };
    HandleId(f.open(session, "a", d, RW, ALL).unwrap().handle.unwrap())
}

fn code(r: Result<Applied, MetaError>) -> ErrorCode {
    r.unwrap_err().code()
}

/// The offsets and lengths `owner` holds through `h`, in order.
fn held(f: &Fixture, h: HandleId, owner: u64) -> Vec<(u64, u64, bool)> {
    let snap = f.store.snapshot();
    let inode = load_handle(&snap, h).unwrap().inode;
    let prefix = keys::owner_locks_of(inode, h, owner);
    keys_under(&snap, &prefix)
        .unwrap()
        .into_iter()
        .map(|k| {
            let l: LockRecord = decode(&snap.get(&k).unwrap().unwrap()).unwrap();
            (keys::trailing_u64(&k).unwrap(), l.len, l.exclusive)
        })
        .collect()
}

fn tested(f: &Fixture, h: HandleId, owner: u64, offset: u64, len: u64) -> Option<HeldLock> {
    test_lock(&f.store.snapshot(), h, owner, (offset, len), true).unwrap()
}

#[test]
fn an_owner_extends_cuts_and_converts_its_own_range_in_one_step() {
    let f = Fixture::new();
    let (a, b) = (open(&f, S1), open(&f, S2));
    f.ok(set(a, 7, 0, 100, LockKind::Exclusive));
    // Extending from the same offset: the SMB-style table refuses this.
    f.ok(set(a, 7, 0, 200, LockKind::Exclusive));
    assert_eq!(held(&f, a, 7), [(0, 200, true)]);
    assert_eq!(
        code(f.run(set(b, 1, 150, 1, LockKind::Shared))),
        ErrorCode::LockConflict
    );
    f.ok(set(a, 7, 50, 100, LockKind::Unlocked));
    assert_eq!(held(&f, a, 7), [(0, 50, true), (150, 50, true)]);
    f.ok(set(b, 1, 60, 80, LockKind::Exclusive));
    assert_eq!(
        code(f.run(set(b, 1, 10, 1, LockKind::Shared))),
        ErrorCode::LockConflict
    );
    // A part turned shared lets others share it, and only it.
    f.ok(set(a, 7, 10, 10, LockKind::Shared));
    assert_eq!(
        held(&f, a, 7),
        [
            (0, 10, true),
            (10, 10, false),
            (20, 30, true),
            (150, 50, true)
        ]
    );
    f.ok(set(b, 1, 12, 2, LockKind::Shared));
    assert_eq!(
        code(f.run(set(b, 1, 12, 2, LockKind::Exclusive))),
        ErrorCode::LockConflict
    );
    // The same request again changes nothing (a retry is harmless).
    f.ok(set(a, 7, 10, 10, LockKind::Shared));
    assert_eq!(held(&f, a, 7).len(), 4);
    // Unlocking everything from 0 on leaves the owner nothing.
    f.ok(set(a, 7, 0, TO_END, LockKind::Unlocked));
    assert_eq!(held(&f, a, 7), []);
    f.ok(set(b, 1, 0, TO_END, LockKind::Shared));
}

#[test]
fn owners_conflict_with_each_other_even_through_one_handle() {
    let f = Fixture::new();
    let a = open(&f, S1);
    f.ok(set(a, 1, 0, 10, LockKind::Exclusive));
    assert_eq!(
        code(f.run(set(a, 2, 5, 10, LockKind::Shared))),
        ErrorCode::LockConflict
    );
    assert_eq!(
        tested(&f, a, 2, 5, 10),
        Some(HeldLock {
            offset: 0,
            len: 10,
            exclusive: true
        })
    );
    assert_eq!(tested(&f, a, 1, 5, 10), None, "its own lock is no conflict");
    // The handle's SMB-style locks are another holder too.
    assert_eq!(
        code(f.run(Command::Lock {
            handle: a,
            offset: 0,
            len: 1,
            exclusive: false
        })),
        ErrorCode::LockConflict
    );
    f.ok(set(a, 1, 0, 10, LockKind::Shared));
    f.ok(set(a, 2, 5, 10, LockKind::Shared));
    assert_eq!(
        tested(&f, a, 3, 0, TO_END),
        Some(HeldLock {
            offset: 0,
            len: 10,
            exclusive: false
        }),
        "the lowest conflicting lock"
    );
}

#[test]
fn closing_the_handle_drops_every_owners_ranges() {
    let f = Fixture::new();
    let (a, b) = (open(&f, S1), open(&f, S2));
    f.ok(set(a, 1, 0, 10, LockKind::Exclusive));
    f.ok(set(a, 2, 20, TO_END, LockKind::Exclusive));
    f.ok(Command::CloseHandle {
        handle: a,
        settle: None,
        now_ns: 60,
    });
    assert_eq!(tested(&f, b, 1, 0, TO_END), None);
    f.ok(set(b, 1, 0, TO_END, LockKind::Exclusive));
}

#[test]
fn a_split_past_the_handles_limit_is_refused_and_a_merge_frees_room() {
    let f = Fixture::new();
    let a = open(&f, S1);
    let max = LOCKS_PER_HANDLE_MAX as u64;
    for i in 0..max {
        f.ok(set(a, 1, i * 10, 5, LockKind::Exclusive));
    }
    assert_eq!(
        code(f.run(set(a, 2, 1000, 5, LockKind::Shared))),
        ErrorCode::TooMany
    );
    // Cutting a range in two would make one lock more.
    assert_eq!(
        code(f.run(set(a, 1, 1, 1, LockKind::Unlocked))),
        ErrorCode::TooMany
    );
    assert_eq!(
        held(&f, a, 1).len() as u64,
        max,
        "the refused cut changed nothing"
    );
    // Joining the first two ranges leaves room for one more.
    f.ok(set(a, 1, 0, 15, LockKind::Exclusive));
    f.ok(set(a, 1, 1, 1, LockKind::Unlocked));
    assert_eq!(held(&f, a, 1)[..2], [(0, 1, true), (2, 13, true)]);
}

#[test]
fn an_empty_range_is_refused() {
    let f = Fixture::new();
    let a = open(&f, S1);
    assert!(f.run(set(a, 1, u64::MAX, 0, LockKind::Shared)).is_err());
    assert_eq!(held(&f, a, 1), []);
}
