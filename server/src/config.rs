//! Configuration: a TOML file (`--config`) whose every field a flag or a
//! `CAIRN_*` environment variable can override, validated into [`Config`].
//! `deploy/cairn.toml` is the annotated example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_proto::ShareName;
use clap::Parser;
use serde::{Deserialize, Serialize};

use crate::meta::Access;

/// The config file, as written. Every field has a default.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// This node's id, unique in its cluster.
    pub node_id: u64,
    /// Where metadata (`meta/`) and chunks (`chunks/`) live.
    pub data_dir: PathBuf,
    /// Address of the HTTP API; port 0 picks a free port.
    pub http_listen: String,
    /// Largest upload accepted, in bytes.
    pub upload_bytes_max: u64,
    /// Files up to this size are stored inside the metadata.
    pub inline_bytes_max: u64,
    /// Free space kept in reserve: no chunk copy that would leave less is
    /// written here, whoever sent it, so metadata writes (on the same file
    /// system) never meet a full disk; an upload without room for its
    /// write quorum gets 507.
    pub free_bytes_min: u64,
    /// Memory for chunk buffers of all uploads together, in bytes.
    pub upload_buffer_bytes_max: u64,
    /// Memory for chunks being read, verified and sent, across all downloads.
    pub download_buffer_bytes_max: u64,
    /// An upload whose body stalls this long is aborted.
    pub body_idle_timeout_secs: u64,
    /// How long an unreferenced chunk is kept before GC deletes it.
    pub gc_grace_secs: u64,
    /// Time between GC passes.
    pub gc_interval_secs: u64,
    /// How long in-flight requests get to finish after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Open HTTP connections at most; more wait in the listen backlog.
    pub http_connections_max: usize,
    /// A request's headers must arrive within this many seconds.
    pub http_header_timeout_secs: u64,
    /// `human` or `json`.
    pub log_format: LogFormat,
    /// Shares to create at startup, with their tokens.
    pub shares: Vec<ShareConfig>,
    /// Bearer token that may change cluster membership (`cairn cluster
    /// add/remove`); without one, membership cannot be changed over HTTP.
    pub admin_token: Option<String>,
    /// Replication: peers, transport, placement. Without `quic_listen` the
    /// node is a cluster of one.
    pub cluster: ClusterConfig,
}

/// The `[cluster]` table.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address of the node-to-node QUIC listener; empty for a
    /// single node without peers.
    pub quic_listen: String,
    /// Directory with `ca.pem`, `node.pem`, `node-key.pem`
    /// (`cairn-server tls init` / `tls issue`).
    pub tls_dir: Option<PathBuf>,
    /// The HTTP URL clients and peers use for this node (default: from
    /// `http_listen`).
    pub advertise_http: Option<String>,
    /// The QUIC address peers use for this node (default: `quic_listen`).
    pub advertise_quic: Option<String>,
    /// The first members of a new cluster. Every listed node initializes
    /// the cluster with this same list at its first start; a node not
    /// listed waits to be added (`cairn cluster add`).
    pub initial_members: Vec<MemberConfig>,
    /// A witness votes and holds metadata, but stores no chunks.
    pub witness: bool,
    /// Copies of each chunk (capped at the number of data nodes).
    pub replicas: usize,
    /// Copies that must be on disk before a write is acknowledged; 0 means
    /// a majority of `replicas`.
    pub write_quorum: usize,
    pub heartbeat_ms: u64,
    /// A follower that hears no leader for a random time between this and
    /// 1.5 times this starts an election.
    pub election_timeout_ms: u64,
    /// A node unreachable this long is declared dead: its chunks are
    /// placed on, and repaired to, the other nodes.
    pub dead_after_secs: u64,
    /// Time between repair passes (missing copies are fetched).
    pub repair_interval_secs: u64,
    /// Time between scrub passes (every local chunk re-hashed).
    pub scrub_interval_secs: u64,
    /// Scrub reading rate, bytes per second.
    pub scrub_bytes_per_sec: u64,
    /// Log entries between metadata snapshots (a new or far-behind node
    /// receives the latest snapshot, then the log after it).
    pub snapshot_logs: u64,
    /// How long a metadata write may wait for a leader.
    pub write_timeout_secs: u64,
    /// How long a read may wait to confirm it sees the latest metadata.
    pub read_timeout_secs: u64,
    /// Native protocol: how long a session's handles (and their locks)
    /// outlive the loss of its connection before they are closed.
    pub handle_timeout_secs: u64,
    /// Native protocol: memory for unflushed writes of all handles on this
    /// node, in bytes; writers wait when it is used up.
    pub write_buffer_bytes_max: u64,
    /// Native protocol: memory for request frames being received or
    /// served on this node, in bytes (at least 16 MiB); a stream waits,
    /// unread, until its frame fits.
    pub request_buffer_bytes_max: u64,
    /// Native protocol: how long an open waits for the holders of
    /// conflicting leases to acknowledge their breaks before it takes the
    /// leases away itself.
    pub lease_break_timeout_secs: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            quic_listen: String::new(),
            tls_dir: None,
            advertise_http: None,
            advertise_quic: None,
            initial_members: Vec::new(),
            witness: false,
            replicas: 3,
            write_quorum: 0,
            heartbeat_ms: 100,
            election_timeout_ms: 250,
            dead_after_secs: 10,
            repair_interval_secs: 10,
            scrub_interval_secs: 6 * 3600,
            scrub_bytes_per_sec: 64 << 20,
            snapshot_logs: 10_000,
            write_timeout_secs: 10,
            read_timeout_secs: 5,
            handle_timeout_secs: 60,
            write_buffer_bytes_max: 512 << 20,
            request_buffer_bytes_max: 256 << 20,
            lease_break_timeout_secs: 35,
        }
    }
}

