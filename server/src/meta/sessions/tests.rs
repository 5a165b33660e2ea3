use cairn_proto::wire::{Disposition, HandleId, SessionId, access};
use cairn_proto::{ContentHash, ErrorCode, FilePath, InodeId, ShareName};

use crate::meta::batch::apply_batch;
use crate::meta::command::OpenFile;
use crate::meta::records::{ChunkRef, Content, FileData};
use crate::meta::store::MetaStore;
use crate::meta::{Applied, Command, MetaError, Precondition};

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) store: std::sync::Arc<MetaStore>,
}

pub(super) fn share() -> ShareName {
    ShareName::parse("s").unwrap()
}

pub(super) fn path(p: &str) -> FilePath {
    FilePath::parse(p).unwrap()
}

pub(super) const S1: SessionId = SessionId([1; 16]);
pub(super) const S2: SessionId = SessionId([2; 16]);

impl Fixture {
    pub(super) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(dir.path()).unwrap();
        let f = Self { _dir: dir, store };
        f.ok(Command::CreateShare {
            share: share(),
            now_ns: 1,
        });
        for s in [S1, S2] {
            f.ok(Command::OpenSession {
                session: s,
                share: share(),
                writable: true,
                now_ns: 10,
            });
        }
        f
    }

    pub(super) fn run(&self, cmd: Command) -> Result<Applied, MetaError> {
        let mut r = apply_batch(&self.store, &[&cmd], Vec::new(), false).unwrap();
        match r.pop().unwrap() {
            Ok(a) => Ok(a),
            Err(crate::meta::apply::ApplyError::Meta(e)) => Err(e),
            Err(e) => panic!("store error {e}"),
        }
    }

    pub(super) fn ok(&self, cmd: Command) -> Applied {
        self.run(cmd).unwrap()
    }

    pub(super) fn seq(
        &self,
        session: SessionId,
        seq: u64,
        cmd: Command,
    ) -> Result<Applied, MetaError> {
        self.run(Command::Sequenced {
            session,
            seq,
            cmd: Box::new(cmd),
        })
    }

    pub(super) fn open(
        &self,
        session: SessionId,
        p: &str,
        d: Disposition,
        acc: u8,
        share_access: u8,
    ) -> Result<Applied, MetaError> {
        self.run(open_cmd(session, p, d, acc, share_access))
    }

    fn exists(&self, p: &str) -> bool {
        self.store.snapshot().resolve(&share(), &path(p)).is_ok()
    }

    fn chunk_refs(&self, hash: &ContentHash) -> u64 {
        self.store.chunk_record(hash).unwrap().map_or(0, |r| r.refs)
    }
}

fn open_cmd(session: SessionId, p: &str, d: Disposition, acc: u8, share_access: u8) -> Command {
    Command::OpenFile(OpenFile {
        session,
        share: share(),
        path: path(p),
        disposition: d,
        access: acc,
        share_access,
        flags: 0,
        mode: 0o644,
        now_ns: 20,
        lease: 0,
        force: false,
    })
}

pub(super) const RW: u8 = access::READ | access::WRITE;
pub(super) const ALL: u8 = access::READ | access::WRITE | access::DELETE;

fn chunked(hash: ContentHash, len: u32) -> FileData {
    FileData {
        size: u64::from(len),
        etag: ContentHash::of(b"provisional"),
        content_type: None,
        content: Content::Chunks(vec![ChunkRef { hash, len }]),
    }
}

