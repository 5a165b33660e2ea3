//! One QUIC connection to one node: TLS that trusts only the cluster CA,
//! and request/response exchanges, one per stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use cairn_proto::wire::{
    ALPN, FRAME_OVERHEAD, FRAME_PAYLOAD_MAX, Request, RequestHeader, Response, decode_frame_bytes,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::ClientError;

/// The name every node's certificate carries (see `cairn-server tls issue`).
pub const SERVER_NAME: &str = "cairn-node";

/// A silent connection is declared dead after this long; keep-alives go
/// four times as often, so only a dead or cut-off node stays silent.
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(1000);

pub fn client_endpoint(ca: &Path) -> Result<quinn::Endpoint, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let invalid = |e: &dyn std::fmt::Display| {
        ClientError::Invalid(format!("CA certificate {}: {e}", ca.display()))
    };
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(&e))? {
        roots
            .add(cert.map_err(|e| invalid(&e))?)
            .map_err(|e| invalid(&e))?;
    }
    // AES-128-GCM first (rustls prefers AES-256): every byte read is
    // decrypted here, and AES-128 is 10 rounds a block to AES-256's 14.
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = Arc::new(provider);
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(crypto))
        .map_err(|e| invalid(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(IDLE_TIMEOUT / 4));
    transport.max_idle_timeout(quinn::IdleTimeout::try_from(IDLE_TIMEOUT).ok());
    // Large reads and writes in flight together: a window of a few of them.
    transport.stream_receive_window((8u32 << 20).into());
    transport.receive_window((64u32 << 20).into());
    transport.send_window(64 << 20);
    // Larger packets where the path carries them (loopback, jumbo frames):
    // fewer packets is most of QUIC's throughput on a fast link.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    // quinn sends up to 10 packets in one GSO batch and the kernel refuses
    // a batch over 65,507 bytes (a silent drop, then MTU black-hole
    // detection falls back to 1,200 bytes): 10 packets must fit.
    mtu.upper_bound(6_550);
    // Black-hole detection also fires on congestion losses; try again soon
    // rather than a minute of small packets.
    mtu.black_hole_cooldown(Duration::from_secs(5));
    transport.mtu_discovery_config(Some(mtu));
    // A busy client reads late now and then; declaring packets lost after
    // 9/8 of a sub-millisecond RTT turns that into spurious losses.
    transport.time_threshold(4.0);
    config.transport_config(Arc::new(transport));
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let socket = udp_socket(bind).map_err(ClientError::Io)?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ClientError::Io(std::io::Error::other("QUIC needs a tokio runtime")))?;
    // quinn advertises and accepts UDP payloads of at most 1,472 bytes
    // unless told otherwise, which caps the server's MTU discovery too.
    let mut endpoint_config = quinn::EndpointConfig::default();
    let _ = endpoint_config.max_udp_payload_size(65_527);
    let mut endpoint =
        quinn::Endpoint::new(endpoint_config, None, socket, runtime).map_err(ClientError::Io)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// A UDP socket with buffers that hold a burst of 64 KiB datagrams: at the
/// kernel's default (about 200 KiB) a fast server overflows the client and
/// every drop costs a loss recovery.
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

/// Socket buffer asked for each direction.
const UDP_BUFFER_BYTES: usize = 16 << 20;

/// Why an exchange gave no answer. `sent` says whether the request may
/// have reached the server.
#[derive(Debug)]
pub struct Lost {
    pub message: String,
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: &str) -> Result<quinn::Connection, Lost> {
    let lost = |m: String| Lost { message: m };
    let sock: SocketAddr = match tokio::net::lookup_host(addr).await {
        Ok(mut a) => a
            .next()
            .ok_or_else(|| lost(format!("{addr}: no address")))?,
        Err(e) => return Err(lost(format!("{addr}: {e}"))),
    };
    let connecting = endpoint
        .connect(sock, SERVER_NAME)
        .map_err(|e| lost(format!("{addr}: {e}")))?;
    tokio::time::timeout(IDLE_TIMEOUT, connecting)
        .await
        .map_err(|_| lost(format!("{addr}: connection timed out")))?
        .map_err(|e| lost(format!("{addr}: {e}")))
}

/// Sends one request and reads its answer.
pub async fn exchange(
    conn: &quinn::Connection,
    header: &RequestHeader,
    req: &Request,
    timeout: Duration,
) -> Result<Response, Lost> {
    let lost = |m: String| Lost { message: m };
    let mut pieces = req
        .encode_chunks(header)
        .map_err(|e| lost(format!("cannot encode request: {e}")))?;
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        send.write_all_chunks(&mut pieces)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let _ = send.finish();
        let answer = read_frame(&mut recv).await?;
        match decode_frame_bytes(&answer) {
            Ok(Some((frame, _))) => Response::decode(&frame).map_err(|e| lost(e.to_string())),
            Ok(None) => Err(lost("truncated answer".into())),
            Err(e) => Err(lost(e.to_string())),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| lost(format!("no answer in {timeout:?}")))?
}

/// Reads one answer frame into a buffer of its exact size (its length comes
/// first), so a 4 MiB read is copied once, from QUIC's packets into it.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Bytes, Lost> {
    let lost = |m: String| Lost { message: m };
    let mut len = [0u8; 4];
    recv.read_exact(&mut len)
        .await
        .map_err(|e| lost(e.to_string()))?;
    let body = u32::from_le_bytes(len) as usize;
    if body > FRAME_PAYLOAD_MAX + FRAME_OVERHEAD {
        return Err(lost(format!(
            "answer of {body} bytes is over the frame limit"
        )));
    }
    let mut buf = BytesMut::with_capacity(4 + body);
    buf.extend_from_slice(&len);
    // Into spare capacity: no zeroing of 4 MiB first.
    while buf.len() < 4 + body {
        let left = (4 + body - buf.len()) as u64;
        let n = (&mut *recv)
            .take(left)
            .read_buf(&mut buf)
            .await
            .map_err(|e| lost(e.to_string()))?;
        if n == 0 {
            return Err(lost("truncated answer".into()));
        }
    }
    Ok(buf.freeze())
}
