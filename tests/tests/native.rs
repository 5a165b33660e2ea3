//! The native protocol on real 3-node clusters: durable handles that carry
//! on through a kill -9 of the node the client talks to and of the Raft
//! leader, and through a node frozen and woken, requests applied exactly once whatever the retries, share modes,
//! unlink while open, directory paging, handle expiry.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{Client, ClientError, NativeConfig, OpenOptions};
use cairn_proto::ErrorCode;
use cairn_proto::wire::{
    Disposition, HeldLock, LockKind, Open, PathReq, Rename, Request, Response, Write, access,
    open_flags,
};
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::hold::{HoldSpec, Holder};
use cairn_tests::random_bytes;

const MIB: usize = 1 << 20;

fn config(c: &Cluster, first: Option<usize>) -> NativeConfig {
    c.native_config(first)
}

async fn client(c: &Cluster, first: Option<usize>) -> Client {
    Client::connect(config(c, first)).await.unwrap()
}

/// Three nodes that close handles 2 s after their session goes quiet.
async fn short_handle_timeout() -> Cluster {
    let c = Cluster::start(
        3,
        ClusterOptions {
            cluster_extra: "handle_timeout_secs = 2\n".into(),
            ..ClusterOptions::default()
        },
    );
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    c
}

async fn connected_node(c: &Cluster, client: &Client) -> usize {
    c.node_at(&client.current_node().await).unwrap()
}

/// The whole file, read through a fresh session.
async fn read_all(c: &Cluster, path: &str) -> Vec<u8> {
    let reader = client(c, None).await;
    let mut out = Vec::new();
    reader.get(path, &mut out, &|_| {}).await.unwrap();
    reader.logoff().await.unwrap();
    out
}

/// Writes `data` in 1 MiB pieces through `file` from `offset`.
async fn write_pieces(file: &cairn_client::File, offset: usize, data: &[u8]) {
    for (i, piece) in data.chunks(MIB).enumerate() {
        file.write_at((offset + i * MIB) as u64, Bytes::copy_from_slice(piece))
            .await
            .unwrap();
    }
}

/// Opens, writes half, kills node `victim` (chosen once the client is
/// connected), writes the rest through the same handle, closes; also reads
/// at an offset through a handle opened before the kill. The application
/// code sees no error.
async fn handle_survives_kill(
    c: &mut Cluster,
    first: Option<usize>,
    victim: impl Fn(usize, usize) -> usize,
) {
    let data = random_bytes(40 * MIB, 7);
    let old = random_bytes(12 * MIB, 8);
    let session = client(c, first).await;
    let setup = session
        .open("old.bin", OpenOptions::create())
        .await
        .unwrap();
    setup.write_at(0, Bytes::from(old.clone())).await.unwrap();
    setup.close().await.unwrap();
    let reader = session.open("old.bin", OpenOptions::read()).await.unwrap();
    assert_eq!(
        reader.read_at(3 * MIB as u64, MIB).await.unwrap(),
        old[3 * MIB..4 * MIB]
    );

    let file = session
        .open("big.bin", OpenOptions::create())
        .await
        .unwrap();
    write_pieces(&file, 0, &data[..12 * MIB]).await;
    file.flush().await.unwrap();
    // Some written but not flushed when the node dies.
    write_pieces(&file, 12 * MIB, &data[12 * MIB..20 * MIB]).await;
    let connected = connected_node(c, &session).await;
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    let kill = victim(connected, leader);
    c.nodes[kill].kill9();
    let stalled = Instant::now();
    write_pieces(&file, 20 * MIB, &data[20 * MIB..]).await;
    let after = stalled.elapsed();
    file.close().await.unwrap();
    assert_eq!(
        reader.read_at(9 * MIB as u64, 2 * MIB).await.unwrap(),
        old[9 * MIB..11 * MIB],
        "a read handle opened before the kill reads on at its offsets"
    );
    reader.close().await.unwrap();
    let back = read_all(c, "big.bin").await;
    assert!(
        back == data,
        "content differs after the failover ({} bytes back)",
        back.len()
    );
    let stat = session.metadata("big.bin").await.unwrap();
    assert_eq!(
        stat.etag,
        Some(*blake3::hash(&data).as_bytes()),
        "the ETag is the content's BLAKE3"
    );
    eprintln!(
        "killed node {kill} (connected {connected}, leader {leader}); writes after the kill took {after:?}; reconnects {}",
        session.reconnects()
    );
    session.logoff().await.unwrap();
    c.nodes[kill].relaunch();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_survive_a_kill_of_the_connected_node() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    handle_survives_kill(&mut c, None, |connected, _| connected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_survive_a_kill_of_the_leader() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    // Talk to a follower, so the node that dies is only the leader.
    let follower = (leader + 1) % 3;
    handle_survives_kill(&mut c, Some(follower), |connected, leader| {
        assert_ne!(connected, leader);
        leader
    })
    .await;
}

/// A client that prefers the leader moves its session there from the node
/// it reached first; one that does not stays where it landed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_that_prefers_the_leader_moves_there() {
    let c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let follower = (leader + 1) % 3;
    // The follower must know the leader to name it.
    let started = std::time::Instant::now();
    while c.status(follower).await.and_then(|s| s["leader"].as_u64()) != Some(leader as u64 + 1) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "follower never learned the leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stays = client(&c, Some(follower)).await;
    assert_eq!(connected_node(&c, &stays).await, follower);
    let mut cfg = config(&c, Some(follower));
    cfg.prefer_leader = true;
    let moves = Client::connect(cfg).await.unwrap();
    assert_eq!(connected_node(&c, &moves).await, leader);
    moves.create_dir("lead").await.unwrap();
    assert!(stays.metadata("lead").await.is_ok());
    assert_eq!(
        moves.reconnects(),
        0,
        "moving before the session began is no reconnect"
    );
}