/// One entry of `initial_members`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig {
    pub id: u64,
    pub quic: String,
    pub http: String,
    #[serde(default)]
    pub witness: bool,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            node_id: 1,
            data_dir: PathBuf::from("./cairn-data"),
            http_listen: "127.0.0.1:8080".into(),
            upload_bytes_max: 1 << 40,
            inline_bytes_max: 64 * 1024,
            free_bytes_min: 256 << 20,
            upload_buffer_bytes_max: 256 << 20,
            download_buffer_bytes_max: 512 << 20,
            body_idle_timeout_secs: 60,
            gc_grace_secs: 3600,
            gc_interval_secs: 300,
            shutdown_grace_secs: 30,
            http_connections_max: 4096,
            http_header_timeout_secs: 30,
            log_format: LogFormat::Human,
            shares: Vec::new(),
            admin_token: None,
            cluster: ClusterConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShareConfig {
    pub name: String,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The bearer token itself (at least 16 characters).
    pub token: String,
    pub access: Access,
}

/// `cairn-server` command line; each flag also reads `CAIRN_<FLAG>`.
#[derive(Debug, Parser)]
#[command(name = "cairn-server", version, about = "Cairn storage node")]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "CAIRN_NODE_ID")]
    pub node_id: Option<u64>,
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    #[arg(long, env = "CAIRN_HTTP_LISTEN")]
    pub http_listen: Option<String>,
    #[arg(long, env = "CAIRN_UPLOAD_BYTES_MAX")]
    pub upload_bytes_max: Option<u64>,
    #[arg(long, env = "CAIRN_INLINE_BYTES_MAX")]
    pub inline_bytes_max: Option<u64>,
    #[arg(long, env = "CAIRN_FREE_BYTES_MIN")]
    pub free_bytes_min: Option<u64>,
    #[arg(long, env = "CAIRN_UPLOAD_BUFFER_BYTES_MAX")]
    pub upload_buffer_bytes_max: Option<u64>,
    #[arg(long, env = "CAIRN_DOWNLOAD_BUFFER_BYTES_MAX")]
    pub download_buffer_bytes_max: Option<u64>,
    #[arg(long, env = "CAIRN_BODY_IDLE_TIMEOUT_SECS")]
    pub body_idle_timeout_secs: Option<u64>,
    #[arg(long, env = "CAIRN_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
    #[arg(long, env = "CAIRN_HTTP_CONNECTIONS_MAX")]
    pub http_connections_max: Option<usize>,
    #[arg(long, env = "CAIRN_HTTP_HEADER_TIMEOUT_SECS")]
    pub http_header_timeout_secs: Option<u64>,
    #[arg(long, env = "CAIRN_GC_GRACE_SECS")]
    pub gc_grace_secs: Option<u64>,
    #[arg(long, env = "CAIRN_GC_INTERVAL_SECS")]
    pub gc_interval_secs: Option<u64>,
    #[arg(long, env = "CAIRN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// UDP address of the node-to-node QUIC listener (`[cluster]`).
    #[arg(long, env = "CAIRN_QUIC_LISTEN")]
    pub quic_listen: Option<String>,
    #[arg(long, env = "CAIRN_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Once listening, write `{"id": N, "http": "ADDR", "quic": "ADDR",
    /// "pid": N}` here (for scripts and tests that bind port 0).
    #[arg(long, env = "CAIRN_READY_FILE")]
    pub ready_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Tool>,
}

