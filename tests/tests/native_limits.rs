//! What a node of a real cluster does with clients that send more than it
//! takes at once: request frames wait, unread, for the node's request
//! budget, small requests still get through, stalled frames are given up,
//! a connection without a session cannot send a large frame at all, and
//! one host without a token cannot take every connection.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::Client;
use cairn_client::native::{raw_connection, raw_connection_from};
use cairn_proto::ErrorCode;
use cairn_proto::wire::{Response, decode_frame_bytes};
use cairn_tests::ServerOptions;
use cairn_tests::cluster::{Cluster, ClusterOptions};

const MIB: usize = 1 << 20;
const HELD: &str = "cairn_native_request_buffer_bytes";

/// Three nodes with a 16 MiB request budget (14 MiB of it for large
/// frames) that give up a frame after 3 s without a byte.
fn small_budget() -> Cluster {
    let defaults = ClusterOptions::default();
    Cluster::start(
        3,
        ClusterOptions {
            server: ServerOptions {
                body_idle_timeout_secs: 3,
                ..defaults.server.clone()
            },
            cluster_extra: "request_buffer_bytes_max = 16777216\n".into(),
            ..defaults
        },
    )
}

/// The node's answer on `recv`, decoded.
async fn answer(recv: &mut quinn::RecvStream) -> Response {
    let bytes = Bytes::from(recv.read_to_end(MIB).await.unwrap());
    let (frame, _) = decode_frame_bytes(&bytes).unwrap().unwrap();
    Response::decode(&frame).unwrap()
}

fn refusal(r: &Response) -> (ErrorCode, &str) {
    match r {
        Response::Error(e) => (e.code, e.message.as_str()),
        other => panic!("not refused: {other:?}"),
    }
}

/// The start of a frame announcing `body` bytes after its length, and
/// `sent` bytes of them.
fn partial_frame(body: usize, sent: usize) -> Vec<u8> {
    let mut m = u32::try_from(body).unwrap().to_le_bytes().to_vec();
    m.resize(4 + sent, 0);
    m
}

