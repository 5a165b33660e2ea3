//! The QUIC helpers over a real connection on loopback: a peer that dies
//! silently, a restarted server, a stream read to an exact length.

#![allow(clippy::unwrap_used)]

use super::*;

const ALPN: &[u8] = b"cairn-quic-test";

/// A server's TLS settings (its self-signed certificate) and a client's
/// that trust it, each with connections declared dead after `idle`.
fn configs(idle: Duration) -> (quinn::ServerConfig, quinn::ClientConfig) {
    self_signed(ALPN, idle).unwrap()
}

/// A client endpoint on loopback; call within a runtime.
fn client(cfg: quinn::ClientConfig) -> quinn::Endpoint {
    let mut client = endpoint(([127, 0, 0, 1], 0).into(), None, None).unwrap();
    client.set_default_client_config(cfg);
    client
}

/// A server on a runtime of its own, so that it can die the way a killed
/// process does ([`kill`]): its tasks dropped mid-flight and its socket
/// closed, no CONNECTION_CLOSE sent.
fn doomed_server(
    cfg: quinn::ServerConfig,
    secret: Option<&[u8]>,
) -> (
    tokio::runtime::Runtime,
    quinn::Endpoint,
    std::net::SocketAddr,
) {
    let doomed = runtime();
    let server = doomed
        .block_on(async { endpoint(([127, 0, 0, 1], 0).into(), Some(cfg), secret) })
        .unwrap();
    let addr = server.local_addr().unwrap();
    (doomed, server, addr)
}

/// Stops every task of `doomed` and waits until its worker is gone. Only
/// then may the caller drop its last handles on the server's connections:
/// dropping the last handle closes a connection (CONNECTION_CLOSE, code 0),
/// and a worker still running would send that close, which a killed
/// process never does.
fn kill(doomed: tokio::runtime::Runtime) {
    doomed.shutdown_timeout(Duration::from_secs(10));
}

/// A client connection and the server's side of it.
async fn pair() -> (quinn::Endpoint, quinn::Connection, quinn::Connection) {
    let (server_cfg, client_cfg) = configs(Duration::from_secs(5));
    let server = endpoint(([127, 0, 0, 1], 0).into(), Some(server_cfg), None).unwrap();
    let client = client(client_cfg);

    let addr = server.local_addr().unwrap();
    let (c, s) = tokio::join!(
        async { client.connect(addr, "localhost").unwrap().await.unwrap() },
        async { server.accept().await.unwrap().await.unwrap() }
    );
    (server, c, s)
}

/// Whether a client's connection is reset, within a second of its next
/// packet, when the server's process dies without a word and a new one
/// starts on the same address with `restarted_secret` (the first had
/// `secret`). Idle connections would otherwise last a minute.
fn reset_after_restart(
    secret: &[u8],
    restarted_secret: &[u8],
) -> Result<quinn::ConnectionError, tokio::time::error::Elapsed> {
    let (server_cfg, client_cfg) = configs(Duration::from_secs(60));
    let (doomed, server, addr) = doomed_server(server_cfg.clone(), Some(secret));
    let accepting = {
        let server = server.clone();
        doomed.spawn(async move { server.accept().await.unwrap().await.unwrap() })
    };
    let rt = runtime();
    let client = rt.block_on(async { client(client_cfg) });
    let conn = rt.block_on(async { client.connect(addr, "localhost").unwrap().await.unwrap() });
    let server_side = doomed.block_on(accepting).unwrap();
    kill(doomed);
    drop((server, server_side));

    rt.block_on(async {
        // The dead runtime's threads let go of the socket in their own time.
        let mut tries = 0;
        let _restarted = loop {
            match endpoint(addr, Some(server_cfg.clone()), Some(restarted_secret)) {
                Ok(e) => break e,
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("cannot restart the server: {e}"),
            }
        };
        // Any packet will do; the restarted server knows no connection.
        if let Ok(mut s) = conn.open_uni().await {
            let _ = s.write_all(b"are you there").await;
        }
        tokio::time::timeout(Duration::from_secs(1), conn.closed()).await
    })
}

#[test]
fn a_restarted_server_resets_the_connections_its_last_process_left() {
    let end = reset_after_restart(b"node key", b"node key");
    assert!(
        matches!(end, Ok(quinn::ConnectionError::Reset)),
        "the connection was to end with a stateless reset, not {end:?}"
    );
    // What made it so: the key the reset is proven with. A server that
    // comes back with another cannot reset anything.
    let end = reset_after_restart(b"node key", b"another key");
    assert!(
        end.is_err(),
        "a reset proven with another key ended it: {end:?}"
    );
}

/// A runtime of one worker thread, for one side of a connection.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// How a client's connection ends when its server answers a request 100 ms
/// after it came and then dies without a word: the client, waiting for
/// nothing, sends nothing until its next keep-alive.
fn end_after_a_silent_death(watched: bool) -> quinn::ConnectionError {
    let idle = Duration::from_secs(2);
    let (server_cfg, client_cfg) = configs(idle);
    let (doomed, server, addr) = doomed_server(server_cfg, None);
    {
        let server = server.clone();
        doomed.spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let _ = recv.read_to_end(64).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            send.write_all(b"answer").await.unwrap();
            send.finish().unwrap();
            std::future::pending::<()>().await
        });
    }
    let rt = runtime();
    let (_client, conn) = rt.block_on(async {
        let client = client(client_cfg);
        let conn = client.connect(addr, "localhost").unwrap().await.unwrap();
        if watched {
            close_when_silent(conn.clone(), idle);
        }
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"request").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"answer");
        (client, conn)
    });
    // Dies the way a killed process does (see doomed_server).
    kill(doomed);
    drop(server);
    rt.block_on(conn.closed())
}

#[test]
fn a_silent_peer_is_given_up_a_timeout_after_its_last_datagram() {
    // QUIC's idle timer restarts at the keep-alive sent 400 ms after the
    // answer (RFC 9000 §10.1), so it fires only 2.4 s after it...
    assert_eq!(
        end_after_a_silent_death(false),
        quinn::ConnectionError::TimedOut
    );
    // ...while the watch gives up 2 s after the last datagram came.
    assert_eq!(
        end_after_a_silent_death(true),
        quinn::ConnectionError::LocallyClosed
    );
}

/// Sends `bytes` on a new stream and finishes it; the server's end of it.
async fn sent(c: &quinn::Connection, s: &quinn::Connection, bytes: Vec<u8>) -> quinn::RecvStream {
    let mut send = c.open_uni().await.unwrap();
    let writing = async move {
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        // Kept open until the peer has read it all.
        let _ = send.stopped().await;
    };
    let (recv, ()) = tokio::join!(async { s.accept_uni().await.unwrap() }, async {
        tokio::spawn(writing);
    });
    recv
}

/// A frame-like message: a little-endian length, then `body`.
fn message(announced: u32, body: usize) -> Vec<u8> {
    let mut m = announced.to_le_bytes().to_vec();
    m.extend((0..body).map(|i| i as u8));
    m
}

#[tokio::test]
async fn read_exact_vec_takes_exactly_and_notices_an_early_end() {
    let (_server, c, s) = pair().await;
    let mut recv = sent(&c, &s, message(0, 100)).await;
    let got = read_exact_vec(&mut recv, 50).await.unwrap();
    assert_eq!(got, message(0, 100)[..50]);
    let mut recv = sent(&c, &s, message(0, 100)).await;
    let err = read_exact_vec(&mut recv, 200).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadExactError::FinishedEarly(104)),
        "{err:?}"
    );
}