/// Tools that run instead of the server.
#[derive(Debug, clap::Subcommand)]
pub enum Tool {
    /// Cluster certificates.
    #[command(subcommand)]
    Tls(TlsTool),
}

#[derive(Debug, clap::Subcommand)]
pub enum TlsTool {
    /// Create a new cluster CA (`ca.pem`, `ca-key.pem`) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate from the CA in CA_DIR into OUT
    /// (`node.pem`, `node-key.pem`, `ca.pem`): OUT is that node's tls_dir.
    Issue {
        #[arg(long)]
        ca_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// A name for the node (goes in the certificate's common name).
        #[arg(long)]
        name: String,
    },
}

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The validated configuration the server runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub node_id: u64,
    pub data_dir: PathBuf,
    pub http_listen: SocketAddr,
    pub upload_bytes_max: u64,
    pub inline_bytes_max: u64,
    pub free_bytes_min: u64,
    pub upload_buffers: usize,
    pub download_buffers: usize,
    pub body_idle_timeout: Duration,
    pub gc_grace: Duration,
    pub gc_interval: Duration,
    pub shutdown_grace: Duration,
    pub http_connections_max: usize,
    pub http_header_timeout: Duration,
    pub log_format: LogFormat,
    pub shares: Vec<(ShareName, Vec<TokenConfig>)>,
    pub ready_file: Option<PathBuf>,
    pub admin_token: Option<String>,
    pub cluster: ClusterConfig,
}

/// Largest inline file: inline data rides in every metadata read of its inode.
pub const INLINE_BYTES_LIMIT: u64 = 1 << 20;

impl Config {
    /// Reads the file named by `--config` (if any) and applies overrides.
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let mut file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        if let Some(v) = cli.node_id {
            file.node_id = v;
        }
        if let Some(v) = cli.data_dir {
            file.data_dir = v;
        }
        if let Some(v) = cli.http_listen {
            file.http_listen = v;
        }
        if let Some(v) = cli.upload_bytes_max {
            file.upload_bytes_max = v;
        }
        if let Some(v) = cli.free_bytes_min {
            file.free_bytes_min = v;
        }
        if let Some(v) = cli.inline_bytes_max {
            file.inline_bytes_max = v;
        }
        if let Some(v) = cli.upload_buffer_bytes_max {
            file.upload_buffer_bytes_max = v;
        }
        if let Some(v) = cli.download_buffer_bytes_max {
            file.download_buffer_bytes_max = v;
        }
        if let Some(v) = cli.body_idle_timeout_secs {
            file.body_idle_timeout_secs = v;
        }
        if let Some(v) = cli.shutdown_grace_secs {
            file.shutdown_grace_secs = v;
        }
        if let Some(v) = cli.http_connections_max {
            file.http_connections_max = v;
        }
        if let Some(v) = cli.http_header_timeout_secs {
            file.http_header_timeout_secs = v;
        }
        if let Some(v) = cli.gc_grace_secs {
            file.gc_grace_secs = v;
        }
        if let Some(v) = cli.gc_interval_secs {
            file.gc_interval_secs = v;
        }
        if let Some(v) = cli.log_format {
            file.log_format = v;
        }
        if let Some(v) = cli.quic_listen {
            file.cluster.quic_listen = v;
        }
        if let Some(v) = cli.tls_dir {
            file.cluster.tls_dir = Some(v);
        }
        Self::validate(file, cli.ready_file)
    }

    pub fn validate(file: FileConfig, ready_file: Option<PathBuf>) -> Result<Self, ConfigError> {
        let invalid = |m: String| ConfigError::Invalid(m);
        let http_listen = file
            .http_listen
            .parse()
            .map_err(|e| invalid(format!("http_listen '{}': {e}", file.http_listen)))?;
        if file.inline_bytes_max > INLINE_BYTES_LIMIT {
            return Err(invalid(format!(
                "inline_bytes_max is at most {INLINE_BYTES_LIMIT}"
            )));
        }
        let chunk = cairn_proto::CHUNK_SIZE_MAX as u64;
        if file.upload_buffer_bytes_max < chunk || file.download_buffer_bytes_max < chunk {
            return Err(invalid(format!(
                "upload_buffer_bytes_max and download_buffer_bytes_max must be at least one chunk ({chunk} bytes)"
            )));
        }
        if file.http_connections_max == 0 || file.http_header_timeout_secs == 0 {
            return Err(invalid(
                "http_connections_max and http_header_timeout_secs must be positive".into(),
            ));
        }
        if file.gc_interval_secs == 0 || file.body_idle_timeout_secs == 0 || file.gc_grace_secs == 0
        {
            return Err(invalid(
                "gc_interval_secs, gc_grace_secs and body_idle_timeout_secs must be positive"
                    .into(),
            ));
        }
        validate_cluster(&file.cluster, file.node_id)?;
        if file.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(invalid("admin_token is shorter than 16 characters".into()));
        }
        let mut shares = Vec::new();
        for s in file.shares {
            let name = ShareName::parse(&s.name)
                .map_err(|e| invalid(format!("share '{}': {e}", s.name)))?;
            if let Some(t) = s.tokens.iter().find(|t| t.token.len() < 16) {
                return Err(invalid(format!(
                    "share '{name}': token '{}…' is shorter than 16 characters",
                    t.token.chars().take(3).collect::<String>()
                )));
            }
            shares.push((name, s.tokens));
        }
        Ok(Self {
            node_id: file.node_id,
            data_dir: file.data_dir,
            http_listen,
            upload_bytes_max: file.upload_bytes_max,
            inline_bytes_max: file.inline_bytes_max,
            free_bytes_min: file.free_bytes_min,
            upload_buffers: usize::try_from(file.upload_buffer_bytes_max / chunk)
                .unwrap_or(usize::MAX),
            download_buffers: usize::try_from(file.download_buffer_bytes_max / chunk)
                .unwrap_or(usize::MAX),
            body_idle_timeout: Duration::from_secs(file.body_idle_timeout_secs),
            gc_grace: Duration::from_secs(file.gc_grace_secs),
            gc_interval: Duration::from_secs(file.gc_interval_secs),
            shutdown_grace: Duration::from_secs(file.shutdown_grace_secs),
            http_connections_max: file.http_connections_max,
            http_header_timeout: Duration::from_secs(file.http_header_timeout_secs),
            log_format: file.log_format,
            shares,
            ready_file,
            admin_token: file.admin_token,
            cluster: file.cluster,
        })
    }
}

