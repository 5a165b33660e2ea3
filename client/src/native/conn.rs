//! One QUIC connection to one node: TLS that trusts only the cluster CA,
//! and request/response exchanges, one per stream.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use cairn_proto::wire::{
    ALPN, Crc32c, Data, DataPieces, FRAME_OVERHEAD, FRAME_PAYLOAD_MAX, Request, RequestHeader,
    Response, Rope, data_answer, decode_frame_bytes_summed,
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
    client_endpoint_at(ca, ([0, 0, 0, 0], 0).into())
}

/// [`client_endpoint`] sending from `bind`.
pub fn client_endpoint_at(ca: &Path, bind: SocketAddr) -> Result<quinn::Endpoint, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let invalid = |e: &dyn std::fmt::Display| {
        ClientError::Invalid(format!("CA certificate {}: {e}", ca.display()))
    };
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| invalid(&e))? {
        roots
            .add(cert.map_err(|e| invalid(&e))?)
            .map_err(|e| invalid(&e))?;
    }
    let provider = cairn_quic::crypto_provider();
    let mut crypto = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| invalid(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(crypto))
        .map_err(|e| invalid(&e))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let transport = cairn_quic::transport(IDLE_TIMEOUT);
    config.transport_config(Arc::new(transport));
    let mut endpoint = cairn_quic::endpoint(bind, None, None).map_err(ClientError::Io)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Why an exchange gave no answer.
#[derive(Debug)]
pub struct Lost {
    pub message: String,
    /// The request could not be encoded (a path or a target too long for
    /// a frame): another connection would fail the same way.
    pub unsendable: bool,
}

pub async fn connect(endpoint: &quinn::Endpoint, addr: &str) -> Result<quinn::Connection, Lost> {
    let lost = |m: String| Lost {
        message: m,
        unsendable: false,
    };
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
    Ok(exchange_answer(conn, header, req, timeout)
        .await?
        .into_response())
}

/// An answer as it was read: a read's data left in the pieces it arrived
/// in, anything else decoded.
pub enum Answer {
    Whole(Response),
    Data(DataPieces),
}

impl Answer {
    /// The answer as one decoded response (a read's pieces joined).
    pub fn into_response(self) -> Response {
        match self {
            Self::Whole(r) => r,
            Self::Data(d) => Response::Data(Data {
                data: cairn_proto::extents::join(d.data),
                eof: d.eof,
            }),
        }
    }
}

/// [`exchange`], with a read's data left in the pieces it arrived in.
pub async fn exchange_answer(
    conn: &quinn::Connection,
    header: &RequestHeader,
    req: &Request,
    timeout: Duration,
) -> Result<Answer, Lost> {
    let lost = |m: String| Lost {
        message: m,
        unsendable: false,
    };
    let mut pieces = req.encode_chunks(header).map_err(|e| Lost {
        message: format!("cannot encode request: {e}"),
        unsendable: true,
    })?;
    let work = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(e.to_string()))?;
        send.write_all_chunks(&mut pieces)
            .await
            .map_err(|e| lost(e.to_string()))?;
        let _ = send.finish();
        let (answer, crc) = read_frame(&mut recv).await?;
        cairn_quic::read_end(&mut recv).await;
        match data_answer(&answer, crc) {
            Ok(Some(data)) => return Ok(Answer::Data(data)),
            Ok(None) => {}
            Err(e) => return Err(lost(e.to_string())),
        }
        match decode_frame_bytes_summed(&answer.join(), crc) {
            Ok(Some((frame, _))) => Response::decode(&frame)
                .map(Answer::Whole)
                .map_err(|e| lost(e.to_string())),
            Ok(None) => Err(lost("truncated answer".into())),
            Err(e) => Err(lost(e.to_string())),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| lost(format!("no answer in {timeout:?}")))?
        .map_err(|l| explained(conn, l))
}

/// `l`, with the node's reason if it closed the connection (too many
/// connections, no session set up in time, shutting down...): quinn's
/// stream errors say only "connection lost".
fn explained(conn: &quinn::Connection, l: Lost) -> Lost {
    match conn.close_reason() {
        Some(why) => Lost {
            message: format!("{}: {why}", l.message),
            ..l
        },
        None => l,
    }
}

/// Reads one answer frame (its length comes first) as the pieces QUIC
/// delivered, not copied: a read's data goes on as views of them. Returns
/// the CRC32C of its kind and payload too, summed piece by piece as they
/// arrive: checked afterwards over the whole frame, the sum read 4 MiB
/// again from memory.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<(Rope, u32), Lost> {
    let lost = |m: String| Lost {
        message: m,
        unsendable: false,
    };
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
    let total = 4 + body;
    // The checksum covers what lies between the length and itself.
    let summed_end = total.saturating_sub(4).max(4);
    let mut crc = Crc32c::new();
    let mut rope = Rope::default();
    rope.push(Bytes::copy_from_slice(&len));
    while rope.len() < total {
        let chunk = recv
            .read_chunk(total - rope.len(), true)
            .await
            .map_err(|e| lost(e.to_string()))?
            .ok_or_else(|| lost("truncated answer".into()))?;
        let summed = summed_end.saturating_sub(rope.len()).min(chunk.bytes.len());
        crc.update(&chunk.bytes[..summed]);
        rope.push(chunk.bytes);
    }
    Ok((rope, crc.finish()))
}