#[test]
fn dispositions() {
    let f = Fixture::new();
    let e = |r: Result<Applied, MetaError>| r.unwrap_err().code();
    assert_eq!(
        e(f.open(S1, "a", Disposition::Open, RW, ALL)),
        ErrorCode::NotFound
    );
    assert_eq!(
        e(f.open(S1, "a", Disposition::Overwrite, RW, ALL)),
        ErrorCode::NotFound
    );
    let created = f.open(S1, "a", Disposition::CreateNew, RW, ALL).unwrap();
    assert!(created.created && created.handle.is_some());
    assert_eq!(
        e(f.open(S1, "a", Disposition::CreateNew, RW, ALL)),
        ErrorCode::AlreadyExists
    );
    let again = f.open(S1, "a", Disposition::OpenOrCreate, RW, ALL).unwrap();
    assert!(!again.created);
    assert_ne!(again.handle, created.handle);
    assert_eq!(
        e(f.open(S1, "missing/a", Disposition::Create, RW, ALL)),
        ErrorCode::NotFound
    );
    assert_eq!(
        e(f.open(S1, "", Disposition::Open, RW, ALL)),
        ErrorCode::IsDirectory
    );
    assert_eq!(
        e(f.open(S1, "a", Disposition::Overwrite, access::READ, ALL)),
        ErrorCode::Forbidden,
        "truncating needs write access"
    );
    assert_eq!(
        e(f.open(SessionId([9; 16]), "a", Disposition::Open, RW, ALL)),
        ErrorCode::NoSession
    );
}

#[test]
fn share_modes_conflict_between_sessions() {
    let f = Fixture::new();
    let reader_only = f
        .open(S1, "a", Disposition::Create, RW, access::READ)
        .unwrap();
    assert_eq!(
        f.open(S2, "a", Disposition::Open, access::WRITE, ALL)
            .unwrap_err()
            .code(),
        ErrorCode::SharingViolation,
        "the first handle shares only reading"
    );
    f.open(S2, "a", Disposition::Open, access::READ, access::READ)
        .expect_err("the first handle writes, which this one does not share");
    f.open(S2, "a", Disposition::Open, access::READ, RW)
        .expect("sharing read and write with a writer is fine");
    f.ok(Command::CloseHandle {
        handle: HandleId(reader_only.handle.unwrap()),
        settle: None,
        now_ns: 30,
    });
    f.open(S2, "a", Disposition::Open, access::WRITE, RW)
        .expect("once it is closed, writing is allowed");
}

#[test]
fn replayed_requests_return_the_first_result_and_apply_once() {
    let f = Fixture::new();
    let create = open_cmd(S1, "a", Disposition::CreateNew, RW, ALL);
    let first = f.seq(S1, 1, create.clone()).unwrap();
    let replay = f.seq(S1, 1, create.clone()).unwrap();
    assert_eq!(
        first, replay,
        "a replayed create-new is answered, not refused"
    );
    assert_eq!(
        f.seq(S1, 2, create).unwrap_err().code(),
        ErrorCode::AlreadyExists,
        "a new sequence number is a new request"
    );
    // A refusal is remembered too: once the file exists, the retry of the
    // refused request still sees its refusal.
    let rename = Command::Rename {
        share: share(),
        from: path("b"),
        to: path("c"),
        replace: false,
        now_ns: 40,
    };
    assert_eq!(
        f.seq(S1, 3, rename.clone()).unwrap_err().code(),
        ErrorCode::NotFound
    );
    f.open(S1, "b", Disposition::CreateNew, RW, ALL).unwrap();
    assert_eq!(
        f.seq(S1, 3, rename.clone()).unwrap_err().code(),
        ErrorCode::NotFound
    );
    assert!(f.exists("b"));
    f.seq(S1, 4, rename.clone()).unwrap();
    f.seq(S1, 4, rename)
        .expect("replayed rename succeeds again without a source");
    assert!(f.exists("c") && !f.exists("b"));
    let remove = Command::Remove {
        share: share(),
        path: path("c"),
        now_ns: 50,
        precondition: Precondition::default(),
    };
    f.seq(S1, 5, remove.clone()).unwrap();
    f.seq(S1, 5, remove.clone())
        .expect("replayed remove answers success");
    assert_eq!(
        f.seq(S1, 6, remove).unwrap_err().code(),
        ErrorCode::NotFound
    );
    // The same number in another session is another request.
    assert_eq!(
        f.seq(S2, 1, open_cmd(S2, "a", Disposition::CreateNew, RW, ALL))
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyExists
    );
}

