use super::*;
use crate::wire::{HeldLock, LeaseAck, LockKind, LockRange, LockTested, Notice, TestLock};
use crate::wire::{decode_frame, decode_frame_bytes};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9/._-]{0,20}"
}

fn handle() -> impl Strategy<Value = HandleId> {
    any::<u64>().prop_map(HandleId)
}

fn lock_kind() -> impl Strategy<Value = LockKind> {
    prop_oneof![
        Just(LockKind::Unlocked),
        Just(LockKind::Shared),
        Just(LockKind::Exclusive),
    ]
}

fn disposition() -> impl Strategy<Value = Disposition> {
    prop_oneof![
        Just(Disposition::Open),
        Just(Disposition::Create),
        Just(Disposition::CreateNew),
        Just(Disposition::Overwrite),
        Just(Disposition::OpenOrCreate),
    ]
}

fn attr() -> impl Strategy<Value = Attr> {
    (
        name(),
        prop_oneof![
            Just(EntryKind::File),
            Just(EntryKind::Directory),
            Just(EntryKind::Symlink)
        ],
        any::<u64>(),
        any::<u64>(),
        any::<u32>(),
        any::<i64>(),
        proptest::option::of(any::<[u8; 32]>()),
    )
        .prop_map(|(name, kind, inode, size, mode, t, etag)| Attr {
            name,
            kind,
            inode,
            size,
            mode,
            nlink: 1,
            mtime_ns: t,
            ctime_ns: t.wrapping_add(1),
            etag,
        })
}

