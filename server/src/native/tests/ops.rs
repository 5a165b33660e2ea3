//! Each operation, as a client sees it through the wire format.

use cairn_proto::ErrorCode;
use cairn_proto::api::EntryKind;
use cairn_proto::wire::{
    Disposition, Lock, Mkdir, Notice, PathReq, Read, ReadDir, Rename, Request, RequestHeader,
    Response, SetInfo, Unlock, Write, access, capability, lease, open_flags,
};

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{RW, Server, TOKEN, open_req};

fn write(h: cairn_proto::wire::HandleId, offset: u64, data: &[u8]) -> Request {
    Request::Write(Write {
        handle: h,
        offset,
        data: bytes::Bytes::copy_from_slice(data),
    })
}

fn read(h: cairn_proto::wire::HandleId, offset: u64, len: u32) -> Request {
    Request::Read(Read {
        handle: h,
        offset,
        len,
    })
}

fn lock(
    h: cairn_proto::wire::HandleId,
    offset: u64,
    len: u64,
    exclusive: bool,
    wait_ms: u32,
) -> Request {
    Request::Lock(Lock {
        handle: h,
        offset,
        len,
        exclusive,
        wait_ms,
    })
}

/// A handle on `path` (created) whose sequenced writes append.
async fn open_append(c: &super::Conn, path: &str) -> cairn_proto::wire::HandleId {
    let mut req = open_req(path, Disposition::Create, RW, 0);
    if let Request::Open(o) = &mut req {
        o.flags = open_flags::APPEND;
    }
    match c.call(req).await {
        Response::Opened(o) => o.handle,
        other => panic!("{other:?}"),
    }
}

async fn data(c: &super::Conn, req: Request) -> (Vec<u8>, bool) {
    match c.call(req).await {
        Response::Data(d) => (d.data.to_vec(), d.eof),
        other => panic!("expected data, got {other:?}"),
    }
}