#[test]
fn a_flush_under_a_binding_a_resume_replaced_is_refused() {
    let f = Fixture::new();
    let h = f.open(S1, "a", Disposition::Create, RW, ALL).unwrap();
    let handle = HandleId(h.handle.unwrap());
    let flush = |binding, base, data: &[u8]| Command::Fenced {
        session: S1,
        binding,
        cmd: Box::new(Command::SetContent {
            handle,
            base,
            file: chunked(ContentHash::of(data), data.len() as u32),
            now_ns: 30,
        }),
        appends: Vec::new(),
    };
    // Under the binding the session was set up with.
    f.ok(flush(0, h.etag.unwrap(), b"first"));
    // `chunked` gives every content this ETag.
    let flushed = ContentHash::of(b"provisional");
    f.ok(Command::BindSession {
        session: S1,
        previous: 0,
        binding: 7,
        now_ns: 40,
    });
    // A resume that read the binding before this one committed (a client
    // gave up on it and resumed elsewhere) does not replace it.
    assert_eq!(
        f.run(Command::BindSession {
            session: S1,
            previous: 0,
            binding: 8,
            now_ns: 41,
        })
        .unwrap_err()
        .code(),
        ErrorCode::PreconditionFailed
    );
    // The node that held the session before, its flush late: refused,
    // although it builds on the current content.
    assert_eq!(
        f.run(flush(0, flushed, b"stale")).unwrap_err().code(),
        ErrorCode::NoSession
    );
    let inode = f.store.snapshot().resolve(&share(), &path("a")).unwrap();
    assert_eq!(inode.1.size(), 5, "the stale flush changed nothing");
    f.ok(flush(7, flushed, b"second"));
    // Another session's binding is its own.
    f.ok(Command::BindSession {
        session: S2,
        previous: 0,
        binding: 9,
        now_ns: 40,
    });
    assert_eq!(
        f.run(Command::BindSession {
            session: SessionId([9; 16]),
            previous: 0,
            binding: 1,
            now_ns: 40,
        })
        .unwrap_err()
        .code(),
        ErrorCode::NoSession
    );
    f.ok(Command::CloseSession {
        session: S1,
        now_ns: 50,
    });
    let binding = crate::meta::keys::session_binding(&S1);
    assert!(f.store.db().get(&binding).unwrap().is_none());
}

#[test]
fn a_flush_records_where_its_appends_went_for_the_replay_window() {
    use crate::meta::command::AppendPlaced;
    use crate::meta::sessions::placed_append;
    let f = Fixture::new();
    let h = f.open(S1, "log", Disposition::Create, RW, ALL).unwrap();
    let handle = HandleId(h.handle.unwrap());
    let flush = |base, appends: Vec<AppendPlaced>| Command::Fenced {
        session: S1,
        binding: 0,
        cmd: Box::new(Command::SetContent {
            handle,
            base,
            file: chunked(ContentHash::of(b"x"), 1),
            now_ns: 30,
        }),
        appends,
    };
    let placed = |seq| AppendPlaced {
        seq,
        offset: seq * 10,
        size: seq * 10 + 1,
    };
    f.ok(flush(h.etag.unwrap(), vec![placed(3), placed(5)]));
    let snap = || f.store.snapshot();
    assert_eq!(placed_append(&snap(), &S1, 5).unwrap(), Some((50, 51)));
    assert_eq!(placed_append(&snap(), &S1, 4).unwrap(), None);
    assert_eq!(placed_append(&snap(), &S2, 5).unwrap(), None);
    // A later flush's appends push older ones out of the window.
    let far = 4 + super::REPLAY_WINDOW;
    f.ok(flush(ContentHash::of(b"provisional"), vec![placed(far)]));
    assert_eq!(placed_append(&snap(), &S1, 3).unwrap(), None);
    assert_eq!(placed_append(&snap(), &S1, 5).unwrap(), Some((50, 51)));
    // A refused (fenced) flush records nothing.
    f.ok(Command::BindSession {
        session: S1,
        previous: 0,
        binding: 4,
        now_ns: 40,
    });
    assert!(
        f.run(flush(
            ContentHash::of(b"provisional"),
            vec![placed(far + 1)]
        ))
        .is_err()
    );
    assert_eq!(placed_append(&snap(), &S1, far + 1).unwrap(), None);
    f.ok(Command::CloseSession {
        session: S1,
        now_ns: 50,
    });
    assert_eq!(placed_append(&snap(), &S1, far).unwrap(), None);
}

