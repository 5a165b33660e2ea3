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
    let bind: SocketAddr = ([0, 0, 0, 0], 0).into();
    let mut endpoint = cairn_quic::endpoint(bind, None).map_err(ClientError::Io)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

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
        cairn_quic::read_end(&mut recv).await;
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