/// Moving a session to the leader (what a client that prefers the leader
/// does when leadership changes) keeps its open handle and the writes it
/// had not flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_moves_to_the_leader_with_its_unflushed_writes() {
    let c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let follower = (leader + 1) % 3;
    let client = client(&c, Some(follower)).await;
    assert_eq!(connected_node(&c, &client).await, follower);
    let file = client
        .open("moving.bin", OpenOptions::create())
        .await
        .unwrap();
    let data = random_bytes(2 * MIB, 7);
    file.write_at(0, Bytes::copy_from_slice(&data[..MIB]))
        .await
        .unwrap();
    // The follower must know the leader to name it.
    let started = std::time::Instant::now();
    while connected_node(&c, &client).await != leader {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the session never moved to the leader"
        );
        client.move_to_leader().await;
    }
    assert_eq!(client.reconnects(), 1);
    file.write_at(MIB as u64, Bytes::copy_from_slice(&data[MIB..]))
        .await
        .unwrap();
    file.close().await.unwrap();
    assert!(read_all(&c, "moving.bin").await == data, "content differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_larger_than_a_request_from_several_tasks_land_whole() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = client(&c, None).await;
    let log = Arc::new(
        client
            .open(
                "whole-appends.bin",
                OpenOptions {
                    append: true,
                    ..OpenOptions::create()
                },
            )
            .await
            .unwrap(),
    );
    // Each append takes two requests (4 MiB + 2 MiB): another task's
    // append must not land between them.
    const RECORD: usize = 6 * MIB;
    let tasks: Vec<_> = (1..=4u8)
        .map(|mark| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                log.write_at(0, Bytes::from(vec![mark; RECORD]))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // A caller that stops waiting mid-append: the append still goes whole,
    // before the next one.
    let cut = tokio::time::timeout(
        Duration::from_millis(1),
        log.write_at(0, Bytes::from(vec![5; RECORD])),
    )
    .await;
    assert!(cut.is_err(), "6 MiB took under a millisecond");
    log.write_at(0, Bytes::from(vec![6; RECORD])).await.unwrap();
    Arc::into_inner(log).unwrap().close().await.unwrap();
    let got = read_all(&c, "whole-appends.bin").await;
    assert_eq!(got.len(), 6 * RECORD);
    assert!(got[4 * RECORD..5 * RECORD].iter().all(|b| *b == 5));
    assert!(got[5 * RECORD..].iter().all(|b| *b == 6));
    let got = &got[..4 * RECORD];
    let mut marks: Vec<u8> = got
        .chunks(RECORD)
        .map(|record| {
            assert!(
                record.iter().all(|b| *b == record[0]),
                "an append was split by another"
            );
            record[0]
        })
        .collect();
    marks.sort_unstable();
    assert_eq!(marks, [1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_unflushed_writes_and_appends_survive_a_move_in_order() {
    let c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = client(&c, Some((leader + 1) % 3)).await;
    // Two handles of small writes that overlap each other, as a random
    // writer leaves them: the resumed session merges each handle's writes
    // before sending them again, and the later write must still win.
    let mut models = Vec::new();
    let mut files = Vec::new();
    for (n, seed) in [(0u64, 11u64), (1, 12)] {
        let file = client
            .open(&format!("overlap-{n}.bin"), OpenOptions::create())
            .await
            .unwrap();
        let mut model = vec![0u8; 300 << 10];
        let (mut x, mut size) = (seed, 0);
        for i in 0..400u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let off = (x >> 33) % (290 << 10);
            let len = 1 + (x >> 20) as usize % (9 << 10);
            let data = random_bytes(len, seed * 1000 + i);
            model[off as usize..off as usize + len].copy_from_slice(&data);
            size = size.max(off as usize + len);
            file.write_at(off, Bytes::from(data)).await.unwrap();
        }
        model.truncate(size);
        models.push(model);
        files.push(file);
    }
    let log = client
        .open(
            "overlap-log.txt",
            OpenOptions {
                append: true,
                ..OpenOptions::create()
            },
        )
        .await
        .unwrap();
    for line in ["one\n", "two\n", "three\n"] {
        log.write_at(0, Bytes::from(line)).await.unwrap();
    }
    let started = Instant::now();
    while connected_node(&c, &client).await != leader {
        assert!(started.elapsed() < Duration::from_secs(10), "never moved");
        client.move_to_leader().await;
    }
    assert_eq!(client.reconnects(), 1);
    log.close().await.unwrap();
    assert_eq!(read_all(&c, "overlap-log.txt").await, b"one\ntwo\nthree\n");
    for (n, (file, model)) in files.into_iter().zip(models).enumerate() {
        file.close().await.unwrap();
        let got = read_all(&c, &format!("overlap-{n}.bin")).await;
        assert_eq!(got.len(), model.len(), "size of file {n}");
        assert!(got == model, "content of file {n} differs");
    }
}

/// A reader that fails: a source file that went away mid-upload.
struct Failing;

impl tokio::io::AsyncRead for Failing {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Err(std::io::Error::other("source went away")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_put_leaves_the_file_it_would_replace_as_it_was() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = client(&c, None).await;
    client.create_dir("up").await.unwrap();
    let old = random_bytes(5 * MIB, 21);
    let attr = client
        .put(
            "up/file.bin",
            &mut std::io::Cursor::new(old.clone()),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(
        (attr.name.as_str(), attr.size),
        ("file.bin", old.len() as u64)
    );
    // 9 MiB go out (two full 4 MiB writes and more), then the source fails.
    let new = random_bytes(9 * MIB, 22);
    let mut failing = tokio::io::AsyncReadExt::chain(std::io::Cursor::new(new), Failing);
    let err = client
        .put("up/file.bin", &mut failing, &|_| {})
        .await
        .unwrap_err();
    assert!(err.to_string().contains("source went away"), "{err}");
    assert!(
        read_all(&c, "up/file.bin").await == old,
        "the old content was damaged"
    );
    let names: Vec<String> = client
        .read_dir("up")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(names, ["file.bin"], "the failed upload left a file behind");
}

/// The value of `series` on each node; `None` where a node has none yet.
async fn series_per_node(c: &Cluster, series: &str) -> Vec<Option<u64>> {
    let mut values = Vec::new();
    for i in 0..c.nodes.len() {
        values.push(c.metric(i, series).await);
    }
    values
}

/// Native requests of operation `op` the nodes answered "ok", summed (a
/// node that answered none has no such series).
async fn native_requests_ok(c: &Cluster, op: &str) -> u64 {
    let series = format!("cairn_native_requests_total{{op=\"{op}\",result=\"ok\"}}");
    let values = series_per_node(c, &series).await;
    values.into_iter().map(|v| v.unwrap_or(0)).sum()
}

/// The writes a client keeps in flight pass its flush threshold together;
/// the first flush covers the others', which used to flush again each
/// (every flush is a commit with the handle's writes waiting on it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_flushes_once_per_threshold() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = client(&c, None).await;
    let data = random_bytes(4 * cairn_client::native::FLUSH_BYTES, 41);
    let before = native_requests_ok(&c, "flush").await;
    client
        .put("big.bin", &mut std::io::Cursor::new(data.clone()), &|_| {})
        .await
        .unwrap();
    let flushes = native_requests_ok(&c, "flush").await - before;
    assert!(
        (1..=5).contains(&flushes),
        "{flushes} flushes for four thresholds' worth and the last"
    );
    assert!(read_all(&c, "big.bin").await == data, "content differs");
}

/// Chunks read and verified, summed over the nodes.
async fn chunk_reads(c: &Cluster) -> u64 {
    let values = series_per_node(c, "cairn_chunk_reads_total").await;
    values
        .into_iter()
        .map(|v| v.expect("every node counts chunk reads"))
        .sum()
}

/// A client's writes in flight reach the node in any order. Closing a new
/// file written that way still gets the ETag (the content's BLAKE3) from
/// the hash kept while the writes came in: no chunk is read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_written_out_of_order_gets_its_etag_without_a_second_read() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = client(&c, None).await;
    let data = random_bytes(12 * MIB + 100, 31);
    let file = client
        .open(
            "ooo.bin",
            OpenOptions::create().with(Disposition::CreateNew),
        )
        .await
        .unwrap();
    // Last piece first, each acknowledged before the next goes.
    for (start, end) in [(8 * MIB, data.len()), (4 * MIB, 8 * MIB), (0, 4 * MIB)] {
        file.write_at(start as u64, Bytes::copy_from_slice(&data[start..end]))
            .await
            .unwrap();
    }
    let before = chunk_reads(&c).await;
    file.close().await.unwrap();
    assert_eq!(
        chunk_reads(&c).await,
        before,
        "closing read the file back to hash it"
    );
    assert_eq!(
        client.metadata("ooo.bin").await.unwrap().etag,
        Some(*blake3::hash(&data).as_bytes()),
        "the ETag is the content's BLAKE3"
    );
    assert!(read_all(&c, "ooo.bin").await == data);
    // Another handle's flush between two of this one's puts its bytes in
    // the file: the running hash, of this handle's bytes only, is not the
    // file's any more.
    let a = client
        .open(
            "two.bin",
            OpenOptions::create().with(Disposition::CreateNew),
        )
        .await
        .unwrap();
    a.write_at(0, Bytes::copy_from_slice(&data[..4 * MIB]))
        .await
        .unwrap();
    a.flush().await.unwrap();
    let b = client
        .open("two.bin", OpenOptions::create().with(Disposition::Open))
        .await
        .unwrap();
    b.write_at(0, Bytes::from_static(b"other writer"))
        .await
        .unwrap();
    b.close().await.unwrap();
    a.write_at(
        4 * MIB as u64,
        Bytes::copy_from_slice(&data[4 * MIB..8 * MIB]),
    )
    .await
    .unwrap();
    a.close().await.unwrap();
    let both = read_all(&c, "two.bin").await;
    assert_eq!(&both[..12], b"other writer");
    assert!(both[12..] == data[12..8 * MIB]);
    assert_eq!(
        client.metadata("two.bin").await.unwrap().etag,
        Some(*blake3::hash(&both).as_bytes()),
        "the ETag is the content's, with the other writer's bytes"
    );
    // Writing into what was already hashed gives the running hash up; the
    // close then reads the content back and the ETag is still right.
    let file = client
        .open("ooo.bin", OpenOptions::create().with(Disposition::Open))
        .await
        .unwrap();
    file.write_at(5, Bytes::from_static(b"changed"))
        .await
        .unwrap();
    file.close().await.unwrap();
    let mut changed = data.clone();
    changed[5..12].copy_from_slice(b"changed");
    assert_eq!(
        client.metadata("ooo.bin").await.unwrap().etag,
        Some(*blake3::hash(&changed).as_bytes())
    );
    client.logoff().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn creates_in_flight_during_a_kill_apply_exactly_once() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let session = client(&c, None).await;
    session.create_dir("many").await.unwrap();
    let connected = connected_node(&c, &session).await;
    let made = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (session, made) = (session.clone(), Arc::clone(&made));
        tasks.push(tokio::spawn(async move {
            for i in 0..100 {
                let path = format!("many/t{t}-{i:03}");
                // Create-new: without the replay table, a create whose
                // answer was lost would come back as already_exists.
                let f = session
                    .open(&path, OpenOptions::create().with(Disposition::CreateNew))
                    .await
                    .unwrap_or_else(|e| panic!("create {path}: {e}"));
                f.close()
                    .await
                    .unwrap_or_else(|e| panic!("close {path}: {e}"));
                made.lock().unwrap().push(path);
            }
        }));
    }
    while made.lock().unwrap().len() < 100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = made.lock().unwrap().len();
    c.nodes[connected].kill9();
    for t in tasks {
        t.await.unwrap();
    }
    assert!(before < 700, "the kill came after most creates ({before})");
    let listed: BTreeSet<String> = session
        .read_dir("many")
        .await
        .unwrap()
        .into_iter()
        .map(|a| format!("many/{}", a.name))
        .collect();
    let made: BTreeSet<String> = made.lock().unwrap().iter().cloned().collect();
    assert_eq!(made.len(), 800);
    assert_eq!(listed, made);
    assert!(session.reconnects() >= 1);
}

fn open_req(path: &str, disposition: Disposition, flags: u8) -> Request {
    Request::Open(Open {
        path: path.into(),
        disposition,
        access: access::READ | access::WRITE,
        share_access: access::READ | access::WRITE | access::DELETE,
        flags,
        mode: 0o644,
        lease: 0,
    })
}

fn code(r: Result<Response, ClientError>) -> Option<ErrorCode> {
    match r {
        Ok(Response::Error(e)) => Some(e.code),
        Ok(_) => None,
        Err(e) => e.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replayed_requests_return_the_first_result_and_apply_once() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;

    // Create-new, twice with one sequence number: one file, one handle.
    let seq = s.next_seq();
    let first = s
        .request(open_req("a", Disposition::CreateNew, 0), seq)
        .await
        .unwrap();
    let again = s
        .request(open_req("a", Disposition::CreateNew, 0), seq)
        .await
        .unwrap();
    assert_eq!(first, again, "the replay is answered with the first result");
    let Response::Opened(opened) = first else {
        panic!("{first:?}")
    };
    assert!(opened.created);
    assert_eq!(
        code(
            s.request(open_req("a", Disposition::CreateNew, 0), s.next_seq())
                .await
        ),
        Some(ErrorCode::AlreadyExists),
        "a new number is a new request"
    );

    // Appends: a repeated number appends once.
    let seq = s.next_seq();
    let appender = s
        .request(
            open_req("log", Disposition::Create, open_flags::APPEND),
            seq,
        )
        .await
        .unwrap();
    let Response::Opened(log) = appender else {
        panic!()
    };
    let append = |data: &[u8]| {
        Request::Write(Write {
            handle: log.handle,
            offset: 0,
            data: bytes::Bytes::copy_from_slice(data),
        })
    };
    for line in [&b"one\n"[..], b"two\n"] {
        let seq = s.next_seq();
        let w1 = s.request(append(line), seq).await.unwrap();
        let w2 = s.request(append(line), seq).await.unwrap();
        assert_eq!(w1, w2);
    }
    s.request(Request::Close(log.handle), s.next_seq())
        .await
        .unwrap();
    assert_eq!(read_all(&c, "log").await, b"one\ntwo\n");

    // Rename: the replay succeeds although its source is gone.
    let seq = s.next_seq();
    let rename = || {
        Request::Rename(Rename {
            from: "a".into(),
            to: "b".into(),
            replace: false,
        })
    };
    assert_eq!(s.request(rename(), seq).await.unwrap(), Response::Done);
    assert_eq!(s.request(rename(), seq).await.unwrap(), Response::Done);
    assert_eq!(
        code(s.request(rename(), s.next_seq()).await),
        Some(ErrorCode::NotFound)
    );

    // Remove: a replay does not remove what was created since.
    let seq = s.next_seq();
    let remove = || Request::Remove(PathReq { path: "b".into() });
    assert_eq!(s.request(remove(), seq).await.unwrap(), Response::Done);
    let f = s.open("b", OpenOptions::create()).await.unwrap();
    f.close().await.unwrap();
    assert_eq!(s.request(remove(), seq).await.unwrap(), Response::Done);
    assert!(
        s.metadata("b").await.is_ok(),
        "the replayed remove applied again"
    );

    // The first handle is still open and closes once; its replayed close
    // answers again, a new close finds it gone.
    let seq = s.next_seq();
    assert_eq!(
        s.request(Request::Close(opened.handle), seq).await.unwrap(),
        Response::Done
    );
    assert_eq!(
        s.request(Request::Close(opened.handle), seq).await.unwrap(),
        Response::Done
    );
    assert_eq!(
        code(s.request(Request::Close(opened.handle), s.next_seq()).await),
        Some(ErrorCode::StaleHandle)
    );
    // Sequenced requests without a number are refused.
    assert_eq!(
        code(s.request(remove(), 0).await),
        Some(ErrorCode::BadRequest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn share_modes_and_unlink_while_open() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, Some(0)).await;
    let b = client(&c, Some(1)).await;
    let exclusive = OpenOptions {
        share_access: access::READ,
        ..OpenOptions::create()
    };
    let fa = a.open("shared.txt", exclusive).await.unwrap();
    fa.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
    fa.flush().await.unwrap();
    let err = b
        .open("shared.txt", OpenOptions::create().with(Disposition::Open))
        .await
        .err()
        .expect("a writer that the first handle does not share is refused");
    assert_eq!(err.code(), Some(ErrorCode::SharingViolation));
    let rb = b.open("shared.txt", OpenOptions::read()).await.unwrap();
    assert_eq!(
        rb.read_at(0, 100).await.unwrap(),
        &b"hello"[..],
        "flushed data is visible to other sessions"
    );

    // Unlinked while open: both handles keep reading it.
    b.remove("shared.txt").await.unwrap();
    assert_eq!(
        b.metadata("shared.txt").await.err().and_then(|e| e.code()),
        Some(ErrorCode::NotFound)
    );
    fa.write_at(5, Bytes::from_static(b" world")).await.unwrap();
    fa.flush().await.unwrap();
    assert_eq!(rb.read_at(0, 100).await.unwrap(), &b"hello world"[..]);
    assert_eq!(fa.read_at(6, 5).await.unwrap(), &b"world"[..]);
    rb.close().await.unwrap();
    fa.close().await.unwrap();
    // Delete-on-close: the name goes when the handle closes.
    let scratch = a
        .open(
            "scratch.tmp",
            OpenOptions {
                access: access::READ | access::WRITE | access::DELETE,
                delete_on_close: true,
                ..OpenOptions::create()
            },
        )
        .await
        .unwrap();
    scratch
        .write_at(0, Bytes::from_static(b"temporary"))
        .await
        .unwrap();
    scratch.flush().await.unwrap();
    assert_eq!(b.metadata("scratch.tmp").await.unwrap().size, 9);
    scratch.close().await.unwrap();
    assert_eq!(
        b.metadata("scratch.tmp").await.err().and_then(|e| e.code()),
        Some(ErrorCode::NotFound)
    );
    // A new file of the same name starts empty.
    let fresh = a
        .open(
            "shared.txt",
            OpenOptions::create().with(Disposition::CreateNew),
        )
        .await
        .unwrap();
    assert_eq!(fresh.opened_attr().size, 0);
    fresh.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn directory_paging_under_concurrent_inserts() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    s.create_dir("d").await.unwrap();
    let mut creates = futures::stream::FuturesUnordered::new();
    for i in 0..2500 {
        let s = s.clone();
        creates.push(async move {
            s.open(&format!("d/f{i:05}"), OpenOptions::create())
                .await
                .unwrap()
                .close()
                .await
                .unwrap();
        });
        if creates.len() >= 32 {
            futures::StreamExt::next(&mut creates).await;
        }
    }
    while futures::StreamExt::next(&mut creates).await.is_some() {}
    let inserter = {
        let s = s.clone();
        tokio::spawn(async move {
            for i in 0..300 {
                // Names that sort between and after the existing ones.
                let f = s
                    .open(&format!("d/f{:05}x", i * 9), OpenOptions::create())
                    .await
                    .unwrap();
                f.close().await.unwrap();
            }
        })
    };
    let listed = s.read_dir("d").await.unwrap();
    inserter.await.unwrap();
    let names: Vec<&str> = listed.iter().map(|a| a.name.as_str()).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "an entry came twice");
    for i in 0..2500 {
        assert!(
            unique.contains(format!("f{i:05}").as_str()),
            "f{i:05} missing"
        );
    }
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "pages come in name order");
    assert_eq!(s.read_dir("d").await.unwrap().len(), 2800);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handles_of_a_vanished_client_expire() {
    let c = short_handle_timeout().await;
    let gone = Holder::start(&HoldSpec {
        share_access: 0,
        ..c.hold_spec(None, "held")
    })
    .unwrap();
    let other = client(&c, None).await;
    assert_eq!(
        other
            .open("held", OpenOptions::read())
            .await
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::SharingViolation)
    );
    // The client vanishes without closing anything.
    gone.vanish();
    let h = open_once_released(&other, "held", Duration::from_secs(15))
        .await
        .expect("the vanished session's handle expires");
    h.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_writers_flushed_file_downloads_against_its_etag() {
    let c = short_handle_timeout().await;
    let gone = Holder::start(&HoldSpec {
        access: access::READ | access::WRITE,
        write_bytes: 5 * MIB,
        flush: true,
        ..c.hold_spec(None, "orphan.bin")
    })
    .unwrap();
    // The client vanishes after its flush, without closing the file.
    gone.vanish();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("orphan.bin");
    let local = local.to_str().unwrap();
    // `cairn get` (HTTP) checks the bytes against the ETag: it refuses the
    // file while the ETag is the flush's provisional one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match c.cli(&["get", "orphan.bin", local]) {
            Ok(_) => break Ok(()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => break Err(e),
        }
    };
    got.expect("the download matches the ETag once the writer is gone");
    assert_eq!(std::fs::read(local).unwrap(), vec![0x5a; 5 * MIB]);
}

/// Opens `path` for reading once no handle's share mode refuses it, trying
/// for `within`.
async fn open_once_released(
    client: &Client,
    path: &str,
    within: Duration,
) -> Result<cairn_client::File, ClientError> {
    let deadline = Instant::now() + within;
    loop {
        match client.open(path, OpenOptions::read()).await {
            Err(e)
                if e.code() == Some(ErrorCode::SharingViolation) && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done => return done,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn byte_range_locks_hold_across_failover() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, Some(0)).await;
    let b = client(&c, Some(1)).await;
    let fa = a.open("locked", OpenOptions::create()).await.unwrap();
    let fb = b
        .open("locked", OpenOptions::create().with(Disposition::Open))
        .await
        .unwrap();
    fa.lock(0, 100, true, Duration::ZERO).await.unwrap();
    fb.lock(100, 10, true, Duration::ZERO)
        .await
        .expect("adjacent ranges do not conflict");
    let conflict = |r: Result<(), ClientError>| r.err().and_then(|e| e.code());
    assert_eq!(
        conflict(fb.lock(50, 1, false, Duration::ZERO).await),
        Some(ErrorCode::LockConflict)
    );
    let waited = Instant::now();
    assert_eq!(
        conflict(fb.lock(0, 1, false, Duration::from_millis(800)).await),
        Some(ErrorCode::LockConflict)
    );
    assert!(
        waited.elapsed() >= Duration::from_millis(700),
        "a blocking lock waits"
    );

    // The node A talks to dies: A's lock is still held, for B and for A.
    let connected = connected_node(&c, &a).await;
    assert_ne!(connected_node(&c, &b).await, connected);
    c.nodes[connected].kill9();
    assert_eq!(
        conflict(fb.lock(10, 5, true, Duration::ZERO).await),
        Some(ErrorCode::LockConflict)
    );
    fa.write_at(0, Bytes::from_static(b"still mine"))
        .await
        .unwrap();
    // B blocks; A lets go; B gets it.
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        fb.lock(0, 100, true, Duration::from_secs(20))
            .await
            .map(|()| (t.elapsed(), fb))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    fa.unlock(0, 100).await.unwrap();
    let (waited, fb) = waiter.await.unwrap().unwrap();
    assert!(
        waited >= Duration::from_millis(400),
        "B got the lock before A let go"
    );
    assert!(a.reconnects() >= 1);
    // Closing releases a handle's locks.
    fb.close().await.unwrap();
    fa.lock(0, 0, true, Duration::ZERO).await.unwrap();
    fa.close().await.unwrap();
    c.nodes[connected].relaunch();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn owner_locks_hold_across_failover_and_change_in_one_step() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, Some(0)).await;
    let b = client(&c, Some(1)).await;
    let fa = a.open("owned", OpenOptions::create()).await.unwrap();
    let fb = b
        .open("owned", OpenOptions::create().with(Disposition::Open))
        .await
        .unwrap();
    let (me, other) = (41, 42);
    fa.lock_range(me, (0, 100), LockKind::Exclusive, Duration::ZERO)
        .await
        .unwrap();
    let held = |offset, len| {
        Some(HeldLock {
            offset,
            len,
            exclusive: true,
        })
    };
    assert_eq!(
        fb.test_lock(other, (0, 0), false).await.unwrap(),
        held(0, 100)
    );

    // The node A talks to dies: A's range is still held, and A extends it
    // from its own offset in one step (fcntl's F_SETLK).
    let connected = connected_node(&c, &a).await;
    assert_ne!(connected_node(&c, &b).await, connected);
    c.nodes[connected].kill9();
    assert_eq!(
        fb.test_lock(other, (99, 1), false).await.unwrap(),
        held(0, 100)
    );
    fa.lock_range(me, (0, 200), LockKind::Exclusive, Duration::ZERO)
        .await
        .unwrap();
    assert!(a.reconnects() >= 1);
    assert_eq!(fa.test_lock(me, (0, 0), true).await.unwrap(), None);
    let conflict = |r: Result<(), ClientError>| r.err().and_then(|e| e.code());
    assert_eq!(
        conflict(
            fb.lock_range(other, (150, 10), LockKind::Shared, Duration::ZERO)
                .await
        ),
        Some(ErrorCode::LockConflict)
    );
    // B waits for bytes 150..160; A lets go of everything from 50 on.
    let waiter = tokio::spawn(async move {
        fb.lock_range(
            other,
            (150, 10),
            LockKind::Exclusive,
            Duration::from_secs(20),
        )
        .await
        .map(|()| fb)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    fa.lock_range(me, (50, 0), LockKind::Unlocked, Duration::ZERO)
        .await
        .unwrap();
    let fb = waiter.await.unwrap().unwrap();
    assert_eq!(
        fb.test_lock(other, (0, 0), false).await.unwrap(),
        held(0, 50)
    );
    fb.close().await.unwrap();
    fa.close().await.unwrap();
    c.nodes[connected].relaunch();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blocking_lock_given_up_on_is_not_taken_behind_the_callers_back() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, Some(0)).await;
    let b = client(&c, Some(1)).await;
    let fa = a.open("given-up", OpenOptions::create()).await.unwrap();
    let fb = b
        .open("given-up", OpenOptions::create().with(Disposition::Open))
        .await
        .unwrap();
    fa.lock(0, 100, true, Duration::ZERO).await.unwrap();
    // The application's own timeout is shorter than the lock's wait.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        fb.lock(0, 10, true, Duration::from_secs(20)),
    )
    .await;
    assert!(gave_up.is_err(), "A still holds the range: {gave_up:?}");
    fa.unlock(0, 100).await.unwrap();
    // Long enough for a request still trying to have taken the range.
    tokio::time::sleep(Duration::from_millis(500)).await;
    fa.lock(0, 100, true, Duration::ZERO)
        .await
        .expect("B stopped waiting; nothing may take the range in its name");
    // Once A lets go, B can have the range it gave up waiting for.
    fa.unlock(0, 100).await.unwrap();
    fb.lock(0, 10, true, Duration::ZERO).await.unwrap();
    fb.close().await.unwrap();
    fa.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_writes_truncates_and_flushes_match_a_local_model() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    let file = s.open("model.bin", OpenOptions::create()).await.unwrap();
    let mut model: Vec<u8> = Vec::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for step in 0..60u64 {
        match next(10) {
            0 => {
                let size = next(20 * MIB as u64) as usize;
                file.set_len(size as u64).await.unwrap();
                model.resize(size, 0);
            }
            1 | 2 => {
                file.flush().await.unwrap();
            }
            _ => {
                // Whole cells, cell-straddling pieces and small patches,
                // often over bytes written (and staged) before.
                let off = next(20 * MIB as u64) as usize;
                let len = match next(3) {
                    0 => 4 * MIB,
                    1 => 1 + next(6 * MIB as u64) as usize,
                    _ => 1 + next(4096) as usize,
                };
                let data = random_bytes(len, step);
                file.write_at(off as u64, Bytes::from(data.clone()))
                    .await
                    .unwrap();
                if model.len() < off + len {
                    model.resize(off + len, 0);
                }
                model[off..off + len].copy_from_slice(&data);
            }
        }
        if step % 20 == 19 {
            let seen = file.read_at(0, model.len() + 1).await.unwrap();
            assert!(seen == model, "step {step}: the handle reads what it wrote");
        }
    }
    file.close().await.unwrap();
    let back = read_all(&c, "model.bin").await;
    assert_eq!(back.len(), model.len());
    assert!(back == model, "content differs from the model");
    assert_eq!(
        s.metadata("model.bin").await.unwrap().etag,
        Some(*blake3::hash(&model).as_bytes())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_sharing_a_small_write_buffer_all_finish() {
    // 8 MiB of unflushed writes per node, four handles writing 24 MiB each
    // with the client's own flushes far apart: a writer that finds the
    // budget used up flushes its handle instead of waiting on the others.
    let c = Cluster::start(
        3,
        ClusterOptions {
            cluster_extra: "write_buffer_bytes_max = 8388608\n".into(),
            ..ClusterOptions::default()
        },
    );
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    let mut tasks = Vec::new();
    for t in 0..4u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let data = random_bytes(24 * MIB, 100 + t);
            let f = s
                .open(&format!("w{t}"), OpenOptions::create())
                .await
                .unwrap();
            write_pieces(&f, 0, &data).await;
            f.close().await.unwrap();
            data
        }));
    }
    let mut written = Vec::new();
    for t in tasks {
        written.push(
            tokio::time::timeout(Duration::from_secs(120), t)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for (t, data) in written.iter().enumerate() {
        assert!(
            read_all(&c, &format!("w{t}")).await == *data,
            "w{t} differs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_setup_and_bad_requests_get_clear_errors() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let refused = |cfg: NativeConfig| async move {
        let started = Instant::now();
        let e = Client::connect(cfg)
            .await
            .err()
            .expect("setup must be refused");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a refusal is not retried"
        );
        e.code()
    };
    let mut wrong_token = config(&c, None);
    wrong_token.token = "not-a-token-of-this-cluster".into();
    assert_eq!(refused(wrong_token).await, Some(ErrorCode::Unauthorized));
    let mut other_share = config(&c, None);
    other_share.share = "elsewhere".into();
    assert_eq!(refused(other_share).await, Some(ErrorCode::Forbidden));

    let s = client(&c, None).await;
    let no_version = Request::Negotiate(cairn_proto::wire::Negotiate {
        versions: vec![99],
        capabilities: 0,
        client: "future".into(),
    });
    assert_eq!(
        code(s.request(no_version, 0).await),
        Some(ErrorCode::BadRequest)
    );
    assert_eq!(
        s.open("../escape", OpenOptions::create())
            .await
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::InvalidPath)
    );
    assert_eq!(
        code(
            s.request(Request::Flush(cairn_proto::wire::HandleId(424_242)), 0)
                .await
        ),
        Some(ErrorCode::StaleHandle)
    );
    // The session still works after its refused requests.
    let f = s.open("fine", OpenOptions::create()).await.unwrap();
    f.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_downloads_into_files_and_writes_special_files_in_place() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let data = random_bytes(5 * MIB + 7, 31);
    let s = client(&c, None).await;
    s.put("cli.bin", &mut std::io::Cursor::new(data.clone()), &|_| {})
        .await
        .unwrap();
    s.logoff().await.unwrap();
    // The CLI over the native protocol (CAIRN_QUIC set), as `cairn dev`'s
    // env file sets it up.
    let run = |args: &[&str]| {
        std::process::Command::new(cairn_tests::binary("cairn"))
            .args(args)
            .env("CAIRN_URL", c.urls())
            .env("CAIRN_TOKEN", c.token())
            .env("CAIRN_QUIC", c.quic_addrs().join(","))
            .env("CAIRN_CA", c.ca_pem())
            .env("CAIRN_SHARE", "default")
            .output()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("back.bin");
    let out = run(&["get", "cli.bin", local.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::fs::read(&local).unwrap() == data,
        "file content differs"
    );
    let part = dir.path().join("back.bin.cairn-part");
    assert!(!part.exists(), "the partial file was left behind");
    let through_fifo = cairn_tests::get_into_fifo(run, "cli.bin", data.len());
    assert!(through_fifo == data, "FIFO content differs");
}

/// A node frozen (SIGSTOP: a long GC pause, a hung VM) while a handle's
/// writes and flushes go through it, most likely in the middle of a flush:
/// the client moves on after a second of silence and writes and flushes
/// elsewhere. When the node wakes, it carries on with what it was doing
/// and still holds the writes it had: none of that may land over what the
/// client wrote and flushed since.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_node_wakes_without_undoing_later_writes() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let client = Arc::new(client(&c, Some(1)).await);
    let file = Arc::new(
        client
            .open("frozen.bin", OpenOptions::create())
            .await
            .unwrap(),
    );
    let node = connected_node(&c, &client).await;
    // Rounds over the same 1 MiB: four 256 KiB writes in flight, then a
    // flush; round r writes bytes that name it, so the file must end as
    // the last round wrote it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (file, stop) = (Arc::clone(&file), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut round = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                round += 1;
                let data = Bytes::from(random_bytes(MIB, round));
                let writes = (0..4).map(|q| {
                    let piece = data.slice(q * MIB / 4..(q + 1) * MIB / 4);
                    file.write_at((q * MIB / 4) as u64, piece)
                });
                for w in futures::future::join_all(writes).await {
                    w.unwrap();
                }
                file.flush().await.unwrap();
            }
            round
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.nodes[node].pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    c.nodes[node].resume();
    // Let the woken node work through what it held while the writer goes on.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let last = writer.await.unwrap();
    assert_ne!(
        connected_node(&c, &client).await,
        node,
        "the client stayed on the frozen node"
    );
    let Ok(file) = Arc::try_unwrap(file) else {
        panic!("the writer still holds the file");
    };
    file.close().await.unwrap();
    // Long enough for the woken node's stale requests, if any, to land.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(last > 10, "only {last} rounds");
    let content = read_all(&c, "frozen.bin").await;
    assert_eq!(content.len(), MIB);
    assert!(
        content == random_bytes(MIB, last),
        "the file is not what the last round ({last}) wrote"
    );
}

/// A client that goes away holding unflushed writes (its process is
/// killed: its connection dies) leaves nothing pinned on the node: the next
/// client gets the node's write buffers at once, not after the handle
/// timeout, and does not have to move elsewhere for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gone_clients_unflushed_writes_free_the_nodes_write_buffers() {
    // 8 MiB of unflushed writes per node.
    let c = Cluster::start(
        3,
        ClusterOptions {
            cluster_extra: "write_buffer_bytes_max = 8388608\n".into(),
            ..ClusterOptions::default()
        },
    );
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let gone = Holder::start(&HoldSpec {
        disposition: Disposition::Create,
        access: access::READ | access::WRITE,
        write_bytes: 6 * MIB,
        ..c.hold_spec(Some(1), "gone.bin")
    })
    .unwrap();
    let node = c.node_at(&gone.node).unwrap();
    // kill -9: its connection goes silent, and the node gives up on it
    // after the 1 s idle timeout.
    gone.vanish();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let next = client(&c, Some(node)).await;
    assert_eq!(connected_node(&c, &next).await, node);
    let g = next.open("next.bin", OpenOptions::create()).await.unwrap();
    // One 4 MiB write: more than the 2 MiB the gone client's writes would
    // leave, and nothing of its own to flush first.
    let data = random_bytes(4 * MIB, 2);
    let started = Instant::now();
    g.write_at(0, Bytes::from(data.clone())).await.unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "a 4 MiB write waited {took:?} for write buffers"
    );
    assert_eq!(
        connected_node(&c, &next).await,
        node,
        "the client moved for write buffers"
    );
    g.close().await.unwrap();
    assert!(read_all(&c, "next.bin").await == data);
}