/// A sequenced no-op of session S1 for each of `seqs`.
fn renew_with_numbers(f: &Fixture, seqs: impl IntoIterator<Item = u64>) {
    for seq in seqs {
        let renew = Command::RenewSessions {
            sessions: vec![],
            now_ns: 1,
        };
        f.seq(S1, seq, renew).unwrap();
    }
}

fn replay_entries(f: &Fixture, session: &SessionId) -> Vec<u64> {
    let prefix = crate::meta::keys::replays(session);
    f.store
        .db()
        .prefix_iterator(&prefix)
        .map_while(|kv| kv.ok().filter(|(k, _)| k.starts_with(&prefix)))
        .filter_map(|(k, _)| crate::meta::keys::trailing_u64(&k))
        .collect()
}

#[test]
fn replay_entries_out_of_the_window_go_whatever_the_gaps() {
    // Every third number records nothing (an append, a refused request).
    let f = Fixture::new();
    let w = super::REPLAY_WINDOW;
    let recorded: Vec<u64> = (1..=3 * w).filter(|s| s % 3 != 0).collect();
    renew_with_numbers(&f, recorded.iter().copied());
    let last = 3 * w - 1;
    let kept: Vec<u64> = recorded.into_iter().filter(|&s| s > last - w).collect();
    assert_eq!(replay_entries(&f, &S1), kept);
    // A number the window has already passed is applied but not kept:
    // nothing would ever delete it.
    renew_with_numbers(&f, [5]);
    assert_eq!(replay_entries(&f, &S1), kept);
}

#[test]
fn replay_table_is_bounded() {
    let f = Fixture::new();
    let n = super::REPLAY_WINDOW + 50;
    renew_with_numbers(&f, 1..=n);
    assert_eq!(replay_entries(&f, &S1).len() as u64, super::REPLAY_WINDOW);
}

#[test]
fn unlinked_open_files_live_until_the_last_close() {
    let f = Fixture::new();
    let h = f.open(S1, "a", Disposition::Create, RW, ALL).unwrap();
    let handle = HandleId(h.handle.unwrap());
    let chunk = ContentHash::of(b"data");
    let set = f.ok(Command::SetContent {
        handle,
        base: h.etag.unwrap(),
        file: chunked(chunk, 4),
        now_ns: 30,
    });
    assert_eq!(set.size, 4);
    assert_eq!(f.chunk_refs(&chunk), 1);
    f.ok(Command::Remove {
        share: share(),
        path: path("a"),
        now_ns: 40,
        precondition: Precondition::default(),
    });
    assert!(!f.exists("a"));
    let inode = f.store.snapshot();
    let rec = crate::meta::sessions::load_handle(&inode, handle).unwrap();
    let kept = crate::meta::apply::load_inode(&inode, rec.inode).unwrap();
    assert_eq!(
        (kept.nlink, kept.size()),
        (0, 4),
        "still readable through the handle"
    );
    assert_eq!(f.chunk_refs(&chunk), 1);
    f.ok(Command::CloseHandle {
        handle,
        settle: None,
        now_ns: 50,
    });
    assert_eq!(
        f.chunk_refs(&chunk),
        0,
        "the last close releases the content"
    );
    assert!(crate::meta::apply::load_inode(&f.store.snapshot(), rec.inode).is_err());
}