fn request() -> impl Strategy<Value = Request> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..200);
    prop_oneof![
        (
            proptest::collection::vec(any::<u16>(), 0..4),
            any::<u64>(),
            name()
        )
            .prop_map(
                |(versions, capabilities, client)| Request::Negotiate(Negotiate {
                    versions,
                    capabilities,
                    client
                })
            ),
        (name(), name(), any::<bool>()).prop_map(|(token, share, resume)| {
            Request::SessionSetup(SessionSetup {
                token,
                share,
                resume,
            })
        }),
        Just(Request::KeepAlive),
        Just(Request::Logoff),
        Just(Request::StatFs),
        (
            name(),
            disposition(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u32>(),
            any::<u8>()
        )
            .prop_map(
                |(path, disposition, access, share_access, flags, mode, lease)| {
                    Request::Open(Open {
                        path,
                        disposition,
                        access,
                        share_access,
                        flags,
                        mode,
                        lease,
                    })
                }
            ),
        (handle(), any::<u64>(), any::<u32>()).prop_map(|(handle, offset, len)| Request::Read(
            Read {
                handle,
                offset,
                len
            }
        )),
        (handle(), any::<u64>(), bytes).prop_map(|(handle, offset, data)| {
            Request::Write(Write {
                handle,
                offset,
                data: data.into(),
            })
        }),
        handle().prop_map(Request::Flush),
        handle().prop_map(Request::Close),
        handle().prop_map(Request::StatHandle),
        name().prop_map(|path| Request::Stat(PathReq { path })),
        name().prop_map(|path| Request::Remove(PathReq { path })),
        name().prop_map(|path| Request::ReadLink(PathReq { path })),
        (name(), name()).prop_map(|(path, target)| Request::Symlink(Symlink { path, target })),
        (
            handle(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(handle, size, mtime_ns, mode)| Request::SetInfo(SetInfo {
                handle,
                size,
                mtime_ns,
                mode
            })),
        (name(), proptest::option::of(name()), any::<u32>())
            .prop_map(|(path, after, limit)| Request::ReadDir(ReadDir { path, after, limit })),
        (name(), any::<u32>()).prop_map(|(path, mode)| Request::Mkdir(Mkdir { path, mode })),
        (name(), name(), any::<bool>()).prop_map(|(from, to, replace)| Request::Rename(Rename {
            from,
            to,
            replace
        })),
        (
            handle(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            any::<u32>()
        )
            .prop_map(
                |(handle, offset, len, exclusive, wait_ms)| Request::Lock(Lock {
                    handle,
                    offset,
                    len,
                    exclusive,
                    wait_ms
                })
            ),
        (handle(), any::<u64>(), any::<u64>()).prop_map(|(handle, offset, len)| Request::Unlock(
            Unlock {
                handle,
                offset,
                len
            }
        )),
        (handle(), any::<u8>())
            .prop_map(|(handle, lease)| Request::LeaseAck(LeaseAck { handle, lease })),
        (
            handle(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            lock_kind(),
            any::<u32>()
        )
            .prop_map(|(handle, owner, offset, len, kind, wait_ms)| {
                Request::LockRange(LockRange {
                    handle,
                    owner,
                    offset,
                    len,
                    kind,
                    wait_ms,
                })
            }),
        (
            handle(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(handle, owner, offset, len, exclusive)| {
                Request::TestLock(TestLock {
                    handle,
                    owner,
                    offset,
                    len,
                    exclusive,
                })
            }),
        (
            name(),
            proptest::option::of(any::<i64>()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(|(path, mtime_ns, mode)| Request::SetPathInfo(SetPathInfo {
                path,
                mtime_ns,
                mode
            })),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (0..ErrorCode::ALL.len(), name()).prop_map(|(i, message)| Response::Error(ErrorReply {
            code: ErrorCode::ALL[i],
            message
        })),
        (
            any::<u16>(),
            any::<u64>(),
            any::<u32>(),
            any::<u64>(),
            proptest::option::of(name())
        )
            .prop_map(|(v, c, m, t, leader)| {
                Response::Negotiated(Negotiated {
                    version: v,
                    capabilities: c,
                    max_read: m,
                    max_write: m,
                    handle_timeout_ms: t,
                    replay_window: m,
                    node_id: t,
                    leader,
                })
            }),
        (any::<bool>(), proptest::collection::vec(handle(), 0..5)).prop_map(
            |(resumed, handles)| {
                Response::SessionReady(SessionReady {
                    resumed,
                    writable: !resumed,
                    handles,
                })
            }
        ),
        Just(Response::Done),
        (handle(), any::<bool>(), attr(), any::<u8>()).prop_map(
            |(handle, created, attr, lease)| {
                Response::Opened(Opened {
                    handle,
                    created,
                    attr,
                    lease,
                })
            }
        ),
        (
            proptest::collection::vec(any::<u8>(), 0..200),
            any::<bool>()
        )
            .prop_map(|(data, eof)| Response::Data(Data {
                data: data.into(),
                eof
            })),
        (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(count, offset, size)| {
            Response::Written(Written {
                count,
                offset,
                size,
            })
        }),
        attr().prop_map(Response::Attr),
        (
            proptest::collection::vec(attr(), 0..4),
            proptest::option::of(name())
        )
            .prop_map(|(entries, next_after)| Response::DirPage(DirPage {
                entries,
                next_after
            })),
        name().prop_map(|target| Response::LinkTarget(LinkTarget { target })),
        (any::<u64>(), any::<u64>()).prop_map(|(total_bytes, free_bytes)| {
            Response::FsStats(FsStats {
                total_bytes,
                free_bytes,
            })
        }),
        proptest::option::of((any::<u64>(), any::<u64>(), any::<bool>())).prop_map(|held| {
            Response::LockTested(LockTested {
                conflict: held.map(|(offset, len, exclusive)| HeldLock {
                    offset,
                    len,
                    exclusive,
                }),
            })
        }),
    ]
}

fn header() -> impl Strategy<Value = RequestHeader> {
    (any::<[u8; 16]>(), any::<u64>()).prop_map(|(s, seq)| RequestHeader {
        session: SessionId(s),
        seq,
    })
}

proptest! {
    #[test]
    fn requests_round_trip(h in header(), req in request()) {
        let bytes = req.encode(&h).unwrap();
        let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(Request::decode(&frame).unwrap(), (h, req));
    }

    #[test]
    fn responses_round_trip(resp in response()) {
        let bytes = resp.encode().unwrap();
        let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
        prop_assert_eq!(Response::decode(&frame).unwrap(), resp);
    }

    #[test]
    fn pieces_are_the_same_frame(h in header(), req in request(), resp in response()) {
        // Reads and writes go out in pieces (their data not copied); the
        // bytes must be exactly those of the one-buffer encoding, and they
        // decode from a shared buffer to the same message.
        let whole = req.encode(&h).unwrap();
        prop_assert_eq!(req.encode_chunks(&h).unwrap().concat(), whole.clone());
        let shared = bytes::Bytes::from(whole);
        let (frame, _) = decode_frame_bytes(&shared).unwrap().unwrap();
        prop_assert_eq!(Request::decode(&frame).unwrap(), (h, req));
        let whole = resp.encode().unwrap();
        prop_assert_eq!(resp.encode_chunks().unwrap().concat(), whole.clone());
        let shared = bytes::Bytes::from(whole);
        let (frame, _) = decode_frame_bytes(&shared).unwrap().unwrap();
        prop_assert_eq!(Response::decode(&frame).unwrap(), resp);
    }

    #[test]
    fn garbage_payloads_never_panic(kind in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..128)) {
        let frame = Frame { kind, payload: payload.into() };
        let _ = Request::decode(&frame);
        let _ = Response::decode(&frame);
        let _ = Notice::decode(&frame);
    }
}

#[test]
fn appended_fields_are_ignored() {
    // A newer peer may append fields to a body; this version must still read it.
    let req = Request::Flush(HandleId(9));
    let bytes = req.encode(&RequestHeader::default()).unwrap();
    let (mut frame, _) = decode_frame(&bytes).unwrap().unwrap();
    frame.payload = [&frame.payload[..], &[1, 2, 3]].concat().into();
    assert_eq!(Request::decode(&frame).unwrap().1, req);
}

#[test]
fn negotiated_reads_with_and_without_the_leader() {
    let mut n = Negotiated {
        version: 1,
        capabilities: 3,
        max_read: 4 << 20,
        max_write: 4 << 20,
        handle_timeout_ms: 60_000,
        replay_window: 1024,
        node_id: 2,
        leader: Some("10.0.0.1:7443".into()),
    };
    let bytes = Response::Negotiated(n.clone()).encode().unwrap();
    let (mut frame, _) = decode_frame(&bytes).unwrap().unwrap();
    assert_eq!(
        Response::decode(&frame).unwrap(),
        Response::Negotiated(n.clone())
    );
    // A server from before the field ends the body at `node_id`.
    let leader_bytes = 1 + 1 + "10.0.0.1:7443".len();
    let len = frame.payload.len() - leader_bytes;
    frame.payload = frame.payload.slice(..len);
    n.leader = None;
    assert_eq!(Response::decode(&frame).unwrap(), Response::Negotiated(n));
}

#[test]
fn unknown_kinds_are_named() {
    let frame = Frame {
        kind: 0x7777,
        payload: vec![0; 17].into(),
    };
    assert_eq!(
        Request::decode(&frame),
        Err(MessageError::UnknownKind(0x7777))
    );
}

#[test]
fn only_state_changes_are_sequenced() {
    assert!(
        Request::Open(Open {
            path: "a".into(),
            disposition: Disposition::Open,
            access: access::READ,
            share_access: 0,
            flags: 0,
            mode: 0,
            lease: 0
        })
        .is_sequenced()
    );
    assert!(
        !Request::Read(Read {
            handle: HandleId(1),
            offset: 0,
            len: 1
        })
        .is_sequenced()
    );
    assert!(!Request::Flush(HandleId(1)).is_sequenced());
    // An acknowledgement only ever lowers a lease: repeating it is harmless.
    assert!(
        !Request::LeaseAck(LeaseAck {
            handle: HandleId(1),
            lease: 0
        })
        .is_sequenced()
    );
}

#[test]
fn a_small_write_padded_out_does_not_keep_its_frame() {
    let req = Request::Write(Write {
        handle: HandleId(3),
        offset: 7,
        data: Bytes::from_static(b"x"),
    });
    let bytes = req.encode(&RequestHeader::default()).unwrap();
    let (mut frame, _) = decode_frame(&bytes).unwrap().unwrap();
    frame.payload = [&frame.payload[..], &vec![0u8; 1 << 20]].concat().into();
    let range = frame.payload.as_ptr_range();
    let Request::Write(w) = Request::decode(&frame).unwrap().1 else {
        panic!("not a write");
    };
    assert_eq!(&w.data[..], b"x");
    assert!(
        !range.contains(&w.data.as_ptr()),
        "the data is a view of the padded frame"
    );
}

#[test]
fn a_write_that_is_most_of_its_frame_is_a_view_of_it() {
    let req = Request::Write(Write {
        handle: HandleId(3),
        offset: 7,
        data: Bytes::from(vec![5u8; 64 << 10]),
    });
    let bytes = req.encode(&RequestHeader::default()).unwrap();
    let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
    let range = frame.payload.as_ptr_range();
    let Request::Write(w) = Request::decode(&frame).unwrap().1 else {
        panic!("not a write");
    };
    assert!(range.contains(&w.data.as_ptr()), "copied for nothing");
}