/// A close the node applied but never answered, and writes the client
/// gave up on, must not come back at the next failover: the first would
/// make the new node refuse the resume with `stale_handle` (and every
/// later call with it), the second would send refused or stale bytes
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_goes_on_past_a_close_it_never_heard_back_from() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    let setup = s.open("ro.txt", OpenOptions::create()).await.unwrap();
    setup
        .write_at(0, Bytes::from_static(b"keep"))
        .await
        .unwrap();
    setup.close().await.unwrap();

    let closed = s.open("closed.txt", OpenOptions::create()).await.unwrap();
    closed
        .write_at(0, Bytes::from_static(b"hello"))
        .await
        .unwrap();
    // The close as it reaches the node when its answer is lost: applied,
    // and the client still holding the file's unflushed write.
    let close = Request::Close(closed.handle());
    assert_eq!(
        s.request(close, s.next_seq()).await.unwrap(),
        Response::Done
    );
    let ro = s.open("ro.txt", OpenOptions::read()).await.unwrap();
    assert_eq!(
        ro.write_at(0, Bytes::from_static(b"nope"))
            .await
            .err()
            .and_then(|e| e.code()),
        Some(ErrorCode::Forbidden)
    );

    let connected = connected_node(&c, &s).await;
    c.nodes[connected].kill9();
    let stat = s
        .metadata("closed.txt")
        .await
        .expect("the session resumes on another node");
    assert_eq!(stat.size, 5, "the close flushed the write");
    assert_eq!(ro.read_at(0, 4).await.unwrap().as_ref(), b"keep");
    ro.close().await.unwrap();
    assert_eq!(
        closed.close().await.err().and_then(|e| e.code()),
        Some(ErrorCode::StaleHandle),
        "a second close of the same handle"
    );
    assert_eq!(read_all(&c, "closed.txt").await, b"hello");
    assert_eq!(read_all(&c, "ro.txt").await, b"keep");
    s.logoff().await.unwrap();
    c.nodes[connected].relaunch();
}