#[test]
fn stale_base_and_read_only_handles_are_refused() {
    let f = Fixture::new();
    let h = f.open(S1, "a", Disposition::Create, RW, ALL).unwrap();
    let handle = HandleId(h.handle.unwrap());
    let cmd = |base| Command::SetContent {
        handle,
        base,
        file: chunked(ContentHash::of(b"x"), 1),
        now_ns: 30,
    };
    f.ok(cmd(h.etag.unwrap()));
    assert_eq!(
        f.run(cmd(h.etag.unwrap())).unwrap_err().code(),
        ErrorCode::PreconditionFailed,
        "another flush happened in between"
    );
    let ro = f
        .open(S2, "a", Disposition::Open, access::READ, ALL)
        .unwrap();
    assert_eq!(
        f.run(Command::SetAttr {
            handle: HandleId(ro.handle.unwrap()),
            mode: Some(0o600),
            mtime_ns: None,
            now_ns: 40
        })
        .unwrap_err()
        .code(),
        ErrorCode::Forbidden
    );
}

#[test]
fn close_settles_the_provisional_etag() {
    let f = Fixture::new();
    let h = f.open(S1, "a", Disposition::Create, RW, ALL).unwrap();
    let handle = HandleId(h.handle.unwrap());
    let provisional = ContentHash::of(b"provisional");
    let real = ContentHash::of(b"real");
    f.ok(Command::SetContent {
        handle,
        base: h.etag.unwrap(),
        file: chunked(ContentHash::of(b"x"), 1),
        now_ns: 30,
    });
    let closed = f.ok(Command::CloseHandle {
        handle,
        settle: Some((provisional, real)),
        now_ns: 40,
    });
    assert_eq!(closed.etag, Some(real));
    assert_eq!(
        f.run(Command::CloseHandle {
            handle,
            settle: None,
            now_ns: 41
        })
        .unwrap_err()
        .code(),
        ErrorCode::StaleHandle
    );
}

/// Content in one chunk, with the provisional ETag a native flush gives.
fn flushed(hash: ContentHash) -> FileData {
    let chunks = vec![ChunkRef { hash, len: 1 }];
    FileData {
        size: 1,
        etag: crate::meta::settle::manifest_etag(&chunks),
        content_type: None,
        content: Content::Chunks(chunks),
    }
}

/// Creates `a` through a handle of S1 and flushes `seed` into it as a
/// native flush does (a provisional ETag): the handle, the inode and the
/// content.
fn create_flushed(f: &Fixture, seed: &[u8]) -> (HandleId, InodeId, FileData) {
    let h = f.open(S1, "a", Disposition::Create, RW, ALL).unwrap();
    let (handle, inode) = (HandleId(h.handle.unwrap()), h.inode.unwrap());
    let file = flushed(ContentHash::of(seed));
    f.ok(Command::SetContent {
        handle,
        base: h.etag.unwrap(),
        file: file.clone(),
        now_ns: 30,
    });
    (handle, inode, file)
}

