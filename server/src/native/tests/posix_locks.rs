//! `LockRange` and `TestLock` through the wire format: the POSIX-style
//! locks a mount sets with fcntl.

use std::time::Duration;

use cairn_proto::ErrorCode;
use cairn_proto::wire::{
    Disposition, HandleId, HeldLock, LockKind, LockRange, LockTested, Request, Response, TestLock,
};

use super::{RW, Server};

const TO_END: u64 = 0;

fn set(
    handle: HandleId,
    owner: u64,
    (offset, len): (u64, u64),
    kind: LockKind,
    wait_ms: u32,
) -> Request {
    Request::LockRange(LockRange {
        handle,
        owner,
        offset,
        len,
        kind,
        wait_ms,
    })
}

fn test(handle: HandleId, owner: u64, (offset, len): (u64, u64)) -> Request {
    Request::TestLock(TestLock {
        handle,
        owner,
        offset,
        len,
        exclusive: true,
    })
}

fn held(offset: u64, len: u64, exclusive: bool) -> Response {
    Response::LockTested(LockTested {
        conflict: Some(HeldLock {
            offset,
            len,
            exclusive,
        }),
    })
}

const FREE: Response = Response::LockTested(LockTested { conflict: None });

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_extends_its_lock_and_a_waiter_gets_the_part_let_go() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a.open("posix", Disposition::Create, RW).await.handle;
    let hb = b.open("posix", Disposition::Open, RW).await.handle;
    a.done(set(ha, 1, (0, 100), LockKind::Exclusive, 0)).await;
    // Extending from the same offset: one step, no unlock in between.
    a.done(set(ha, 1, (0, 200), LockKind::Exclusive, 0)).await;
    assert_eq!(b.call(test(hb, 9, (150, 1))).await, held(0, 200, true));
    assert_eq!(a.call(test(ha, 1, (0, TO_END))).await, FREE, "its own lock");
    assert_eq!(
        a.call(test(ha, 2, (199, 1))).await,
        held(0, 200, true),
        "another owner"
    );
    assert_eq!(
        b.fails(set(hb, 9, (150, 10), LockKind::Shared, 0)).await,
        ErrorCode::LockConflict
    );
    let waiter = tokio::spawn(async move {
        let r = b
            .call(set(hb, 9, (150, 10), LockKind::Exclusive, 5_000))
            .await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Letting go of the tail keeps the head.
    a.done(set(ha, 1, (100, TO_END), LockKind::Unlocked, 0))
        .await;
    let (b, r) = waiter.await.unwrap();
    assert_eq!(r, Response::Done);
    assert_eq!(b.call(test(hb, 9, (0, TO_END))).await, held(0, 100, true));
    assert_eq!(a.call(test(ha, 1, (0, TO_END))).await, held(150, 10, true));
    // Unlocking what is not held is no error (as in POSIX).
    b.done(set(hb, 9, (1 << 40, 1), LockKind::Unlocked, 0))
        .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_without_a_byte_and_a_stranger_handle_are_refused() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a.open("posix", Disposition::Create, RW).await.handle;
    assert_eq!(
        a.fails(set(ha, 1, (u64::MAX, TO_END), LockKind::Shared, 0))
            .await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        a.fails(test(ha, 1, (u64::MAX, 1))).await,
        ErrorCode::BadRequest
    );
    assert_eq!(
        b.fails(set(ha, 1, (0, 1), LockKind::Shared, 0)).await,
        ErrorCode::StaleHandle
    );
    assert_eq!(b.fails(test(ha, 1, (0, 1))).await, ErrorCode::StaleHandle);
    s.stop().await;
}
