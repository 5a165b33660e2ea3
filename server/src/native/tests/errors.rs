//! Every error a client can cause, with the code it gets and nothing
//! changed. (`range_not_satisfiable` is HTTP's; `unavailable` needs a
//! cluster without a quorum and `internal` a failing disk: the cluster
//! tests cover the first.)

use cairn_proto::ErrorCode;
use cairn_proto::wire::{
    Disposition, HandleId, Mkdir, PathReq, Read, ReadDir, Request, RequestHeader, Response,
    SetInfo, Write, access,
};

use super::{READ_TOKEN, RW, Server, TOKEN, open_req};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_out_of_order_requests_are_bad_requests() {
    let s = Server::start().await;
    let c = s.connect();
    let bad = |r: Response| match r {
        Response::Error(e) => e.code,
        other => panic!("{other:?}"),
    };
    // Not a frame; a frame with a flipped bit; an unknown kind.
    assert_eq!(bad(c.raw(b"\x01\x00").await), ErrorCode::BadRequest);
    let mut frame = Request::KeepAlive
        .encode(&RequestHeader::default())
        .unwrap();
    frame[6] ^= 1;
    assert_eq!(bad(c.raw(&frame).await), ErrorCode::BadRequest);
    let mut unknown = Vec::new();
    cairn_proto::wire::encode_frame(0x7777, &[0; 17], &mut unknown).unwrap();
    assert_eq!(bad(c.raw(&unknown).await), ErrorCode::BadRequest);
    // Each is counted where an operator looks for a misbehaving client.
    let metrics = s.node().state.metrics.render();
    let series = "cairn_native_requests_total{op=\"undecodable\",result=\"bad_request\"} 3";
    assert!(
        metrics.lines().any(|l| l == series),
        "no `{series}` in:\n{metrics}"
    );
    // Session setup before negotiating; no common version.
    let setup = Request::SessionSetup(cairn_proto::wire::SessionSetup {
        token: TOKEN.into(),
        share: "default".into(),
        resume: false,
    });
    assert_eq!(bad(c.with_seq(0, &setup).await), ErrorCode::BadRequest);
    let old = Request::Negotiate(cairn_proto::wire::Negotiate {
        versions: vec![0, 2],
        capabilities: 0,
        client: "t".into(),
    });
    assert_eq!(bad(c.with_seq(0, &old).await), ErrorCode::BadRequest);
    // A state change without a sequence number.
    let c = s.session().await;
    let open = open_req("x", Disposition::Create, RW, 0);
    assert_eq!(bad(c.with_seq(0, &open).await), ErrorCode::BadRequest);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_tokens_and_shares() {
    let s = Server::start().await;
    // No session on this connection yet.
    let c = s.connect();
    let n = Request::Negotiate(cairn_proto::wire::Negotiate {
        versions: vec![1],
        capabilities: 0,
        client: "t".into(),
    });
    c.with_seq(0, &n).await;
    assert_eq!(c.fails(Request::KeepAlive).await, ErrorCode::NoSession);
    assert_eq!(
        c.setup("no-such-token-0123456789", "default", false).await,
        Err(ErrorCode::Unauthorized)
    );
    assert_eq!(
        c.setup(TOKEN, "other", false).await,
        Err(ErrorCode::Forbidden)
    );
    assert_eq!(
        c.setup(TOKEN, "Not A Share!", false).await,
        Err(ErrorCode::InvalidPath)
    );
    assert_eq!(
        c.setup(TOKEN, "default", true).await,
        Err(ErrorCode::NoSession),
        "nothing to resume"
    );
    // A read-only token reads but changes nothing.
    let w = s.session().await;
    let o = w.open("r.txt", Disposition::Create, RW).await;
    w.done(Request::Close(o.handle)).await;
    let r = s.connect();
    r.setup(READ_TOKEN, "default", false).await.unwrap();
    let ro = r.open("r.txt", Disposition::Open, access::READ).await;
    r.done(Request::Close(ro.handle)).await;
    assert_eq!(
        r.fails(open_req("r.txt", Disposition::Open, RW, 0)).await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        r.fails(Request::Mkdir(Mkdir {
            path: "d".into(),
            mode: 0o755
        }))
        .await,
        ErrorCode::Forbidden
    );
    assert_eq!(
        r.fails(Request::Remove(PathReq {
            path: "r.txt".into()
        }))
        .await,
        ErrorCode::Forbidden
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_the_access_it_was_set_up_with() {
    let s = Server::start().await;
    let w = s.session().await;
    let o = w.open("kept.txt", Disposition::Create, RW).await;
    w.done(Request::Close(o.handle)).await;
    // Someone holding only a read-only token, and the read-write
    // session's id, can neither resume it nor set it up again.
    for resume in [true, false] {
        let r = s.connect_as(w.session);
        assert_eq!(
            r.setup(READ_TOKEN, "default", resume).await,
            Err(ErrorCode::Forbidden),
            "read-only token, resume: {resume}"
        );
        assert_eq!(
            r.fails(open_req("kept.txt", Disposition::Open, RW, 0))
                .await,
            ErrorCode::NoSession,
            "no session on a refused connection"
        );
    }
    // Nor does a read-write token widen a read-only session.
    let r = s.connect();
    r.setup(READ_TOKEN, "default", false).await.unwrap();
    for resume in [true, false] {
        let again = s.connect_as(r.session);
        assert_eq!(
            again.setup(TOKEN, "default", resume).await,
            Err(ErrorCode::Forbidden),
            "read-write token, resume: {resume}"
        );
    }
    // The same token resumes, and the session writes as before (its
    // requests numbered on from the session's last).
    let back = s.connect_as(w.session);
    back.setup(TOKEN, "default", true).await.unwrap();
    let open = open_req("kept.txt", Disposition::Open, RW, 0);
    let Response::Opened(o) = back.with_seq(w.next_seq(), &open).await else {
        panic!("the resumed session opens for writing");
    };
    let closed = back.with_seq(w.next_seq(), &Request::Close(o.handle)).await;
    assert_eq!(closed, Response::Done);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_not_set_up_anew() {
    let s = Server::start().await;
    let first = s.session().await;
    // The setup again (its answer lost, say): the same session.
    let again = s.connect_as(first.session);
    assert!(!again.setup(TOKEN, "default", false).await.unwrap().resumed);
    let o = again.open("r.txt", Disposition::Create, RW).await;
    // Once resumed, a setup anew is refused: its connection would carry
    // no binding, and the handle's requests on it would all fail.
    let resumed = s.connect_as(first.session);
    assert!(resumed.setup(TOKEN, "default", true).await.unwrap().resumed);
    let anew = s.connect_as(first.session);
    assert_eq!(
        anew.setup(TOKEN, "default", false).await,
        Err(ErrorCode::AlreadyExists)
    );
    let Response::Attr(_) = resumed.call(Request::Flush(o.handle)).await else {
        panic!("the resumed connection serves the handle");
    };
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setup_outliving_its_connection_binds_nothing() {
    // A setup still under way when its connection ends (a slow barrier or
    // commit, a client gone meanwhile) must not bind the session to that
    // connection: nothing would unbind it, and this node would renew the
    // session, with its handles and locks, for ever.
    let s = Server::start().await;
    let first = s.session().await;
    first.lose_connection().await;
    for resume in [true, false] {
        let late = s.connect_as(first.session);
        late.lose_connection().await;
        assert_eq!(
            late.setup(TOKEN, "default", resume).await,
            Err(ErrorCode::Unavailable)
        );
        assert!(
            !late.server.is_live(&first.session),
            "bound to an ended connection"
        );
    }
    // The session is still there to resume from a live connection.
    let back = s.connect_as(first.session);
    assert!(back.setup(TOKEN, "default", true).await.unwrap().resumed);
    assert!(back.server.is_live(&first.session));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_entries() {
    let s = Server::start().await;
    let c = s.session().await;
    let stat = |p: &str| Request::Stat(PathReq { path: p.into() });
    assert_eq!(c.fails(stat("../etc/passwd")).await, ErrorCode::InvalidPath);
    assert_eq!(c.fails(stat("a/./b")).await, ErrorCode::InvalidPath);
    assert_eq!(c.fails(stat("missing")).await, ErrorCode::NotFound);
    assert_eq!(
        c.fails(open_req("missing", Disposition::Open, RW, 0)).await,
        ErrorCode::NotFound
    );
    assert_eq!(
        c.fails(open_req("no/dir/f", Disposition::Create, RW, 0))
            .await,
        ErrorCode::NotFound
    );
    let o = c.open("f", Disposition::CreateNew, RW).await;
    assert_eq!(
        c.fails(open_req("f", Disposition::CreateNew, RW, 0)).await,
        ErrorCode::AlreadyExists
    );
    c.done(Request::Mkdir(Mkdir {
        path: "d/e".into(),
        mode: 0o755,
    }))
    .await;
    assert_eq!(
        c.fails(open_req("d", Disposition::Open, access::READ, 0))
            .await,
        ErrorCode::IsDirectory
    );
    assert_eq!(
        c.fails(Request::ReadDir(ReadDir {
            path: "f".into(),
            after: None,
            limit: 10
        }))
        .await,
        ErrorCode::NotDirectory
    );
    assert_eq!(
        c.fails(Request::Remove(PathReq { path: "d".into() })).await,
        ErrorCode::NotEmpty
    );
    c.done(Request::Close(o.handle)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_access_sharing_and_sizes() {
    let s = Server::start().await;
    let a = s.session().await;
    let b = s.session().await;
    // Unknown and other sessions' handles are stale to this session.
    assert_eq!(
        a.fails(Request::Flush(HandleId(987_654))).await,
        ErrorCode::StaleHandle
    );
    let o = a.open("f", Disposition::Create, RW).await;
    assert_eq!(
        b.fails(Request::Read(Read {
            handle: o.handle,
            offset: 0,
            len: 1
        }))
        .await,
        ErrorCode::StaleHandle
    );
    // Nor may another session close it, whether or not this node has
    // served the handle yet (the log refuses it), and the refusal is what a
    // retry gets too.
    let close = Request::Close(o.handle);
    let seq = b.next_seq();
    for _ in 0..2 {
        let Response::Error(e) = b.with_seq(seq, &close).await else {
            panic!("another session closed the handle")
        };
        assert_eq!(e.code, ErrorCode::StaleHandle);
    }
    a.call(Request::StatHandle(o.handle)).await;
    assert_eq!(
        b.fails(Request::Close(o.handle)).await,
        ErrorCode::StaleHandle
    );
    assert!(matches!(
        a.call(Request::StatHandle(o.handle)).await,
        Response::Attr(_)
    ));
    // A read-only handle cannot write or truncate.
    let r = a.open("f", Disposition::Open, access::READ).await;
    let w = |h| {
        Request::Write(Write {
            handle: h,
            offset: 0,
            data: bytes::Bytes::from_static(b"x"),
        })
    };
    assert_eq!(a.fails(w(r.handle)).await, ErrorCode::Forbidden);
    assert_eq!(
        a.fails(Request::SetInfo(SetInfo {
            handle: r.handle,
            size: None,
            mtime_ns: None,
            mode: Some(0o600)
        }))
        .await,
        ErrorCode::Forbidden
    );
    // Share modes: a handle that shares only reading keeps writers out.
    let mut exclusive = open_req("g", Disposition::Create, RW, 0);
    if let Request::Open(o) = &mut exclusive {
        o.share_access = access::READ;
    }
    let Response::Opened(g) = a.call(exclusive).await else {
        panic!("open g")
    };
    assert_eq!(
        b.fails(open_req("g", Disposition::Open, RW, 0)).await,
        ErrorCode::SharingViolation
    );
    // A write larger than max_write is refused.
    let big = Request::Write(Write {
        handle: g.handle,
        offset: 0,
        data: vec![0; (4 << 20) + 1].into(),
    });
    assert_eq!(a.fails(big).await, ErrorCode::PayloadTooLarge);
    // Closed handles are gone.
    a.done(Request::Close(g.handle)).await;
    assert_eq!(
        a.fails(Request::StatHandle(g.handle)).await,
        ErrorCode::StaleHandle
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_truncates_past_the_largest_file_are_refused() {
    let s = Server::start().await;
    let a = s.session().await;
    let o = a.open("huge", Disposition::Create, RW).await;
    let at = |offset: u64| {
        Request::Write(Write {
            handle: o.handle,
            offset,
            data: vec![7; 4 << 20].into(),
        })
    };
    // Past the end of u64 (which overflowed, a panic), far past the
    // largest file (every 4 MiB of it a chunk reference to build and hash
    // at each flush), and just past it (1 TiB by default).
    for offset in [u64::MAX - 1, 1 << 50, (1 << 40) - 1] {
        assert_eq!(
            a.fails(at(offset)).await,
            ErrorCode::PayloadTooLarge,
            "a write at {offset}"
        );
    }
    let extend = |size| {
        Request::SetInfo(SetInfo {
            handle: o.handle,
            size: Some(size),
            mtime_ns: None,
            mode: None,
        })
    };
    assert_eq!(
        a.fails(extend((1 << 40) + 1)).await,
        ErrorCode::PayloadTooLarge
    );
    // Refused writes hold no write buffers: more of them than the node's
    // whole budget (512 MiB) leave room for a real one.
    for _ in 0..130 {
        assert_eq!(a.fails(at(u64::MAX - 1)).await, ErrorCode::PayloadTooLarge);
    }
    assert!(matches!(a.call(at(0)).await, Response::Written(_)));
    let Response::Attr(attr) = a.call(extend(8 << 20)).await else {
        panic!("extend to 8 MiB")
    };
    assert_eq!(attr.size, 8 << 20);
    a.done(Request::Close(o.handle)).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_chunk_is_reported_not_returned() {
    let s = Server::start().await;
    let c = s.session().await;
    let o = c.open("big", Disposition::Create, RW).await;
    let content = vec![7u8; 1 << 20];
    c.call(Request::Write(Write {
        handle: o.handle,
        offset: 0,
        data: content.clone().into(),
    }))
    .await;
    c.done(Request::Close(o.handle)).await;
    // Flip one byte of every stored chunk file.
    let dir = s._dir.path().join("chunks");
    let mut flipped = 0;
    for entry in walk(&dir) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if bytes.len() >= 1 << 20 {
            bytes[1000] ^= 0xff;
            std::fs::write(&entry, bytes).unwrap();
            flipped += 1;
        }
    }
    assert!(flipped >= 1, "no chunk file found under {}", dir.display());
    let r = c.open("big", Disposition::Open, access::READ).await;
    assert_eq!(
        c.fails(Request::Read(Read {
            handle: r.handle,
            offset: 0,
            len: 4096
        }))
        .await,
        ErrorCode::Corrupt
    );
    s.stop().await;
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_one_frame_and_a_refusal_quotes_little_of_it() {
    let s = Server::start().await;
    let c = s.session().await;
    let header = RequestHeader {
        session: c.session,
        seq: 0,
    };
    // Bytes after the frame would be kept alive by views of it (a write's
    // data) and counted nowhere.
    let mut padded = Request::Stat(PathReq { path: "x".into() })
        .encode(&header)
        .unwrap();
    padded.extend_from_slice(&[0u8; 100]);
    let Response::Error(e) = c.raw(&padded).await else {
        panic!("a padded stream was served");
    };
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(e.message.contains("one frame per stream"), "{}", e.message);
    // A client's version list is of any length; the refusal is not.
    let many = Request::Negotiate(cairn_proto::wire::Negotiate {
        versions: (1000..11_000).collect(),
        capabilities: 0,
        client: "future".into(),
    });
    let Response::Error(e) = c.raw(&many.encode(&header).unwrap()).await else {
        panic!("no common version, yet negotiated");
    };
    assert_eq!(e.code, ErrorCode::BadRequest);
    assert!(
        e.message.len() < 200,
        "{} bytes of refusal",
        e.message.len()
    );
    s.stop().await;
}