#[test]
fn provisional_etags_stay_marked_until_settled() {
    use crate::meta::settle::{has_writer, unsettled};
    let f = Fixture::new();
    let (handle, inode, first) = create_flushed(&f, b"x");
    let marks = || unsettled(&f.store.snapshot(), None, 10).unwrap();
    let etag = || {
        f.store
            .snapshot()
            .resolve(&share(), &path("a"))
            .unwrap()
            .1
            .etag()
    };
    assert_eq!(marks(), vec![(inode, first.etag)]);
    assert!(has_writer(&f.store.snapshot(), inode).unwrap());
    let second = flushed(ContentHash::of(b"y"));
    f.ok(Command::SetContent {
        handle,
        base: first.etag,
        file: second.clone(),
        now_ns: 31,
    });
    // A settle of the first flush, late: the file and its newer mark stay.
    f.ok(Command::SettleEtag {
        inode,
        provisional: first.etag,
        real: ContentHash::of(b"x, hashed"),
    });
    assert_eq!(marks(), vec![(inode, second.etag)]);
    assert_eq!(etag(), Some(second.etag));
    // The session goes without settling (as a logoff or expiry does).
    f.ok(Command::CloseSession {
        session: S1,
        now_ns: 40,
    });
    assert!(!has_writer(&f.store.snapshot(), inode).unwrap());
    assert_eq!(marks(), vec![(inode, second.etag)]);
    let real = ContentHash::of(b"y, hashed");
    f.ok(Command::SettleEtag {
        inode,
        provisional: second.etag,
        real,
    });
    assert_eq!(marks(), vec![]);
    assert_eq!(etag(), Some(real));
    // A file written whole (a real ETag) is not marked.
    let h = f.open(S2, "a", Disposition::Open, RW, ALL).unwrap();
    f.ok(Command::SetContent {
        handle: HandleId(h.handle.unwrap()),
        base: real,
        file: FileData {
            etag: ContentHash::of(b"z"),
            ..flushed(ContentHash::of(b"z"))
        },
        now_ns: 50,
    });
    assert_eq!(marks(), vec![]);
}

#[test]
fn a_settle_for_a_file_gone_since_changes_nothing() {
    use crate::meta::settle::unsettled;
    let f = Fixture::new();
    let (_, inode, flush) = create_flushed(&f, b"x");
    f.ok(Command::CloseSession {
        session: S1,
        now_ns: 40,
    });
    // The leader reads the mark, and the file is removed before its
    // settle applies: removing it dropped the mark with it.
    assert_eq!(
        unsettled(&f.store.snapshot(), None, 10).unwrap(),
        vec![(inode, flush.etag)]
    );
    f.ok(Command::Remove {
        share: share(),
        path: path("a"),
        now_ns: 50,
        precondition: Precondition::default(),
    });
    assert_eq!(unsettled(&f.store.snapshot(), None, 10).unwrap(), vec![]);
    f.ok(Command::SettleEtag {
        inode,
        provisional: flush.etag,
        real: ContentHash::of(b"x, hashed"),
    });
    assert!(!f.exists("a"));
    assert!(
        f.store
            .db()
            .get(crate::meta::keys::inode(inode))
            .unwrap()
            .is_none(),
        "the settle brought no inode back"
    );
    assert_eq!(unsettled(&f.store.snapshot(), None, 10).unwrap(), vec![]);
}

#[test]
fn expired_sessions_lose_their_handles_and_replays() {
    let f = Fixture::new();
    let h = f
        .seq(
            S1,
            1,
            open_cmd(S1, "a", Disposition::Create, RW, access::READ),
        )
        .unwrap();
    f.ok(Command::RenewSessions {
        sessions: vec![S2],
        now_ns: 100,
    });
    f.ok(Command::ExpireSessions {
        now_ns: 100,
        timeout_ns: 50,
    });
    assert_eq!(
        f.open(S1, "a", Disposition::Open, RW, ALL)
            .unwrap_err()
            .code(),
        ErrorCode::NoSession
    );
    f.open(S2, "a", Disposition::Open, RW, ALL)
        .expect("the expired session's exclusive handle is gone");
    assert!(
        crate::meta::sessions::load_handle(&f.store.snapshot(), HandleId(h.handle.unwrap()))
            .is_err()
    );
    let prefix = crate::meta::keys::replays(&S1);
    assert!(
        f.store
            .db()
            .prefix_iterator(&prefix)
            .next()
            .is_none_or(|kv| !kv.unwrap().0.starts_with(&prefix))
    );
}