/// Opens a stream on `conn` and sends `bytes` on it in the background,
/// finishing it if `finish`; the task ends with the sending end once all
/// of `bytes` went (the node read them, or flow control let them through).
async fn send_on_new_stream(
    conn: &quinn::Connection,
    bytes: Vec<u8>,
    finish: bool,
) -> (
    tokio::task::JoinHandle<quinn::SendStream>,
    quinn::RecvStream,
) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let task = tokio::spawn(async move {
        send.write_all(&bytes).await.unwrap();
        if finish {
            send.finish().unwrap();
        }
        // Kept: a dropped unfinished stream would end the frame.
        send
    });
    (task, recv)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_frames_wait_unread_for_the_nodes_budget_and_stalled_ones_are_given_up() {
    let c = small_budget();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let cfg = c.native_config(Some(0));
    let conns = [
        raw_connection(&cfg, &c.quic(0), true).await.unwrap(),
        raw_connection(&cfg, &c.quic(0), true).await.unwrap(),
    ];

    // Twelve 4 MiB frames from two connections, each sent but for its last
    // MiB: 48 MiB announced to a node that takes 14 MiB of large frames at
    // once (three), at most two from one connection.
    let mut streams = Vec::new();
    for i in 0..12 {
        let frame = partial_frame(4 * MIB, 3 * MIB);
        streams.push(send_on_new_stream(&conns[i % 2], frame, false).await);
    }
    let frame = 4 * MIB as u64 + 4;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut held = 0;
    while Instant::now() < deadline && held < 3 * frame {
        held = c.metric(0, HELD).await.unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held, 3 * frame, "three of twelve frames are let in");
    // The others are not read: flow control holds back their senders.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = streams
        .iter()
        .filter(|(task, _)| task.is_finished())
        .count();
    assert_eq!(sent, 3, "the node read frames it had no budget for");

    // Small requests have a share of their own.
    let client = Client::connect(c.native_config(Some(0))).await.unwrap();
    let started = Instant::now();
    client
        .put_from(
            "/small.bin",
            cairn_client::native::Source::Bytes(Bytes::from(vec![7u8; 10_000])),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(client.metadata("/small.bin").await.unwrap().size, 10_000);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "small requests waited {:?} behind the large frames",
        started.elapsed()
    );

    // Each frame that got in stalls, is given up 3 s after it got its
    // budget and makes room for the next: all twelve are answered.
    let started = Instant::now();
    let mut senders = Vec::new();
    for (task, mut recv) in streams {
        let r = tokio::time::timeout(Duration::from_secs(40), answer(&mut recv))
            .await
            .expect("a stalled frame is answered");
        let (code, message) = refusal(&r);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("stalled"), "{message}");
        senders.push(task);
    }
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "twelve stalled frames in rounds of three took {:?}",
        started.elapsed()
    );
    assert_eq!(c.metric(0, HELD).await, Some(0), "the budget is all back");

    // The node is fine: a whole large write goes through.
    let big = cairn_tests::random_bytes(8 * MIB, 5);
    client
        .put_from(
            "/big.bin",
            cairn_client::native::Source::Bytes(big.clone().into()),
            &|_| {},
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    client.get("/big.bin", &mut got, &|_| {}).await.unwrap();
    assert!(got == big, "the large file came back different");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_waiting_for_budget_never_starve_the_ones_being_read() {
    let c = small_budget();
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let raw = raw_connection(&c.native_config(Some(0)), &c.quic(0), true)
        .await
        .unwrap();
    // Two 4 MiB frames begin, and are let in: all this connection may
    // hold at once.
    let frame = partial_frame(4 * MIB, 4 * MIB);
    let mut first = Vec::new();
    for _ in 0..2 {
        let (mut send, recv) = raw.open_bi().await.unwrap();
        send.write_all(&frame[..MIB]).await.unwrap();
        first.push((send, recv));
    }
    let started = Instant::now();
    while c.metric(0, HELD).await.unwrap_or(0) < 2 * frame.len() as u64 {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the first two were not let in"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Eighteen whole frames follow and wait: 72 MiB against the
    // connection's 64 MiB of flow-control credit. Were they to take all of
    // it, the first two could never send the rest and would stall.
    let mut waiting = Vec::new();
    for _ in 0..18 {
        waiting.push(send_on_new_stream(&raw, frame.clone(), true).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut answers = Vec::new();
    for (mut send, recv) in first {
        let rest = frame[MIB..].to_vec();
        tokio::spawn(async move {
            send.write_all(&rest).await.unwrap();
            send.finish().unwrap();
            send
        });
        answers.push(recv);
    }
    answers.extend(waiting.into_iter().map(|(_, recv)| recv));
    for mut recv in answers {
        let r = tokio::time::timeout(Duration::from_secs(60), answer(&mut recv))
            .await
            .expect("a frame is answered");
        // Zeros: a frame whose checksum is wrong.
        let (code, message) = refusal(&r);
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(!message.contains("stalled"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_session_cannot_send_a_large_frame() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let raw = raw_connection(&c.native_config(Some(0)), &c.quic(0), false)
        .await
        .unwrap();
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    // The length alone: the refusal must not wait for the body.
    send.write_all(&partial_frame(MIB, 0)).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), answer(&mut recv))
        .await
        .expect("refused at once");
    let (code, message) = refusal(&r);
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("16384"), "{message}");
    assert_eq!(c.metric(0, HELD).await, Some(0));
}

/// `UNBOUND_PER_ADDRESS_MAX` in `server/src/native/unbound.rs`.
const UNBOUND_PER_ADDRESS_MAX: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_without_a_session_cannot_take_every_connection() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let cfg = c.native_config(Some(0));
    let node = c.quic(0);
    // Another address on loopback: a host that negotiates and then sits
    // there, showing no token.
    let idle_host = std::net::SocketAddr::from(([127, 0, 0, 2], 0));
    let mut idle = Vec::new();
    for _ in 0..UNBOUND_PER_ADDRESS_MAX {
        idle.push(
            raw_connection_from(&cfg, &node, idle_host, false)
                .await
                .unwrap(),
        );
    }
    let refused = raw_connection_from(&cfg, &node, idle_host, false).await;
    let Err(e) = refused else {
        panic!("a connection past the address's limit was served");
    };
    assert!(
        e.to_string().contains("without a session"),
        "refused for another reason: {e}"
    );
    // Clients elsewhere still get in and work.
    let client = Client::connect(cfg.clone()).await.unwrap();
    let f = client
        .open("in.txt", cairn_client::OpenOptions::create())
        .await
        .unwrap();
    f.write_at(0, Bytes::from_static(b"still served"))
        .await
        .unwrap();
    assert_eq!(&f.read_at(0, 64).await.unwrap()[..], b"still served");
    f.close().await.unwrap();
    // A connection from that host that sets up a session does not count:
    // one slot freed, one session set up, and the host is at its limit
    // of idle connections again, with the session on top.
    idle.pop().unwrap().close(0u32.into(), b"done");
    // The node sees the close a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    let _with_session = loop {
        match raw_connection_from(&cfg, &node, idle_host, true).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "not admitted yet");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the slot a closed connection left never came back: {e}"),
        }
    };
    idle.push(
        raw_connection_from(&cfg, &node, idle_host, false)
            .await
            .unwrap(),
    );
    let e = raw_connection_from(&cfg, &node, idle_host, false)
        .await
        .expect_err("the limit is reached again");
    assert!(e.to_string().contains("without a session"), "{e}");
}