async fn attr(c: &super::Conn, req: Request) -> cairn_proto::wire::Attr {
    match c.call(req).await {
        Response::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_setup_keep_alive_and_logoff() {
    let s = Server::start().await;
    let c = s.connect();
    let n = Request::Negotiate(cairn_proto::wire::Negotiate {
        versions: vec![7, cairn_proto::wire::PROTOCOL_VERSION],
        capabilities: 0,
        client: "t".into(),
    });
    match c.with_seq(0, &n).await {
        Response::Negotiated(n) => {
            assert_eq!(n.version, 1);
            assert_eq!(n.capabilities & capability::LEASES, capability::LEASES);
            assert_eq!(n.max_read, 4 << 20);
            assert_eq!(n.max_write, 4 << 20);
            assert_eq!(n.handle_timeout_ms, 60_000);
            assert_eq!(n.replay_window, 1024);
        }
        other => panic!("{other:?}"),
    }
    c.setup(super::TOKEN, "default", false).await.unwrap();
    c.done(Request::KeepAlive).await;
    // A second connection reclaims the session with its handles.
    let o = c.open("kept", Disposition::Create, RW).await;
    let again = s.connect_as(c.session);
    let ready = again.setup(super::TOKEN, "default", true).await.unwrap();
    assert!(ready.resumed && ready.writable);
    assert_eq!(ready.handles, vec![o.handle]);
    again.done(Request::Logoff).await;
    // Logged off: the session and its handles are gone everywhere.
    assert_eq!(
        c.fails(Request::Close(o.handle)).await,
        ErrorCode::NoSession
    );
    let late = s.connect_as(c.session);
    assert_eq!(
        late.setup(super::TOKEN, "default", true).await,
        Err(ErrorCode::NoSession)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_dispositions_read_write_flush_close() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let o = a.open("f.txt", Disposition::CreateNew, RW).await;
    assert!(o.created);
    assert_eq!((o.attr.size, o.attr.kind), (0, EntryKind::File));
    assert_eq!(o.attr.mode, 0o640);
    let h = o.handle;
    match a.call(write(h, 0, b"hello world")).await {
        Response::Written(w) => assert_eq!((w.count, w.offset, w.size), (11, 0, 11)),
        other => panic!("{other:?}"),
    }
    // Its own unflushed writes are visible through the handle...
    assert_eq!(data(&a, read(h, 6, 100)).await, (b"world".to_vec(), true));
    assert_eq!(attr(&a, Request::StatHandle(h)).await.size, 11);
    // ...not to another session until a flush.
    assert_eq!(
        attr(
            &b,
            Request::Stat(PathReq {
                path: "f.txt".into()
            })
        )
        .await
        .size,
        0
    );
    let flushed = attr(&a, Request::Flush(h)).await;
    assert_eq!(flushed.size, 11);
    let seen = attr(
        &b,
        Request::Stat(PathReq {
            path: "/f.txt".into(),
        }),
    )
    .await;
    assert_eq!((seen.size, seen.name.as_str()), (11, "f.txt"));
    a.done(Request::Close(h)).await;
    // Closed by its last writer: the ETag is the BLAKE3 of the content.
    let settled = attr(
        &b,
        Request::Stat(PathReq {
            path: "f.txt".into(),
        }),
    )
    .await;
    assert_eq!(settled.etag, Some(*blake3::hash(b"hello world").as_bytes()));

    let r = b.open("f.txt", Disposition::Open, access::READ).await;
    assert!(!r.created);
    assert_eq!(
        data(&b, read(r.handle, 0, 5)).await,
        (b"hello".to_vec(), false)
    );
    b.done(Request::Close(r.handle)).await;
    // Overwrite and Create truncate; OpenOrCreate keeps.
    let keep = a.open("f.txt", Disposition::OpenOrCreate, RW).await;
    assert_eq!(keep.attr.size, 11);
    a.done(Request::Close(keep.handle)).await;
    let t = a.open("f.txt", Disposition::Overwrite, RW).await;
    assert_eq!(t.attr.size, 0);
    a.done(Request::Close(t.handle)).await;
    let n = a.open("new.txt", Disposition::Create, RW).await;
    assert!(n.created);
    a.done(Request::Close(n.handle)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_go_to_the_end_once_per_sequence_number() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = open_append(&c, "log").await;
    let seq = c.next_seq();
    for _ in 0..2 {
        match c.with_seq(seq, &write(h, 0, b"one ")).await {
            Response::Written(w) => assert_eq!((w.offset, w.size), (0, 4)),
            other => panic!("{other:?}"),
        }
    }
    match c.with_seq(c.next_seq(), &write(h, 0, b"two")).await {
        Response::Written(w) => assert_eq!((w.offset, w.size), (4, 7)),
        other => panic!("{other:?}"),
    }
    assert_eq!(data(&c, read(h, 0, 100)).await.0, b"one two");
    c.done(Request::Close(h)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_info_truncates_extends_and_sets_mode_and_time() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = c.open("s", Disposition::Create, RW).await.handle;
    c.call(write(h, 0, b"0123456789")).await;
    let info = |size, mode, mtime_ns| {
        Request::SetInfo(SetInfo {
            handle: h,
            size,
            mtime_ns,
            mode,
        })
    };
    assert_eq!(attr(&c, info(Some(4), None, None)).await.size, 4);
    assert_eq!(data(&c, read(h, 0, 100)).await.0, b"0123");
    let a = attr(&c, info(Some(8), Some(0o600), Some(1_000_000_000))).await;
    assert_eq!((a.size, a.mode, a.mtime_ns), (8, 0o600, 1_000_000_000));
    assert_eq!(data(&c, read(h, 0, 100)).await.0, b"0123\0\0\0\0");
    c.done(Request::Close(h)).await;
    s.stop().await;
}

/// Two handles of one file: each flush keeps what the other flushed first,
/// the file's growth included (a flush used to record the size its handle
/// saw at its last write, cutting off the other's longer content).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_keeps_what_another_handle_grew_the_file_by() {
    let s = Server::start().await;
    let c = s.session().await;
    let h1 = c.open("g", Disposition::Create, RW).await.handle;
    let h2 = c.open("g", Disposition::Open, RW).await.handle;
    c.call(write(h1, 0, b"first")).await;
    c.call(write(h2, 0, &[b'x'; 1000])).await;
    assert_eq!(attr(&c, Request::Flush(h2)).await.size, 1000);
    assert_eq!(attr(&c, Request::Flush(h1)).await.size, 1000);
    let (got, eof) = data(&c, read(h2, 0, 2000)).await;
    assert!(eof);
    assert_eq!(got.len(), 1000, "the flush of h1 cut the file");
    assert_eq!(&got[..5], b"first");
    assert!(got[5..].iter().all(|&b| b == b'x'));
    // A truncate is still recorded as such.
    c.call(Request::SetInfo(SetInfo {
        handle: h1,
        size: Some(3),
        mtime_ns: None,
        mode: None,
    }))
    .await;
    assert_eq!(attr(&c, Request::Flush(h1)).await.size, 3);
    assert_eq!(data(&c, read(h2, 0, 2000)).await.0, b"fir");
    c.done(Request::Close(h1)).await;
    c.done(Request::Close(h2)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directories_pages_renames_and_removes() {
    let s = Server::start().await;
    let c = s.session().await;
    c.done(Request::Mkdir(Mkdir {
        path: "d".into(),
        mode: 0o750,
    }))
    .await;
    for i in 0..25 {
        let o = c
            .open(&format!("d/f{i:02}"), Disposition::CreateNew, RW)
            .await;
        c.done(Request::Close(o.handle)).await;
    }
    let mut names = Vec::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let req = Request::ReadDir(ReadDir {
            path: "d".into(),
            after: after.take(),
            limit: 10,
        });
        let page = match c.call(req).await {
            Response::DirPage(p) => p,
            other => panic!("{other:?}"),
        };
        pages += 1;
        assert!(page.entries.len() <= 10);
        names.extend(page.entries.into_iter().map(|e| e.name));
        match page.next_after {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<String> = (0..25).map(|i| format!("f{i:02}")).collect();
    assert_eq!(names, expected);
    let d = attr(&c, Request::Stat(PathReq { path: "d".into() })).await;
    assert_eq!((d.kind, d.mode), (EntryKind::Directory, 0o750));

    let rename = |from: &str, to: &str, replace| {
        Request::Rename(Rename {
            from: from.into(),
            to: to.into(),
            replace,
        })
    };
    c.done(rename("d/f00", "d/g00", false)).await;
    assert_eq!(
        c.fails(rename("d/f01", "d/g00", false)).await,
        ErrorCode::AlreadyExists
    );
    c.done(rename("d/f01", "d/g00", true)).await;
    c.done(Request::Remove(PathReq {
        path: "d/g00".into(),
    }))
    .await;
    assert_eq!(
        c.fails(Request::Stat(PathReq {
            path: "d/f01".into()
        }))
        .await,
        ErrorCode::NotFound
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_conflict_between_handles_until_released() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a.open("locked", Disposition::Create, RW).await.handle;
    let hb = b.open("locked", Disposition::Open, RW).await.handle;
    a.done(lock(ha, 0, 100, true, 0)).await;
    a.done(lock(ha, 0, 100, true, 0)).await;
    assert_eq!(
        b.fails(lock(hb, 50, 10, false, 0)).await,
        ErrorCode::LockConflict
    );
    b.done(lock(hb, 100, 0, false, 0)).await;
    // A blocking request waits for the holder to let go.
    let waiter = tokio::spawn(async move {
        let r = b.call(lock(hb, 0, 10, true, 5_000)).await;
        (b, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    a.done(Request::Unlock(Unlock {
        handle: ha,
        offset: 0,
        len: 100,
    }))
    .await;
    let (b, r) = waiter.await.unwrap();
    assert_eq!(r, Response::Done);
    assert_eq!(
        a.fails(Request::Unlock(Unlock {
            handle: ha,
            offset: 0,
            len: 100,
        }))
        .await,
        ErrorCode::NotFound
    );
    drop(b);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_waited_for_on_a_replaced_connection_is_not_taken() {
    // The client gave up on this connection and resumed its session on
    // another: a lock request still waiting on the old one must not take
    // the lock later, for a caller who believes it holds nothing.
    let s = Server::start().await;
    let holder = s.session().await;
    let old = s.session().await;
    let hh = holder.open("locked", Disposition::Create, RW).await.handle;
    let ho = old.open("locked", Disposition::Open, RW).await.handle;
    holder.done(lock(hh, 0, 10, true, 0)).await;
    let session = old.session;
    let waiter = tokio::spawn(async move {
        let r = old.call(lock(ho, 0, 10, true, 5_000)).await;
        (old, r)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let resumed = s.connect_as(session);
    assert!(resumed.setup(TOKEN, "default", true).await.unwrap().resumed);
    let unlock = Request::Unlock(Unlock {
        handle: hh,
        offset: 0,
        len: 10,
    });
    holder.done(unlock.clone()).await;
    let (old, r) = waiter.await.unwrap();
    let Response::Error(e) = r else {
        panic!("the lock was taken through a replaced connection: {r:?}");
    };
    assert_eq!(e.code, ErrorCode::NoSession);
    // Nobody holds the range.
    holder.done(lock(hh, 0, 10, true, 0)).await;
    drop(old);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_lock_does_not_fill_the_log() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a.open("contended", Disposition::Create, RW).await.handle;
    let hb = b.open("contended", Disposition::Open, RW).await.handle;
    a.done(lock(ha, 0, 100, true, 0)).await;
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index.unwrap_or(0);
    let before = last_entry();
    assert_eq!(
        b.fails(lock(hb, 0, 10, true, 1_500)).await,
        ErrorCode::LockConflict,
        "held all along"
    );
    // One try, not one every 100 ms: nothing freed the range meanwhile.
    let tries = last_entry() - before;
    assert!(tries <= 2, "{tries} log entries for one waiting lock");
    // Freed while a request waits, it is taken by that request.
    let waiter = tokio::spawn(async move { b.call(lock(hb, 0, 10, true, 5_000)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.done(Request::Unlock(Unlock {
        handle: ha,
        offset: 0,
        len: 100,
    }))
    .await;
    assert_eq!(waiter.await.unwrap(), Response::Done);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_lock_whose_client_gave_up_is_not_taken_later() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a
        .open("abandoned-lock", Disposition::Create, RW)
        .await
        .handle;
    let hb = b.open("abandoned-lock", Disposition::Open, RW).await.handle;
    a.done(lock(ha, 0, 100, true, 0)).await;
    // B also holds 200..210 shared and asks to make it exclusive, behind
    // A's shared lock there: a conversion, given up on too.
    b.done(lock(hb, 200, 10, false, 0)).await;
    a.done(lock(ha, 205, 1, false, 0)).await;

    let gone = CancellationToken::new();
    let b = Arc::new(b);
    let waiters: Vec<_> = [
        lock(hb, 0, 10, true, 20_000),
        lock(hb, 200, 10, true, 20_000),
    ]
    .into_iter()
    .map(|req| {
        let (b, gone) = (Arc::clone(&b), gone.clone());
        tokio::spawn(async move {
            let header = RequestHeader {
                session: b.session,
                seq: 0,
            };
            let bytes = req.encode(&header).unwrap();
            b.raw_until(&bytes, &gone).await
        })
    })
    .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.cancel();
    for w in waiters {
        let r = tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .expect("a request nobody waits for stops waiting")
            .unwrap();
        assert!(
            matches!(&r, Response::Error(e) if e.code == ErrorCode::LockConflict),
            "{r:?}"
        );
    }

    // A lets go. Had B's requests kept trying, they would take both ranges
    // within 100 ms.
    a.done(Request::Unlock(Unlock {
        handle: ha,
        offset: 0,
        len: 100,
    }))
    .await;
    a.done(Request::Unlock(Unlock {
        handle: ha,
        offset: 205,
        len: 1,
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    a.done(lock(ha, 0, 100, true, 0)).await;
    // B still holds its range shared, as before it asked: A shares it.
    a.done(lock(ha, 205, 1, false, 0)).await;
    assert_eq!(
        a.fails(lock(ha, 200, 1, true, 0)).await,
        ErrorCode::LockConflict
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_break_is_pushed_and_acknowledged() {
    let s = Server::start().await;
    let mut a = s.session().await;
    let b = s.session().await;
    let leased = a
        .open_leased("l", Disposition::Create, RW, lease::READ_WRITE)
        .await;
    assert_eq!(leased.lease, lease::READ_WRITE);
    a.call(write(leased.handle, 0, b"cached")).await;
    let opener = tokio::spawn(async move {
        let r = b
            .call(open_req("l", Disposition::Open, access::READ, lease::READ))
            .await;
        (b, r)
    });
    let Notice::LeaseBreak(brk) = a.notice().await;
    assert_eq!(
        (brk.handle, brk.from, brk.to),
        (leased.handle, lease::READ_WRITE, lease::READ)
    );
    // Nobody else can give the lease up for its holder.
    let other = s.session().await;
    assert_eq!(
        other
            .fails(Request::LeaseAck(cairn_proto::wire::LeaseAck {
                handle: leased.handle,
                lease: lease::NONE,
            }))
            .await,
        ErrorCode::StaleHandle
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !opener.is_finished(),
        "the open waits for the holder's acknowledgement"
    );
    // What a holder does: flush what it kept, then acknowledge.
    attr(&a, Request::Flush(leased.handle)).await;
    a.done(Request::LeaseAck(cairn_proto::wire::LeaseAck {
        handle: leased.handle,
        lease: lease::READ,
    }))
    .await;
    let (b, r) = opener.await.unwrap();
    let opened = match r {
        Response::Opened(o) => o,
        other => panic!("{other:?}"),
    };
    assert_eq!(opened.lease, lease::NONE, "a writer is open beside it");
    assert_eq!(
        opened.attr.size, 6,
        "the holder's flushed writes are visible"
    );
    // A repeated acknowledgement is harmless.
    a.done(Request::LeaseAck(cairn_proto::wire::LeaseAck {
        handle: leased.handle,
        lease: lease::READ,
    }))
    .await;
    drop(b);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_never_acknowledges_holds_back_only_its_own_breaks() {
    // The hog's session id sorts first, and it leaves more breaks
    // unacknowledged than a node looks at per session in one round.
    let s = Server::start().await;
    let hog = s.connect_as(cairn_proto::wire::SessionId([0; 16]));
    hog.setup(TOKEN, "default", false).await.unwrap();
    for _ in 0..super::super::leases::PUSH_BATCH + 1 {
        hog.open_leased("hogged", Disposition::OpenOrCreate, RW, lease::READ_WRITE)
            .await;
    }
    // One open breaks every one of them, then gives up waiting.
    let opener = Arc::new(s.session().await);
    let gone = CancellationToken::new();
    let header = RequestHeader {
        session: opener.session,
        seq: opener.next_seq(),
    };
    let bytes = open_req("hogged", Disposition::Open, access::READ, 0)
        .encode(&header)
        .unwrap();
    let waiting = {
        let (opener, gone) = (Arc::clone(&opener), gone.clone());
        tokio::spawn(async move { opener.raw_until(&bytes, &gone).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    gone.cancel();
    waiting.await.unwrap();

    let mut victim = s.session().await;
    let leased = victim
        .open_leased("v", Disposition::Create, RW, lease::READ_WRITE)
        .await;
    let other = Arc::clone(&opener);
    let opens = tokio::spawn(async move {
        other
            .call(open_req("v", Disposition::Open, access::READ, 0))
            .await
    });
    let Notice::LeaseBreak(brk) = victim.notice().await;
    assert_eq!(brk.handle, leased.handle);
    victim
        .done(Request::LeaseAck(cairn_proto::wire::LeaseAck {
            handle: leased.handle,
            lease: brk.to,
        }))
        .await;
    assert!(matches!(opens.await.unwrap(), Response::Opened(_)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_nobody_waits_for_stops_waiting_for_lease_holders() {
    // The holder never acknowledges its break. An open the client gave up
    // on (it failed over, or timed out) must not force its way in up to
    // the break timeout later: it would truncate the file and hold a
    // handle behind the caller's back.
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let leased = a
        .open_leased("l", Disposition::Create, RW, lease::READ_WRITE)
        .await;
    a.call(write(leased.handle, 0, b"kept")).await;
    attr(&a, Request::Flush(leased.handle)).await;
    let gone = CancellationToken::new();
    let header = RequestHeader {
        session: b.session,
        seq: b.next_seq(),
    };
    let bytes = open_req("l", Disposition::Overwrite, RW, 0)
        .encode(&header)
        .unwrap();
    let b = Arc::new(b);
    let opener = {
        let (b, gone) = (Arc::clone(&b), gone.clone());
        tokio::spawn(async move { b.raw_until(&bytes, &gone).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!opener.is_finished(), "the open waits for the holder");
    gone.cancel();
    let r = tokio::time::timeout(Duration::from_secs(2), opener)
        .await
        .expect("an open nobody waits for stops waiting")
        .unwrap();
    let Response::Error(e) = r else {
        panic!("the abandoned open went through: {r:?}");
    };
    assert_eq!(e.code, ErrorCode::Unavailable);
    let st = attr(&a, Request::StatHandle(leased.handle)).await;
    assert_eq!(st.size, 4, "the abandoned overwrite truncated the file");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_that_lowers_nothing_commits_nothing() {
    // Clients acknowledge again after each reconnect.
    let s = Server::start().await;
    let a = s.session().await;
    let leased = a
        .open_leased("acked", Disposition::Create, RW, lease::READ_WRITE)
        .await;
    let ack = |to| {
        Request::LeaseAck(cairn_proto::wire::LeaseAck {
            handle: leased.handle,
            lease: to,
        })
    };
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index.unwrap_or(0);
    a.done(ack(lease::READ)).await;
    let before = last_entry();
    for to in [lease::READ, lease::READ_WRITE, lease::READ, lease::READ] {
        a.done(ack(to)).await;
    }
    // One entry of the node's own may land meanwhile (a session renewal).
    let added = last_entry() - before;
    assert!(
        added <= 1,
        "acknowledgements that lowered nothing were logged: {added}"
    );
    // One that lowers the lease still does.
    a.done(ack(lease::NONE)).await;
    assert!(
        last_entry() > before + added,
        "the lowering acknowledgement was not logged"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_for_no_open_handle_commits_nothing() {
    let s = Server::start().await;
    let a = s.session().await;
    let closed = a.open("gone", Disposition::Create, RW).await.handle;
    a.done(Request::Close(closed)).await;
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index;
    let before = last_entry();
    // A retry after the close, and a guess at the handle the next open
    // gets: a command for the second could apply after that open and lower
    // the lease of a handle that is another session's.
    for stray in [closed, cairn_proto::wire::HandleId(closed.0 + 1)] {
        a.done(Request::LeaseAck(cairn_proto::wire::LeaseAck {
            handle: stray,
            lease: lease::NONE,
        }))
        .await;
    }
    assert_eq!(
        last_entry(),
        before,
        "no log entry for a stray acknowledgement"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_info_sees_unflushed_writes_and_its_time_outlasts_them() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = c.open("t", Disposition::Create, RW).await.handle;
    c.call(write(h, 0, b"not yet flushed")).await;
    // What `cp -a` does: set the time through the handle, then close.
    let info = Request::SetInfo(SetInfo {
        handle: h,
        size: None,
        mtime_ns: Some(7_000_000_000),
        mode: Some(0o600),
    });
    let a = attr(&c, info).await;
    assert_eq!(a.size, 15, "the handle's own writes count");
    c.done(Request::Close(h)).await;
    let after = attr(&c, Request::Stat(PathReq { path: "t".into() })).await;
    assert_eq!(
        (after.size, after.mtime_ns, after.mode),
        (15, 7_000_000_000, 0o600)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_path_info_changes_directories_and_files() {
    let s = Server::start().await;
    let c = s.session().await;
    c.done(Request::Mkdir(Mkdir {
        path: "dir".into(),
        mode: 0o755,
    }))
    .await;
    let set = |path: &str, mode, mtime_ns| {
        Request::SetPathInfo(cairn_proto::wire::SetPathInfo {
            path: path.into(),
            mtime_ns,
            mode,
        })
    };
    let a = attr(&c, set("dir", Some(0o700), Some(3_000_000_000))).await;
    assert_eq!(
        (a.kind, a.mode, a.mtime_ns),
        (EntryKind::Directory, 0o700, 3_000_000_000)
    );
    let o = c.open("dir/f", Disposition::Create, RW).await;
    c.done(Request::Close(o.handle)).await;
    let f = attr(&c, set("dir/f", Some(0o400), None)).await;
    assert_eq!((f.kind, f.mode), (EntryKind::File, 0o400));
    assert_eq!(
        c.fails(set("dir/none", Some(0o600), None)).await,
        ErrorCode::NotFound
    );
    // A replay answers again without applying twice.
    let seq = c.next_seq();
    let first = c.with_seq(seq, &set("dir", None, Some(5))).await;
    let again = c.with_seq(seq, &set("dir", None, Some(5))).await;
    assert_eq!(first, again);
    s.stop().await;
}

fn symlink(path: &str, target: &str) -> Request {
    Request::Symlink(cairn_proto::wire::Symlink {
        path: path.into(),
        target: target.into(),
    })
}

fn read_link(path: &str) -> Request {
    Request::ReadLink(PathReq { path: path.into() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symbolic_links_are_stored_never_followed() {
    let s = Server::start().await;
    let c = s.session().await;
    c.done(Request::Mkdir(Mkdir {
        path: "d".into(),
        mode: 0o755,
    }))
    .await;
    let a = attr(&c, symlink("d/up", "../elsewhere/x.txt")).await;
    assert_eq!(
        (a.name.as_str(), a.kind, a.size, a.mode, a.nlink),
        ("up", EntryKind::Symlink, 18, 0o777, 1)
    );
    // Stat and listings show the link itself, not what it points at.
    let st = attr(
        &c,
        Request::Stat(PathReq {
            path: "d/up".into(),
        }),
    )
    .await;
    assert_eq!((st.kind, st.inode), (EntryKind::Symlink, a.inode));
    match c.call(read_link("d/up")).await {
        Response::LinkTarget(t) => assert_eq!(t.target, "../elsewhere/x.txt"),
        other => panic!("expected a link target, got {other:?}"),
    }
    let listed = match c
        .call(Request::ReadDir(ReadDir {
            path: "d".into(),
            after: None,
            limit: 10,
        }))
        .await
    {
        Response::DirPage(p) => p.entries,
        other => panic!("{other:?}"),
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].kind, EntryKind::Symlink);

    // The errors a client can meet.
    assert_eq!(
        c.fails(symlink("d/up", "y")).await,
        ErrorCode::AlreadyExists
    );
    assert_eq!(c.fails(symlink("nodir/l", "y")).await, ErrorCode::NotFound);
    assert_eq!(
        c.fails(symlink("d/empty", "")).await,
        ErrorCode::InvalidPath
    );
    assert_eq!(
        c.fails(symlink("d/nul", "a\0b")).await,
        ErrorCode::InvalidPath
    );
    let long = "a/".repeat(2048);
    assert_eq!(
        c.fails(symlink("d/long", &long)).await,
        ErrorCode::InvalidPath
    );
    assert_eq!(c.fails(read_link("d")).await, ErrorCode::BadRequest);
    assert_eq!(c.fails(read_link("d/none")).await, ErrorCode::NotFound);
    assert_eq!(
        c.fails(open_req("d/up", Disposition::Open, access::READ, 0))
            .await,
        ErrorCode::IsSymlink
    );
    assert_eq!(
        c.fails(open_req("d/up", Disposition::OpenOrCreate, RW, 0))
            .await,
        ErrorCode::IsSymlink
    );

    // A link renames like a file, can replace a file, and is removed
    // without touching its target.
    let f = c.open("d/file", Disposition::CreateNew, RW).await;
    c.done(Request::Close(f.handle)).await;
    c.done(Request::Rename(Rename {
        from: "d/up".into(),
        to: "d/file".into(),
        replace: true,
    }))
    .await;
    let moved = attr(
        &c,
        Request::Stat(PathReq {
            path: "d/file".into(),
        }),
    )
    .await;
    assert_eq!((moved.kind, moved.inode), (EntryKind::Symlink, a.inode));
    assert_eq!(
        c.fails(Request::Rename(Rename {
            from: "d/file".into(),
            to: "d".into(),
            replace: true,
        }))
        .await,
        ErrorCode::IsDirectory
    );
    c.done(Request::Remove(PathReq {
        path: "d/file".into(),
    }))
    .await;
    assert_eq!(c.fails(read_link("d/file")).await, ErrorCode::NotFound);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_fs_reports_the_disk_less_the_reserve() {
    let s = Server::start().await;
    let c = s.session().await;
    let chunks = &s.node().state.chunks;
    let before = chunks.free_bytes().unwrap();
    let st = match c.call(Request::StatFs).await {
        Response::FsStats(st) => st,
        other => panic!("expected file system stats, got {other:?}"),
    };
    let after = chunks.free_bytes().unwrap();
    assert_eq!(st.total_bytes, chunks.total_bytes().unwrap());
    assert!(st.total_bytes > 0 && st.free_bytes < st.total_bytes);
    // Other processes use the same disk meanwhile: the answer lies between
    // the two readings, give or take what they wrote or freed in between.
    let slack = 64 << 20;
    assert!(
        st.free_bytes + slack >= before.min(after) && st.free_bytes <= before.max(after) + slack,
        "{} is not between {before} and {after}",
        st.free_bytes
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_symlink_is_made_once() {
    let s = Server::start().await;
    let c = s.session().await;
    let seq = c.next_seq();
    let first = c.with_seq(seq, &symlink("l", "t")).await;
    let Response::Attr(first) = first else {
        panic!("expected attributes, got {first:?}");
    };
    // The same sequence number again: the first answer, not already_exists.
    match c.with_seq(seq, &symlink("l", "t")).await {
        Response::Attr(again) => assert_eq!(again.inode, first.inode),
        other => panic!("a replay got {other:?}"),
    }
    // A new request for the same name is refused.
    assert_eq!(c.fails(symlink("l", "t")).await, ErrorCode::AlreadyExists);
    // Renamed since: a repeat still gets the first answer, about the link
    // it made (the answer used to look the path up again: not_found).
    c.done(Request::Rename(Rename {
        from: "l".into(),
        to: "moved".into(),
        replace: false,
    }))
    .await;
    match c.with_seq(seq, &symlink("l", "t")).await {
        Response::Attr(again) => {
            // The rename changed the link's ctime, nothing else.
            let ctime_ns = again.ctime_ns;
            let expected = cairn_proto::wire::Attr { ctime_ns, ..first };
            assert_eq!(again, expected, "the first answer");
        }
        other => panic!("a replay after a rename got {other:?}"),
    }
    // Removed since: the object is gone, and a repeat says so (it used to
    // get `internal`, logged as a damaged directory entry).
    c.done(Request::Remove(PathReq {
        path: "moved".into(),
    }))
    .await;
    match c.with_seq(seq, &symlink("l", "t")).await {
        Response::Error(e) => assert_eq!(e.code, ErrorCode::NotFound, "{}", e.message),
        other => panic!("a replay after a removal got {other:?}"),
    }
    s.stop().await;
}

/// The answer to a path's attribute change describes the object the
/// change was made to, however the name has been used since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_attribute_change_answers_for_the_object_it_changed() {
    let s = Server::start().await;
    let c = s.session().await;
    let o = c.open("old", Disposition::Create, RW).await;
    c.done(Request::Close(o.handle)).await;
    let set = Request::SetPathInfo(cairn_proto::wire::SetPathInfo {
        path: "old".into(),
        mtime_ns: None,
        mode: Some(0o640),
    });
    let as_attr = |r: Response| match r {
        Response::Attr(a) => a,
        other => panic!("expected attributes, got {other:?}"),
    };
    let seq = c.next_seq();
    let first = as_attr(c.with_seq(seq, &set).await);
    assert_eq!((first.inode, first.mode), (o.attr.inode, 0o640));
    // The file moves away and another takes its name.
    c.done(Request::Rename(Rename {
        from: "old".into(),
        to: "new".into(),
        replace: false,
    }))
    .await;
    let other = c.open("old", Disposition::Create, RW).await;
    c.done(Request::Close(other.handle)).await;
    let again = as_attr(c.with_seq(seq, &set).await);
    assert_eq!(again.inode, o.attr.inode, "the file the change was made to");
    assert_eq!(again.mode, 0o640);
    s.stop().await;
}

/// A session that comes back to a node it left gets none of the writes
/// that node still held from before: its client sends again every write no
/// flush acknowledged, and what else the node held may have been replaced
/// through another node meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_drops_what_the_node_held_before() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = c.open("moved", Disposition::Create, RW).await.handle;
    // Held here, unflushed, when the connection went.
    assert!(matches!(
        c.call(write(h, 0, b"old data here")).await,
        Response::Written(_)
    ));
    let back = s.connect_as(c.session);
    back.setup(super::TOKEN, "default", true).await.unwrap();
    // What the client stands behind now (it flushed "new" elsewhere).
    let seq = c.next_seq();
    assert!(matches!(
        back.with_seq(seq, &write(h, 0, b"new")).await,
        Response::Written(_)
    ));
    let seq = c.next_seq();
    match back.with_seq(seq, &Request::Flush(h)).await {
        Response::Attr(a) => assert_eq!(a.size, 3),
        other => panic!("expected attributes, got {other:?}"),
    }
    assert_eq!(data(&back, read(h, 0, 64)).await, (b"new".to_vec(), true));
    s.stop().await;
}

/// The connection a resume replaced, here or on another node, cannot
/// flush what it held over what the client wrote since: its flush is
/// fenced off in the log, and its later requests get `no_session`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_connection_cannot_flush_over_the_resumed_session() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = c.open("fenced", Disposition::Create, RW).await.handle;
    assert!(matches!(
        c.call(write(h, 0, b"stale bytes")).await,
        Response::Written(_)
    ));
    let back = s.connect_as(c.session);
    back.setup(super::TOKEN, "default", true).await.unwrap();
    // The old connection, late (as on a node that was cut off or frozen):
    // refused. (A flush it was committing already is refused by the log:
    // see `Command::Fenced`.)
    assert_eq!(c.fails(Request::Flush(h)).await, ErrorCode::NoSession);
    assert!(matches!(
        back.call(write(h, 0, b"new")).await,
        Response::Written(_)
    ));
    assert!(matches!(
        back.call(Request::Flush(h)).await,
        Response::Attr(_)
    ));
    assert_eq!(
        c.fails(write(h, 0, b"stale again")).await,
        ErrorCode::NoSession
    );
    assert_eq!(data(&back, read(h, 0, 64)).await, (b"new".to_vec(), true));
    s.stop().await;
}

/// An append a flush made durable, repeated after a resume (its answer was
/// lost with the connection; the node that took it may be gone): answered
/// from the metadata, not appended again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_append_repeated_after_a_resume_lands_once() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = open_append(&c, "log").await;
    let seq = c.next_seq();
    let first = c.with_seq(seq, &write(h, 0, b"one\n")).await;
    assert!(matches!(first, Response::Written(_)), "{first:?}");
    assert!(matches!(c.call(Request::Flush(h)).await, Response::Attr(_)));
    let back = s.connect_as(c.session);
    back.setup(super::TOKEN, "default", true).await.unwrap();
    assert_eq!(back.with_seq(seq, &write(h, 0, b"one\n")).await, first);
    match back.with_seq(c.next_seq(), &write(h, 0, b"two\n")).await {
        Response::Written(w) => assert_eq!((w.offset, w.size), (4, 8)),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        back.call(Request::Flush(h)).await,
        Response::Attr(_)
    ));
    assert_eq!(data(&back, read(h, 0, 100)).await.0, b"one\ntwo\n");
    back.done(Request::Close(h)).await;
    s.stop().await;
}

/// A writer that flushed, failed over and closed on the new node leaves
/// the file with its real ETag (BLAKE3 of the bytes), not the provisional
/// one its flush on the old node gave it.
/// Writes `bytes` through `h` in 4 MiB pieces.
async fn write_all(c: &super::Conn, h: cairn_proto::wire::HandleId, bytes: &[u8]) {
    for (i, piece) in bytes.chunks(4 << 20).enumerate() {
        let at = (i as u64) << 22;
        assert!(matches!(
            c.call(write(h, at, piece)).await,
            Response::Written(_)
        ));
    }
}

/// The ETag of `path` once it is `want`, or after 10 s.
async fn etag_once(c: &super::Conn, path: &str, want: [u8; 32]) -> Option<[u8; 32]> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stat = attr(c, Request::Stat(PathReq { path: path.into() })).await;
        if stat.etag == Some(want) || std::time::Instant::now() > deadline {
            return stat.etag;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_not_yet_taken_hold_the_nodes_read_buffers() {
    // Two 4 MiB buffers for the whole node.
    let s = Server::start_configured("download_buffer_bytes_max = 8388608", "").await;
    let c = Arc::new(s.session().await);
    let h = c.open("held-answers", Disposition::Create, RW).await.handle;
    let bytes: Vec<u8> = (0..(12u32 << 20)).map(|i| (i % 241) as u8).collect();
    write_all(&c, h, &bytes).await;
    attr(&c, Request::Flush(h)).await;
    // A client that does not take its answers: two of them hold both.
    let mut held = Vec::new();
    for i in 0..2u64 {
        held.push(c.pieces(&read(h, i << 22, 4 << 20)).await);
    }
    let third = {
        let c = Arc::clone(&c);
        tokio::spawn(async move { c.pieces(&read(h, 8 << 20, 4 << 20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished(), "a third answer waits for a buffer");
    // Small reads are copied out and need none.
    match c.call(read(h, 100, 4096)).await {
        Response::Data(d) => assert_eq!(d.data[..], bytes[100..4196]),
        other => panic!("{other:?}"),
    }
    drop(held.pop());
    let third = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("a taken answer frees its buffer")
        .unwrap();
    match super::decode_answer(&third) {
        Response::Data(d) => assert!(d.data[..] == bytes[8 << 20..], "third read's bytes"),
        other => panic!("{other:?}"),
    }
    drop(held);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_nobody_closes_after_gets_its_real_etag() {
    let s = Server::start().await;
    let c = s.session().await;
    let other = s.session().await;
    let bytes: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 249) as u8).collect();
    let real = *blake3::hash(&bytes).as_bytes();
    let h = c.open("orphan", Disposition::Create, RW).await.handle;
    write_all(&c, h, &bytes).await;
    let flushed = attr(&c, Request::Flush(h)).await;
    assert_ne!(flushed.etag, Some(real), "a flush's ETag is provisional");
    // Another writer holds the file open: its close would settle, so the
    // file is left alone meanwhile.
    let w = other.open("orphan", Disposition::Open, RW).await.handle;
    // The session goes without closing its handle (as when it expires).
    c.done(Request::Logoff).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let stat = attr(
        &other,
        Request::Stat(PathReq {
            path: "orphan".into(),
        }),
    )
    .await;
    assert_eq!(stat.etag, flushed.etag, "settled under an open writer");
    other.done(Request::Close(w)).await;
    assert_eq!(etag_once(&other, "orphan", real).await, Some(real));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_after_a_resume_settles_the_etag() {
    let s = Server::start().await;
    let c = s.session().await;
    let h = c.open("settled", Disposition::Create, RW).await.handle;
    let bytes: Vec<u8> = (0..(5u32 << 20)).map(|i| (i % 251) as u8).collect();
    write_all(&c, h, &bytes).await;
    let flushed = attr(&c, Request::Flush(h)).await;
    let real = *blake3::hash(&bytes).as_bytes();
    assert_ne!(flushed.etag, Some(real), "a flush's ETag is provisional");
    let back = s.connect_as(c.session);
    back.setup(super::TOKEN, "default", true).await.unwrap();
    // The session's numbers go on from where the old connection left them.
    let close = back.with_seq(c.next_seq(), &Request::Close(h)).await;
    assert_eq!(close, Response::Done);
    let stat = attr(
        &back,
        Request::Stat(PathReq {
            path: "settled".into(),
        }),
    )
    .await;
    assert_eq!(stat.etag, Some(real));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connections_handles_outlive_it_by_the_handle_timeout() {
    // Renewed every 500 ms.
    let s = Server::start_with("handle_timeout_secs = 2").await;
    let a = s.session().await;
    let mut exclusive = open_req("kept", Disposition::Create, RW, 0);
    if let Request::Open(o) = &mut exclusive {
        o.share_access = 0;
    }
    assert!(matches!(a.call(exclusive).await, Response::Opened(_)));
    // Lost just before the node's next renewal: the session's last
    // renewal is then as old as it gets when the connection goes.
    let meta = &s.node().state.meta;
    let renewed = || {
        crate::meta::sessions::load_session(&meta.snapshot(), &a.session)
            .unwrap()
            .renewed_ns
    };
    let first = renewed();
    let mut last = first;
    while last == first {
        tokio::time::sleep(Duration::from_millis(5)).await;
        last = renewed();
    }
    // When that renewal was, on this process's clock (the node's is the
    // system clock).
    let wall_ns = crate::clock::system_time_ns(std::time::SystemTime::now());
    let ago = Duration::from_nanos(u64::try_from(wall_ns - last).unwrap_or(0));
    let renewal = tokio::time::Instant::now() - ago;
    tokio::time::sleep_until(renewal + Duration::from_millis(440)).await;
    a.lose_connection().await;
    let b = s.session().await;
    let reader = || open_req("kept", Disposition::Open, access::READ, 0);
    // 1.81 s after the loss: expiring after the bare timeout, counted from
    // the renewal, the leader may have closed the handle at renewal + 2 s.
    tokio::time::sleep_until(renewal + Duration::from_millis(2_250)).await;
    assert_eq!(
        b.fails(reader()).await,
        ErrorCode::SharingViolation,
        "the handle is kept for the whole handle timeout after its connection is lost"
    );
    // And closed not long after.
    let deadline = renewal + Duration::from_secs(6);
    loop {
        match b.call(reader()).await {
            Response::Opened(_) => break,
            Response::Error(e) if e.code == ErrorCode::SharingViolation => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the handle never expired"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("{other:?}"),
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_node_adds_nothing_to_the_log() {
    // Expiry is checked every 500 ms; no session is due, none is live.
    let s = Server::start_with("handle_timeout_secs = 2").await;
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index.unwrap_or(0);
    // Past the node's start-up writes (shares, tokens).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = last_entry();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(last_entry(), before, "log entries with nothing to expire");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_link_target_never_reaches_the_log() {
    // A target may be megabytes long: refused at apply, it would still be
    // an entry in every node's log.
    let s = Server::start().await;
    let c = s.session().await;
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index.unwrap_or(0);
    // Past the node's start-up writes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = last_entry();
    let long = "a".repeat(1 << 20);
    for target in ["", "a\0b", &long, &long] {
        assert_eq!(c.fails(symlink("l", target)).await, ErrorCode::InvalidPath);
    }
    // One entry of the node's own may land meanwhile (a session renewal);
    // the four refusals would add four.
    let added = last_entry() - before;
    assert!(added <= 1, "refused links were logged: {added} entries");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_tried_on_a_held_range_commits_nothing() {
    // A client polling for a lock with non-blocking tries.
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    let ha = a.open("polled", Disposition::Create, RW).await.handle;
    let hb = b.open("polled", Disposition::Open, RW).await.handle;
    let lock = |handle, wait_ms| {
        Request::Lock(cairn_proto::wire::Lock {
            handle,
            offset: 0,
            len: 10,
            exclusive: true,
            wait_ms,
        })
    };
    a.done(lock(ha, 0)).await;
    let raft = s.node().state.committer.raft().clone();
    let last_entry = || raft.metrics().borrow().last_log_index.unwrap_or(0);
    let before = last_entry();
    for _ in 0..5 {
        assert_eq!(b.fails(lock(hb, 0)).await, ErrorCode::LockConflict);
    }
    // A blocking one that times out, too.
    assert_eq!(b.fails(lock(hb, 100)).await, ErrorCode::LockConflict);
    // One entry of the node's own may land meanwhile (a session renewal).
    let added = last_entry() - before;
    assert!(added <= 1, "refused lock tries were logged: {added}");
    // Once the range is free, a try takes it.
    a.done(Request::Unlock(cairn_proto::wire::Unlock {
        handle: ha,
        offset: 0,
        len: 10,
    }))
    .await;
    b.done(lock(hb, 0)).await;
    s.stop().await;
}

#[test]
fn a_cut_off_node_leaves_its_clients_half_the_expiry_to_resume() {
    use super::super::{cut_off_after, renew_every};
    let s = Duration::from_secs;
    // (handle timeout, write timeout) -> when the node closes its clients.
    for (handle, write, closes) in [
        (60, 10, s(30)),
        (12, 2, Duration::from_millis(7_500)),
        (20, 10, Duration::from_millis(12_500)),
        (600, 10, s(200)),
    ] {
        let (handle, write) = (s(handle), s(write));
        let after = cut_off_after(handle, write);
        assert_eq!(
            after, closes,
            "handle timeout {handle:?}, write timeout {write:?}"
        );
        // The leader expires a session a renewal period after the timeout.
        assert!(after <= (handle + renew_every(handle)) / 2);
    }
}