fn validate_cluster(c: &ClusterConfig, node_id: u64) -> Result<(), ConfigError> {
    let invalid = |m: &str| Err(ConfigError::Invalid(m.into()));
    if node_id == 0 {
        return invalid("node_id must be positive");
    }
    if !c.quic_listen.is_empty() && c.tls_dir.is_none() {
        return invalid("cluster.quic_listen needs cluster.tls_dir (see `cairn-server tls init`)");
    }
    if c.quic_listen.is_empty() && c.initial_members.len() > 1 {
        return invalid("cluster.initial_members lists peers but cluster.quic_listen is empty");
    }
    if c.replicas == 0 || c.write_quorum > c.replicas {
        return invalid(
            "cluster.replicas must be positive and cluster.write_quorum at most replicas",
        );
    }
    if c.heartbeat_ms == 0 || c.election_timeout_ms <= c.heartbeat_ms * 2 {
        return invalid("cluster.election_timeout_ms must be over twice cluster.heartbeat_ms");
    }
    if c.dead_after_secs == 0 || c.repair_interval_secs == 0 || c.scrub_interval_secs == 0 {
        return invalid("cluster dead_after_secs, repair and scrub intervals must be positive");
    }
    if c.request_buffer_bytes_max < crate::native::REQUEST_BUDGET_MIN {
        return Err(ConfigError::Invalid(format!(
            "cluster.request_buffer_bytes_max must be at least {}",
            crate::native::REQUEST_BUDGET_MIN
        )));
    }
    if c.snapshot_logs < 10 {
        return invalid("cluster.snapshot_logs must be at least 10");
    }
    if c.write_timeout_secs == 0
        || c.read_timeout_secs == 0
        || c.handle_timeout_secs == 0
        || c.scrub_bytes_per_sec == 0
    {
        return invalid("cluster timeouts and scrub_bytes_per_sec must be positive");
    }
    let mut ids: Vec<u64> = c.initial_members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() != c.initial_members.len() || ids.contains(&0) {
        return invalid("cluster.initial_members ids must be distinct and positive");
    }
    Ok(())
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_annotated_example_parses() {
        let text = include_str!("../../deploy/cairn.toml");
        let file: FileConfig = toml::from_str(text).unwrap();
        let config = Config::validate(file, None).unwrap();
        assert_eq!(config.inline_bytes_max, 64 * 1024);
        assert_eq!(config.shares.len(), 1);
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err());
        let file = FileConfig {
            http_listen: "nope".into(),
            ..Default::default()
        };
        assert!(Config::validate(file, None).is_err());
        let file = FileConfig {
            shares: vec![ShareConfig {
                name: "Bad".into(),
                tokens: vec![],
            }],
            ..Default::default()
        };
        assert!(Config::validate(file, None).is_err());
    }
}
