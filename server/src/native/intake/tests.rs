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

fn budget(idle: Duration) -> (std::sync::Arc<RequestBudget>, Gauge) {
    let gauge = Gauge::default();
    let budget = RequestBudget::new(BUDGET_MIN, gauge.clone(), idle);
    (std::sync::Arc::new(budget), gauge)
}

#[tokio::test]
async fn a_frame_holds_its_length_of_the_budget_until_dropped() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    let mut recv = sent(&c, &s, message(1 << 20, 1 << 20), true).await;
    let frame = budget
        .read(&mut recv, &budget.connection(), true)
        .await
        .unwrap();
    assert_eq!(frame.bytes, message(1 << 20, 1 << 20));
    assert_eq!(held.get(), (1 << 20) + 4);
    drop(frame);
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_unread() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    // Only the lengths are sent: the refusals cannot have waited for more.
    let share = budget.connection();
    for (len, session, limit) in [
        (5 << 20, true, FRAME_MAX),
        (20 << 10, false, PRE_SESSION_FRAME_MAX),
    ] {
        let mut recv = sent(&c, &s, message(len, 0), false).await;
        let err = tokio::time::timeout(
            Duration::from_secs(2),
            budget.read(&mut recv, &share, session),
        )
        .await
        .expect("refused at once")
        .err()
        .unwrap();
        assert!(
            matches!(err, IntakeError::TooLarge { announced, limit: l } if announced == len + 4 && l == limit),
            "{err}"
        );
    }
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn bytes_after_the_frame_are_refused() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(5));
    let mut recv = sent(&c, &s, message(100, 200), true).await;
    let err = budget
        .read(&mut recv, &budget.connection(), true)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, IntakeError::Trailing { .. }), "{err}");
    assert_eq!(held.get(), 0, "the refused frame's budget is back");
}

#[tokio::test]
async fn a_short_stream_is_returned_as_it_came() {
    let (_server, c, s) = pair().await;
    let (budget, _) = budget(Duration::from_secs(5));
    for m in [message(1000, 10), vec![7, 0]] {
        let mut recv = sent(&c, &s, m.clone(), true).await;
        let frame = budget
            .read(&mut recv, &budget.connection(), true)
            .await
            .unwrap();
        assert_eq!(frame.bytes, m, "decoding reports it truncated");
    }
}

#[tokio::test]
async fn a_stalled_frame_is_given_up_and_its_budget_returned() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_millis(300));
    let mut recv = sent(&c, &s, message(2 << 20, 1 << 20), false).await;
    let started = std::time::Instant::now();
    let err = budget
        .read(&mut recv, &budget.connection(), true)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, IntakeError::Stalled(_)), "{err}");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(held.get(), 0);
}

#[tokio::test]
async fn large_frames_wait_for_budget_and_small_ones_do_not_wait_behind_them() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(10));
    let big = || message(4 << 20, 4 << 20);
    // 16 MiB: 14 MiB for large frames, room for three of 4 MiB (from
    // three connections: one holds two at most).
    let mut kept = Vec::new();
    for _ in 0..3 {
        let mut recv = sent(&c, &s, big(), true).await;
        kept.push(
            budget
                .read(&mut recv, &budget.connection(), true)
                .await
                .unwrap(),
        );
    }
    let mut fourth = sent(&c, &s, big(), true).await;
    let share = budget.connection();
    let mut waiting = std::pin::pin!(budget.read(&mut fourth, &share, true));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a fourth 4 MiB frame was admitted past the budget"
    );
    assert_eq!(held.get(), 3 * ((4 << 20) + 4), "waiting holds nothing");
    let mut small = sent(&c, &s, message(200, 200), true).await;
    let frame = tokio::time::timeout(
        Duration::from_secs(2),
        budget.read(&mut small, &budget.connection(), true),
    )
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