/// One `write_at` larger than the node's limit on a handle's unflushed
/// bytes (256 MiB) succeeds: the client flushes as it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_write_larger_than_a_handles_unflushed_limit_succeeds() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    let data = Bytes::from(random_bytes(300 * MIB, 41));
    let f = s.open("large.bin", OpenOptions::create()).await.unwrap();
    f.write_at(0, data.clone()).await.unwrap();
    f.close().await.unwrap();
    assert!(read_all(&c, "large.bin").await == data, "content differs");
    s.logoff().await.unwrap();
}

/// A file dropped without a close is closed in the background, as a
/// dropped `tokio::fs::File` is: its handle (here, its share mode) does
/// not stay until the session ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dropped_file_is_closed() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, None).await;
    let exclusive = OpenOptions {
        share_access: 0,
        ..OpenOptions::create()
    };
    let f = s.open("dropped", exclusive).await.unwrap();
    f.write_at(0, Bytes::from_static(b"kept")).await.unwrap();
    drop(f);
    let other = client(&c, None).await;
    let h = open_once_released(&other, "dropped", Duration::from_secs(5))
        .await
        .expect("the dropped file's handle is closed");
    assert_eq!(h.read_at(0, 4).await.unwrap().as_ref(), b"kept");
    h.close().await.unwrap();
    s.logoff().await.unwrap();
}

