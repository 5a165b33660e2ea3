//! QUIC endpoint plumbing shared by Cairn nodes and clients: the UDP socket
//! (buffers, sends split to what the kernel takes), transport settings
//! (flow-control windows, MTU discovery, acknowledgements, loss detection)
//! and the cipher order. Certificates and stream limits stay with each
//! side.

#[cfg(feature = "self-signed")]
mod self_signed;
mod silence;
mod split;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "self-signed")]
pub use self_signed::{SelfSignedError, self_signed};
pub use silence::close_when_silent;
use split::{SEND_BYTES_MAX, SplitSends};

/// Socket buffer asked for each direction of an endpoint: at the kernel's
/// default (about 200 KiB) a fast sender overflows the receiver with a
/// burst of 64 KiB datagrams, and every drop costs a loss recovery.
const UDP_BUFFER_BYTES: usize = 16 << 20;

/// Largest UDP payload path MTU discovery tries: a 64 KiB IPv4 packet.
/// Loopback carries it; on an ordinary 1500-byte network discovery stops
/// where the path does.
const MTU_UPPER_BOUND: u16 = SEND_BYTES_MAX as u16;

/// A QUIC endpoint on `addr`, client side always, server side with
/// `server`.
///
/// `reset_secret` is a secret that outlives the process (a node's private
/// key): the key behind the endpoint's stateless-reset tokens is derived
/// from it, so the same node started again on the same address can reset
/// the connections its previous process left open. Their peers then learn
/// of the restart from the first packet they send, instead of waiting out
/// an idle timeout or missed probes. Without one the key is random, as it
/// is for a client that nothing connects to.
pub fn endpoint(
    addr: SocketAddr,
    server: Option<quinn::ServerConfig>,
    reset_secret: Option<&[u8]>,
) -> std::io::Result<quinn::Endpoint> {
    let socket = udp_socket(addr)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("QUIC needs a tokio runtime"))?;
    let socket = SplitSends::wrap(&runtime, socket)?;
    quinn::Endpoint::new_with_abstract_socket(
        endpoint_config(reset_secret),
        server,
        socket,
        runtime,
    )
}

/// A key for `purpose` derived from `secret` (HMAC-SHA256 of the purpose
/// under the secret): the secret itself is never used as a key.
fn derive(secret: &[u8], purpose: &[u8]) -> aws_lc_rs::hmac::Tag {
    use aws_lc_rs::hmac;
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), purpose)
}

/// Settings under which a restarted endpoint can reset its previous
/// process's connections: a stateless-reset key, and connection IDs it
/// still recognizes as its own (quinn drops packets for IDs its
/// generator did not make without answering them, and a generator keyed
/// at random disowns every ID of the process before).
fn restartable(secret: &[u8]) -> quinn::EndpointConfig {
    let reset = derive(secret, b"cairn quic stateless reset v1");
    let mut c = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
        aws_lc_rs::hmac::HMAC_SHA256,
        reset.as_ref(),
    )));
    let ids = derive(secret, b"cairn quic connection ids v1");
    let mut key = [0u8; 8];
    key.copy_from_slice(&ids.as_ref()[..8]);
    let key = u64::from_le_bytes(key);
    c.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(key)));
    c
}

/// A UDP socket with buffers of [`UDP_BUFFER_BYTES`].
fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::sockopt;
    let socket = std::net::UdpSocket::bind(addr)?;
    // Past net.core.rmem_max only root may go (the FORCE options); others
    // get the system's maximum.
    if sockopt::set_socket_recv_buffer_size_force(&socket, UDP_BUFFER_BYTES).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(&socket, UDP_BUFFER_BYTES);
    }
    if sockopt::set_socket_send_buffer_size_force(&socket, UDP_BUFFER_BYTES).is_err() {
        let _ = sockopt::set_socket_send_buffer_size(&socket, UDP_BUFFER_BYTES);
    }
    Ok(socket)
}

/// The endpoint's own settings. quinn advertises and accepts UDP payloads
/// of at most 1,472 bytes unless told otherwise, and the peer's MTU
/// discovery stops there whatever its upper bound: on loopback that kept
/// every packet at Ethernet size and cost most of the read throughput.
fn endpoint_config(reset_secret: Option<&[u8]>) -> quinn::EndpointConfig {
    let mut c = match reset_secret {
        Some(secret) => restartable(secret),
        None => quinn::EndpointConfig::default(),
    };
    // 65,527 is QUIC's largest; anything at or above 1,200 is accepted.
    let _ = c.max_udp_payload_size(65_527);
    c
}

