//! What one session or handle can hold: write buffers, handles, locks.

use std::time::{Duration, Instant};

use cairn_proto::wire::{Disposition, HandleId, Read, Request, Response, Write};

use super::{RW, Server};

fn write(handle: HandleId, offset: u64, data: &bytes::Bytes) -> Request {
    Request::Write(Write {
        handle,
        offset,
        data: data.clone(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_rewriting_one_range_leaves_other_handles_their_write_buffers() {
    // 32 MiB of write buffers: one handle holds at most half.
    let s = Server::start_with("write_buffer_bytes_max = 33554432\n").await;
    let c = s.session().await;
    let a = c.open("a.bin", Disposition::Create, RW).await.handle;
    let b = c.open("b.bin", Disposition::Create, RW).await.handle;
    let block = |byte| bytes::Bytes::from(vec![byte; 4 << 20]);
    // 32 MiB written over the same 4 MiB: each write's buffer is charged
    // (what it replaced may still be in memory), but the handle flushes
    // itself at its share instead of taking every buffer.
    for i in 0..8 {
        assert!(matches!(
            c.call(write(a, 0, &block(i))).await,
            Response::Written(_)
        ));
    }
    let free = s.node().state.write_buffers.available_permits();
    assert!(
        free >= 16 << 20,
        "one handle holds {} bytes of write buffers",
        (32 << 20) - free
    );
    // Another handle's writes find room at once.
    let started = Instant::now();
    for off in [0, 4 << 20] {
        assert!(matches!(
            c.call(write(b, off, &block(9))).await,
            Response::Written(_)
        ));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the other handle waited {:?} for write buffers",
        started.elapsed()
    );
    // The handle's own flushes lost nothing: the last write is what reads
    // back, through it and, once flushed, through the other handle too.
    assert!(matches!(c.call(Request::Flush(a)).await, Response::Attr(_)));
    let o = c.open("a.bin", Disposition::Open, RW).await.handle;
    match c
        .call(Request::Read(Read {
            handle: o,
            offset: 0,
            len: 4 << 20,
        }))
        .await
    {
        Response::Data(d) => assert!(d.data == block(7), "other bytes read back"),
        other => panic!("expected data, got {other:?}"),
    }
    s.stop().await;
}

fn lock(handle: HandleId, offset: u64, exclusive: bool) -> Request {
    Request::Lock(cairn_proto::wire::Lock {
        handle,
        offset,
        len: 1,
        exclusive,
        wait_ms: 0,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opens_handles_up_to_its_limit() {
    use crate::meta::sessions::HANDLES_PER_SESSION_MAX;
    let s = Server::start().await;
    let a = s.session().await;
    let mut open = Vec::new();
    for _ in 0..HANDLES_PER_SESSION_MAX {
        open.push(a.open("many", Disposition::OpenOrCreate, RW).await.handle);
    }
    let refused = a
        .call(super::open_req("many", Disposition::OpenOrCreate, RW, 0))
        .await;
    match refused {
        Response::Error(e) => {
            assert_eq!(e.code, cairn_proto::ErrorCode::TooMany);
            assert!(e.message.contains("limit"), "{}", e.message);
        }
        other => panic!("expected too_many, got {other:?}"),
    }
    // Another session has its own count.
    let b = s.session().await;
    b.open("many", Disposition::Open, RW).await;
    // A closed handle makes room.
    a.done(Request::Close(open.pop().unwrap())).await;
    a.open("many", Disposition::Open, RW).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_takes_locks_up_to_its_limit() {
    use crate::meta::locks::LOCKS_PER_HANDLE_MAX;
    let s = Server::start().await;
    let a = s.session().await;
    let h = a.open("locked", Disposition::Create, RW).await.handle;
    for i in 0..LOCKS_PER_HANDLE_MAX as u64 {
        a.done(lock(h, 2 * i, true)).await;
    }
    let past = 2 * LOCKS_PER_HANDLE_MAX as u64;
    assert_eq!(
        a.fails(lock(h, past, true)).await,
        cairn_proto::ErrorCode::TooMany
    );
    // A lock it holds can still change kind: that adds none.
    a.done(lock(h, 0, false)).await;
    // An unlock makes room.
    a.done(Request::Unlock(cairn_proto::wire::Unlock {
        handle: h,
        offset: 2,
        len: 1,
    }))
    .await;
    a.done(lock(h, past, true)).await;
    s.stop().await;
}