/// A resume this client gave up on can still land on another node after
/// the client went on elsewhere: its live connection then no longer
/// carries the session (`no_session`). The client resumes there and
/// carries on: the application sees no error and no write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_taken_from_under_a_live_connection_is_resumed() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let s = client(&c, Some(0)).await;
    let f = s.open("taken.txt", OpenOptions::create()).await.unwrap();
    f.write_at(0, Bytes::from_static(b"before ")).await.unwrap();
    // The late resume, as another connection on another node.
    let late = Client::resume_session(config(&c, Some(1)), s.session())
        .await
        .unwrap();
    f.write_at(7, Bytes::from_static(b"after")).await.unwrap();
    f.flush()
        .await
        .expect("the flush goes through once resumed");
    f.close().await.unwrap();
    assert_eq!(read_all(&c, "taken.txt").await, b"before after");
    assert!(s.reconnects() >= 1, "the client resumed its session");
    drop(late);
    s.logoff().await.unwrap();
}

/// A close that reached no node leaves the handle open on the cluster,
/// holding its share modes (and locks, and leases) for the session's
/// life: dropping the file closes it once a node answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_close_that_reached_no_node_is_sent_again_when_the_file_drops() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let mut cfg = config(&c, None);
    cfg.failover_timeout = Duration::from_secs(2);
    let s = Client::connect(cfg).await.unwrap();
    let exclusive = OpenOptions {
        share_access: 0,
        ..OpenOptions::create()
    };
    let f = s.open("unreached", exclusive).await.unwrap();
    f.write_at(0, Bytes::from_static(b"kept")).await.unwrap();
    for n in &c.nodes {
        n.pause();
    }
    let closed = f.close_shared().await;
    for n in &c.nodes {
        n.resume();
    }
    assert!(
        matches!(closed, Err(ClientError::Connection(_))),
        "no node could answer: {closed:?}"
    );
    // The close on drop has one failover timeout (2 s): not an election.
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    drop(f);
    let other = client(&c, None).await;
    let h = open_once_released(&other, "unreached", Duration::from_secs(20))
        .await
        .expect("the dropped file's handle is closed");
    assert_eq!(h.read_at(0, 4).await.unwrap().as_ref(), b"kept");
    h.close().await.unwrap();
    s.logoff().await.unwrap();
}

/// A connection that sets up no session (perhaps holding no token) does
/// not keep one of the node's connection slots: the node closes it, with
/// code 4, within its setup time (30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_without_a_session_is_closed() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let started = Instant::now();
    let closed = tokio::time::timeout(
        Duration::from_secs(45),
        cairn_client::native::negotiate_only(&config(&c, None), &c.quic(0)),
    )
    .await
    .expect("closed within the setup time")
    .unwrap();
    assert_eq!(closed, Some(4));
    assert!(
        started.elapsed() >= Duration::from_secs(25),
        "closed before its setup time: {:?}",
        started.elapsed()
    );
}
