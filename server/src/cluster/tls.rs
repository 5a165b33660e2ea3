//! Cluster certificates: a cluster CA signs one certificate per node, and
//! nodes accept QUIC connections only from peers holding such a certificate
//! (mutual TLS 1.3). `cairn-server tls init` and `tls issue` make them.
//!
//! A TLS directory holds `ca.pem` (the CA certificate), `node.pem` and
//! `node-key.pem`; the CA's key (`ca-key.pem`) stays wherever new node
//! certificates are issued, never on a node that does not need it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The name every node certificate carries and every client checks: node
/// identity is the CA's signature, not a host name.
pub const NODE_NAME: &str = "cairn-node";
const ALPN: &[u8] = b"cairn-cluster/1";
const CA_NAME: &str = "Cairn cluster CA";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Pem { path: String, message: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("QUIC crypto: {0}")]
    Quic(String),
}

fn file_error(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::File {
        path: path.display().to_string(),
        source,
    }
}

fn write_private(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(file_error(path))?;
    f.write_all(contents.as_bytes()).map_err(file_error(path))?;
    f.sync_all().map_err(file_error(path))
}

fn write_public(path: &Path, contents: &str) -> Result<(), TlsError> {
    std::fs::write(path, contents).map_err(file_error(path))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Creates a new cluster CA in `dir` (`ca.pem`, `ca-key.pem`). Refuses to
/// overwrite an existing one.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(file_error(dir))?;
    let key_path = dir.join("ca-key.pem");
    if key_path.exists() {
        return Err(TlsError::File {
            path: key_path.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a CA already exists"),
        });
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write_private(&key_path, &key.serialize_pem())?;
    write_public(&dir.join("ca.pem"), &cert.pem())
}

/// Issues a node certificate from the CA in `ca_dir` into `out_dir`
/// (`node.pem`, `node-key.pem`, and a copy of `ca.pem`).
pub fn issue(ca_dir: &Path, out_dir: &Path, node: &str) -> Result<(), TlsError> {
    let key_path = ca_dir.join("ca-key.pem");
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_key_pem = std::fs::read_to_string(&key_path).map_err(file_error(&key_path))?;
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(file_error(&ca_pem_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    // Same name and key as the CA certificate on disk, which is all that
    // signing needs from the issuer.
    let issuer = ca_params()?.self_signed(&ca_key)?;
    let mut params = CertificateParams::new(vec![NODE_NAME.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, node);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer, &ca_key)?;
    std::fs::create_dir_all(out_dir).map_err(file_error(out_dir))?;
    write_private(&out_dir.join("node-key.pem"), &key.serialize_pem())?;
    write_public(&out_dir.join("node.pem"), &cert.pem())?;
    write_public(&out_dir.join("ca.pem"), &ca_pem)
}

struct Loaded {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn pem_error(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

fn load(dir: &Path) -> Result<Loaded, TlsError> {
    let ca = dir.join("ca.pem");
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| pem_error(&ca, e))? {
        roots
            .add(cert.map_err(|e| pem_error(&ca, e))?)
            .map_err(|e| pem_error(&ca, e))?;
    }
    let node = dir.join("node.pem");
    let chain = CertificateDer::pem_file_iter(&node)
        .map_err(|e| pem_error(&node, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(&node, e))?;
    let key_path = dir.join("node-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e))?;
    Ok(Loaded {
        roots: Arc::new(roots),
        chain,
        key,
    })
}

/// The secret this node's QUIC endpoint derives its stateless-reset key
/// from: its private key, which stays the same across restarts (see
/// [`cairn_quic::endpoint`]).
pub fn reset_secret(dir: &Path) -> Result<Vec<u8>, TlsError> {
    let key_path = dir.join("node-key.pem");
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| pem_error(&key_path, e))?;
    Ok(key.secret_der().to_vec())
}

fn transport(idle: Duration) -> quinn::TransportConfig {
    let mut t = cairn_quic::transport(idle);
    t.max_concurrent_bidi_streams(STREAMS_MAX.into());
    t.max_concurrent_uni_streams(0u32.into());
    t
}

/// Most concurrent RPC streams a peer may open to a node.
pub const STREAMS_MAX: u32 = 64;

/// What a node lets a peer or client send on one stream before reading
/// it. A native request waiting for the node's request budget is left
/// unread; its bytes stay in quinn's buffers and hold the connection's
/// flow-control credit. With every stream's window together at most half
/// the connection's, streams left waiting can never take all of it, and
/// the ones being read always get their bytes.
pub const ACCEPTED_STREAM_WINDOW: u32 = 512 << 10;

const _: () = assert!(
    STREAMS_MAX as u64 * ACCEPTED_STREAM_WINDOW as u64 * 2 <= cairn_quic::CONNECTION_WINDOW as u64
);

/// What a node lets a connection send before it reads it, until the
/// connection has shown who it is: a peer's certificate, or a client's
/// session (`cairn_quic::CONNECTION_WINDOW` after that, see
/// [`open_window`]). Enough for a negotiate and a setup; 4,096
/// connections that never set up a session hold 4 GiB of a node's memory
/// at most, not 64 MiB each.
pub const UNPROVEN_CONNECTION_WINDOW: u32 = 1 << 20;

/// Lets `conn`, now known, use the whole connection window.
pub fn open_window(conn: &quinn::Connection) {
    conn.set_receive_window(cairn_quic::CONNECTION_WINDOW.into());
}

/// The QUIC server side: TLS 1.3 for peers (ALPN `cairn-peer`, with a
/// CA-signed certificate) and native-protocol clients (ALPN `cairn/1`).
pub fn server_config(dir: &Path, idle: Duration) -> Result<quinn::ServerConfig, TlsError> {
    let loaded = load(dir)?;
    // Peers must present a CA-signed certificate (checked here when they do,
    // and required by the peer service); native-protocol clients present
    // none and authenticate with share tokens.
    let provider = cairn_quic::crypto_provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(loaded.roots, Arc::clone(&provider))
        .allow_unauthenticated()
        .build()?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(loaded.chain, loaded.key)?;
    crypto.alpn_protocols = vec![ALPN.to_vec(), cairn_proto::wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(Arc::new(crypto))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut t = transport(idle);
    t.stream_receive_window(ACCEPTED_STREAM_WINDOW.into());
    t.receive_window(UNPROVEN_CONNECTION_WINDOW.into());
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// The QUIC client side: trusts only the cluster CA and presents this
/// node's certificate.
pub fn client_config(dir: &Path, idle: Duration) -> Result<quinn::ClientConfig, TlsError> {
    let loaded = load(dir)?;
    let mut crypto = rustls::ClientConfig::builder_with_provider(cairn_quic::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(loaded.roots)
        .with_client_auth_cert(loaded.chain, loaded.key)?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(crypto))
        .map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut t = transport(idle);
    // The side that dials watches for silence (see `PEER_SILENCE`): its
    // keep-alives draw the peer's acknowledgements often enough.
    t.keep_alive_interval(Some(super::transport::PEER_SILENCE / 4));
    config.transport_config(Arc::new(t));
    Ok(config)
}
