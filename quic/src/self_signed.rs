//! A server with a throwaway self-signed certificate and a client that
//! trusts it, with the transport settings and cipher order nodes and
//! clients use: for tests and benchmarks on loopback, never for a cluster
//! (its CA and certificates come from `cairn tls`).

use std::sync::Arc;
use std::time::Duration;

/// Why a pair could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SelfSignedError {
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("QUIC: {0}")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
}

/// Configs for a server named `localhost` offering `alpn`, and a client
/// that trusts it; connections are declared dead after `idle`.
pub fn self_signed(
    alpn: &[u8],
    idle: Duration,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), SelfSignedError> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
    let der = cert.cert.der().clone();
    let key = rustls_pki_types::PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key.into())?;
    server_tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(server_tls))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(crate::transport(idle)));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(der)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(crate::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(client_tls))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(crate::transport(idle)));
    Ok((server, client))
}