/// Transport settings for a connection declared dead after `idle` of
/// silence.
pub fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    // Keep-alives well inside the idle timeout, so a silent peer is a dead
    // peer.
    t.keep_alive_interval(Some(idle / 4));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    // Several 4 MiB reads, writes and chunk transfers in flight on one
    // connection: quinn's defaults (1.25 MB per stream, 10 MB to send)
    // would stall each 4 MiB stream for window updates. These are limits,
    // not allocations: a connection buffers only what is in flight.
    t.stream_receive_window(STREAM_WINDOW.into());
    t.receive_window(CONNECTION_WINDOW.into());
    t.send_window(u64::from(CONNECTION_WINDOW));
    t.mtu_discovery_config(Some(mtu_discovery()));
    t.ack_frequency_config(Some(ack_frequency()));
    // A busy end answers late now and then; declaring packets lost after
    // 9/8 of a sub-millisecond RTT turns that into spurious losses, which
    // shrink the congestion window and trip MTU black-hole detection.
    t.time_threshold(LOSS_TIME_THRESHOLD);
    t
}

/// Flow-control window of one stream: two 4 MiB messages.
const STREAM_WINDOW: u32 = 8 << 20;
/// Flow-control window of a connection, each way.
pub const CONNECTION_WINDOW: u32 = 64 << 20;
/// Loss detection's reordering allowance, as a factor of the RTT.
const LOSS_TIME_THRESHOLD: f32 = 4.0;

/// Path MTU discovery up to [`MTU_UPPER_BOUND`]: fewer, larger packets are
/// most of QUIC's throughput on a fast link (each costs quinn its framing,
/// loss tracking and an AEAD call).
fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MTU_UPPER_BOUND);
    // Black-hole detection also fires on congestion losses; try again soon
    // rather than a minute of small packets.
    mtu.black_hole_cooldown(Duration::from_secs(5));
    mtu
}

/// AWS-LC, preferring AES-128-GCM: QUIC encrypts every byte a node serves
/// and every copy it sends a peer. On a CPU with VAES, AWS-LC seals a
/// 64 KiB packet at about 9.5 GB/s where ring manages 5.8 (measured on the
/// benchmark machine), and AES-128 takes 10 rounds per block where AES-256
/// (rustls's first choice) takes 14. Both ends prefer it, so it is what
/// they agree on.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Fewer acknowledgements: the peer is asked to acknowledge every 16th
/// packet or within 5 ms, where QUIC's default is every other packet.
/// Every RPC's answer already carries the acknowledgement of its request,
/// so standalone ACK packets are mostly overhead: a datagram each way
/// through both kernels.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(16u32.into());
    ack.max_ack_delay(Some(Duration::from_millis(5)));
    ack
}

/// Takes the end of a stream whose message has been read in full, if it
/// has arrived. quinn marks a stream read only once a read has seen its
/// end; dropped before that, it sends the peer STOP_SENDING, which for a
/// request/answer exchange is an extra packet per call (and one more
/// acknowledgement). The sender finishes right after its message, so the
/// end nearly always came with it. It is not waited for: a peer that dies
/// between its message and its end must not hold up an answer already
/// read.
pub async fn read_end(recv: &mut quinn::RecvStream) {
    let mut probe = [0u8; 1];
    let mut read = std::pin::pin!(recv.read(&mut probe));
    std::future::poll_fn(|cx| {
        let _ = read.as_mut().poll(cx);
        std::task::Poll::Ready(())
    })
    .await;
}

/// Reads exactly `len` bytes into a buffer of that capacity. quinn's own
/// `read_exact` wants a buffer zeroed first: for a 4 MiB chunk that was a
/// memset of 4 MiB on every copy a node received.
pub async fn read_exact_vec(
    recv: &mut quinn::RecvStream,
    len: usize,
) -> Result<Vec<u8>, quinn::ReadExactError> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        match recv.read_chunk(len - buf.len(), true).await? {
            Some(chunk) => buf.extend_from_slice(&chunk.bytes),
            None => return Err(quinn::ReadExactError::FinishedEarly(buf.len())),
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests;
