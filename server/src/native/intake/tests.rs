//! The request budget over a real QUIC connection on loopback.

#![allow(clippy::unwrap_used)]

use super::*;

const ALPN: &[u8] = b"cairn-intake-test";

/// A client connection and the server's side of it.
async fn pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let (server_cfg, client_cfg) = cairn_quic::self_signed(ALPN, Duration::from_secs(10)).unwrap();
    let server = cairn_quic::endpoint(([127, 0, 0, 1], 0).into(), Some(server_cfg), None).unwrap();
    let mut client = cairn_quic::endpoint(([127, 0, 0, 1], 0).into(), None, None).unwrap();
    client.set_default_client_config(client_cfg);
    let addr = server.local_addr().unwrap();
    let (c, s) = tokio::join!(
        async { client.connect(addr, "localhost").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (server, c, s)
}

/// Sends `bytes` on a new stream, finishing it if `finish`; the server's
/// end of it. The sending end stays open in the background.
async fn sent(
    c: &quinn::Connection,
    s: &quinn::Connection,
    bytes: Vec<u8>,
    finish: bool,
) -> quinn::RecvStream {
    let mut send = c.open_uni().await.unwrap();
    tokio::spawn(async move {
        send.write_all(&bytes).await.unwrap();
        if finish {
            send.finish().unwrap();
        }
        let _ = send.stopped().await;
    });
    s.accept_uni().await.unwrap()
}

/// A frame-like message: a little-endian length of the rest, then `body`
/// bytes.
fn message(announced: usize, body: usize) -> Vec<u8> {
    let mut m = u32::try_from(announced).unwrap().to_le_bytes().to_vec();
    m.extend((0..body).map(|i| i as u8));
    m
}

fn budget(idle: Duration) -> (RequestBudget, Gauge) {
    let gauge = Gauge::default();
    (RequestBudget::new(BUDGET_MIN, gauge.clone(), idle), gauge)
}

const LIMIT: usize = 4 << 20 | 4096;

#[tokio::test]
async fn a_frame_holds_its_length_of_the_budget_until_dropped() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    let mut recv = sent(&c, &s, message(1 << 20, 1 << 20), true).await;
    let frame = budget.read(&mut recv, LIMIT).await.unwrap();
    assert_eq!(frame.bytes, message(1 << 20, 1 << 20));
    assert_eq!(held.get(), (1 << 20) + 4);
    drop(frame);
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_unread() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    // Only the length is sent: the refusal cannot have waited for more.
    let mut recv = sent(&c, &s, message(1 << 20, 0), false).await;
    let err = tokio::time::timeout(Duration::from_secs(2), budget.read(&mut recv, 64 << 10))
        .await
        .expect("refused at once")
        .err()
        .unwrap();
    assert!(
        matches!(err, IntakeError::TooLarge { announced, limit: 65536 } if announced == (1 << 20) + 4),
        "{err}"
    );
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn bytes_after_the_frame_are_refused() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    let mut recv = sent(&c, &s, message(100, 200), true).await;
    let err = budget.read(&mut recv, LIMIT).await.err().unwrap();
    assert!(matches!(err, IntakeError::Trailing { .. }), "{err}");
    assert_eq!(held.get(), 0, "the refused frame's budget is back");
}

#[tokio::test]
async fn a_short_stream_is_returned_as_it_came() {
    let (_server, c, s) = pair().await;
    let (budget, _) = budget(Duration::from_secs(5));
    for m in [message(1000, 10), vec![7, 0]] {
        let mut recv = sent(&c, &s, m.clone(), true).await;
        let frame = budget.read(&mut recv, LIMIT).await.unwrap();
        assert_eq!(frame.bytes, m, "decoding reports it truncated");
    }
}

#[tokio::test]
async fn a_stalled_frame_is_given_up_and_its_budget_returned() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_millis(300));
    let mut recv = sent(&c, &s, message(2 << 20, 1 << 20), false).await;
    let started = std::time::Instant::now();
    let err = budget.read(&mut recv, LIMIT).await.err().unwrap();
    assert!(matches!(err, IntakeError::Stalled(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn large_frames_wait_for_budget_and_small_ones_do_not_wait_behind_them() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(10));
    let big = || message(4 << 20, 4 << 20);
    // 16 MiB: 14 MiB for large frames, room for three of 4 MiB.
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut recv = sent(&c, &s, big(), true).await;
        kept.push(budget.read(&mut recv, LIMIT).await.unwrap());
    }
    let mut fourth = sent(&c, &s, big(), true).await;
    let mut waiting = std::pin::pin!(budget.read(&mut fourth, LIMIT));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a fourth 4 MiB frame was admitted past the budget"
    );
    assert_eq!(held.get(), 3 * ((4 << 20) + 4), "waiting holds nothing");
    let mut small = sent(&c, &s, message(200, 200), true).await;
    let frame = tokio::time::timeout(Duration::from_secs(2), budget.read(&mut small, LIMIT))
        .await
        .expect("a small frame waited behind the large ones")
        .unwrap();
    assert_eq!(frame.bytes.len(), 204);
    kept.pop();
    let fourth = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("admitted once room was made")
        .unwrap();
    assert_eq!(fourth.bytes, big());
}