fn lock(handle: HandleId, offset: u64, len: u64, exclusive: bool) -> Command {
    Command::Lock {
        handle,
        offset,
        len,
        exclusive,
    }
}

#[test]
fn byte_range_locks_conflict_only_across_handles() {
    let f = Fixture::new();
    let a = HandleId(
        f.open(S1, "a", Disposition::Create, RW, ALL)
            .unwrap()
            .handle
            .unwrap(),
    );
    let b = HandleId(
        f.open(S2, "a", Disposition::Open, RW, ALL)
            .unwrap()
            .handle
            .unwrap(),
    );
    f.ok(lock(a, 0, 100, true));
    f.ok(lock(a, 0, 100, true));
    f.ok(lock(a, 50, 100, false));
    let code = |r: Result<Applied, MetaError>| r.unwrap_err().code();
    // Another length at an offset the handle holds would replace the
    // range held (bytes 10..100 let go unseen).
    assert_eq!(code(f.run(lock(a, 0, 10, true))), ErrorCode::LockConflict);
    assert_eq!(code(f.run(lock(b, 99, 1, false))), ErrorCode::LockConflict);
    f.ok(lock(b, 150, 10, false));
    f.ok(lock(b, 150, 10, false));
    assert_eq!(
        code(f.run(lock(b, 140, 0, true))),
        ErrorCode::LockConflict,
        "shared overlap"
    );
    f.ok(lock(b, 200, 0, true));
    assert_eq!(
        code(f.run(lock(a, 1 << 40, 1, false))),
        ErrorCode::LockConflict,
        "len 0 reaches any offset"
    );
    assert_eq!(
        code(f.run(Command::Unlock {
            handle: a,
            offset: 0,
            len: 99
        })),
        ErrorCode::NotFound
    );
    f.ok(Command::Unlock {
        handle: a,
        offset: 0,
        len: 100,
    });
    f.ok(Command::Unlock {
        handle: a,
        offset: 50,
        len: 100,
    });
    f.ok(lock(b, 0, 10, true));
    f.ok(Command::CloseHandle {
        handle: b,
        settle: None,
        now_ns: 60,
    });
    f.ok(lock(a, 0, 0, true));
}

#[test]
fn delete_on_close_removes_the_name_at_close() {
    let f = Fixture::new();
    let doc = |session, acc| {
        Command::OpenFile(OpenFile {
            session,
            share: share(),
            path: path("tmp"),
            disposition: Disposition::OpenOrCreate,
            access: acc,
            share_access: ALL,
            flags: cairn_proto::wire::open_flags::DELETE_ON_CLOSE,
            mode: 0o600,
            now_ns: 20,
            lease: 0,
            force: false,
        })
    };
    assert_eq!(f.run(doc(S1, RW)).unwrap_err().code(), ErrorCode::Forbidden);
    let h = HandleId(f.run(doc(S1, ALL)).unwrap().handle.unwrap());
    let other = HandleId(
        f.open(S2, "tmp", Disposition::Open, RW, ALL)
            .unwrap()
            .handle
            .unwrap(),
    );
    let chunk = ContentHash::of(b"tmp");
    let base = f
        .store
        .snapshot()
        .resolve(&share(), &path("tmp"))
        .unwrap()
        .1
        .etag()
        .unwrap();
    f.ok(Command::SetContent {
        handle: other,
        base,
        file: chunked(chunk, 3),
        now_ns: 25,
    });
    f.ok(Command::CloseHandle {
        handle: h,
        settle: None,
        now_ns: 30,
    });
    assert!(
        !f.exists("tmp"),
        "the name goes with the delete-on-close handle"
    );
    assert_eq!(
        f.chunk_refs(&chunk),
        1,
        "the other handle still has the file"
    );
    f.ok(Command::CloseHandle {
        handle: other,
        settle: None,
        now_ns: 40,
    });
    assert_eq!(f.chunk_refs(&chunk), 0);
}

mod leases;
mod locks;