#[tokio::test]
async fn one_connection_holds_at_most_its_share_of_the_large_frames() {
    let (_server, c, s) = pair().await;
    let (budget, held) = budget(Duration::from_secs(10));
    let big = || message(4 << 20, 4 << 20);
    let greedy = budget.connection();
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut recv = sent(&c, &s, big(), true).await;
        kept.push(budget.read(&mut recv, &greedy, true).await.unwrap());
    }
    let mut third = sent(&c, &s, big(), true).await;
    let mut waiting = std::pin::pin!(budget.read(&mut third, &greedy, true));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a connection took a third 4 MiB frame: more than its share"
    );
    // The pool has room, and another connection gets it.
    let mut other = sent(&c, &s, big(), true).await;
    let frame = tokio::time::timeout(
        Duration::from_secs(2),
        budget.read(&mut other, &budget.connection(), true),
    )
    .await
    .expect("another connection waited behind the greedy one")
    .unwrap();
    assert_eq!(frame.bytes, big());
    assert_eq!(held.get(), 3 * ((4 << 20) + 4));
    kept.pop();
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("admitted once the connection made room")
        .unwrap();
}

#[tokio::test]
async fn frames_before_a_session_have_a_pool_of_their_own() {
    let (_server, c, s) = pair().await;
    let (budget, _) = budget(Duration::from_secs(10));
    // 64 frames of 16 KiB, announced and never sent in full: the whole
    // pool of connections without a session.
    let mut held = Vec::new();
    for _ in 0..64 {
        let share = budget.connection();
        let mut recv = sent(&c, &s, message(PRE_SESSION_FRAME_MAX - 4, 10), false).await;
        let waiting = tokio::spawn({
            let budget = std::sync::Arc::clone(&budget);
            async move {
                budget
                    .read(&mut recv, &share, false)
                    .await
                    .map(|f| f.bytes.len())
            }
        });
        held.push(waiting);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = sent(&c, &s, message(100, 100), true).await;
    let share = budget.connection();
    let mut waiting = std::pin::pin!(budget.read(&mut late, &share, false));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "the pool for frames without a session is larger than it says"
    );
    // Connections with a session do not wait for it.
    let mut small = sent(&c, &s, message(100, 100), true).await;
    tokio::time::timeout(
        Duration::from_secs(2),
        budget.read(&mut small, &budget.connection(), true),
    )
    .await
    .expect("a session's frame waited behind frames without one")
    .unwrap();
    for h in held {
        h.abort();
    }
}

#[tokio::test]
async fn a_connection_without_a_session_sends_two_frames_at_a_time() {
    let (_server, c, s) = pair().await;
    let (budget, _) = budget(Duration::from_secs(10));
    let budget2 = std::sync::Arc::clone(&budget);
    let share = std::sync::Arc::new(budget.connection());
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut recv = sent(&c, &s, message(PRE_SESSION_FRAME_MAX - 4, 10), false).await;
        let (budget, share) = (
            std::sync::Arc::clone(&budget),
            std::sync::Arc::clone(&share),
        );
        held.push(tokio::spawn(async move {
            budget
                .read(&mut recv, &share, false)
                .await
                .map(|f| f.bytes.len())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = sent(&c, &s, message(100, 100), true).await;
    let mut waiting = std::pin::pin!(budget2.read(&mut third, &share, false));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a connection without a session had three frames in"
    );
    let mut other = sent(&c, &s, message(100, 100), true).await;
    tokio::time::timeout(
        Duration::from_secs(2),
        budget2.read(&mut other, &budget2.connection(), false),
    )
    .await
    .expect("another connection waited behind it")
    .unwrap();
    // The two stall out (5 s before a session), making room.
    tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("admitted once the stalled frames were given up")
        .unwrap();
    for h in held {
        let err = h.await.unwrap().err().unwrap();
        assert!(
            matches!(err, IntakeError::Stalled(d) if d == Duration::from_secs(5)),
            "{err}"
        );
    }
}
