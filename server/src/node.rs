//! Wiring: open the stores, start the committer and workers, serve HTTP,
//! and shut all of it down in order.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use cairn_proto::ContentHash;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::listener::{self, Drained, ListenLimits};
use crate::api::{self, AppState, Limits};
use crate::chunks::{ChunkError, ChunkStore, LocalChunkStore, Pins};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::meta::{Command, CommitError, Committer, MetaError, MetaStore, StoreError};
use crate::metrics::Metrics;
use crate::workers::gc::Gc;
use crate::workers::run_worker;

/// Why the node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("metadata store: {0}")]
    Meta(#[from] StoreError),
    #[error("chunk store: {0}")]
    Chunks(#[from] ChunkError),
    #[error("bootstrapping shares: {0}")]
    Bootstrap(#[from] CommitError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("writing the ready file: {0}")]
    ReadyFile(std::io::Error),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let data_dir = &config.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|source| NodeError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let meta = MetaStore::open(&data_dir.join("meta"))?;
    let chunks: Arc<dyn ChunkStore> = Arc::new(LocalChunkStore::open(&data_dir.join("chunks"))?);
    let metrics = Arc::new(Metrics::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (committer, committer_thread) = Committer::start(Arc::clone(&meta), Arc::clone(&metrics));
    bootstrap_shares(&config, &meta, &committer, clock.as_ref()).await?;

    let pins = Pins::new();
    let workers_stop = CancellationToken::new();
    let gc = Gc {
        meta: Arc::clone(&meta),
        committer: committer.clone(),
        chunks: Arc::clone(&chunks),
        pins: Arc::clone(&pins),
        metrics: Arc::clone(&metrics),
        clock: Arc::clone(&clock),
        grace: config.gc_grace,
        interval: config.gc_interval,
    };
    let gc_task = tokio::spawn(run_worker(gc, workers_stop.clone()));

    let state = Arc::new(AppState {
        node_id: config.node_id,
        meta,
        committer,
        chunks,
        pins,
        metrics,
        clock,
        limits: Limits {
            upload_bytes_max: config.upload_bytes_max,
            inline_bytes_max: config.inline_bytes_max,
            free_bytes_min: config.free_bytes_min,
            body_idle_timeout: config.body_idle_timeout,
        },
        chunk_buffers: Arc::new(Semaphore::new(config.upload_buffers)),
        read_buffers: Arc::new(Semaphore::new(config.download_buffers)),
        shutdown: shutdown.clone(),
    });
    let listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.http_listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(NodeError::Serve)?;
    if let Some(path) = &config.ready_file {
        write_ready_file(path, addr).map_err(NodeError::ReadyFile)?;
    }
    tracing::info!(node = config.node_id, http = %addr, data_dir = %data_dir.display(), "listening");

    let limits = ListenLimits {
        connections_max: config.http_connections_max,
        header_timeout: config.http_header_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let served = listener::serve(listener, api::router(Arc::clone(&state)), limits, shutdown).await;
    workers_stop.cancel();
    let _ = gc_task.await;
    drop(state);
    // Every commit was synced before it was acknowledged, so stopping here
    // leaves no torn state even if a straggling request still holds a handle.
    // Connections that outlived the grace period still hold the committer;
    // waiting for them could take forever, so only join after a clean drain.
    if served == Drained::Clean {
        let _ = tokio::task::spawn_blocking(move || committer_thread.join()).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Creates the configured shares that do not exist yet and (re)installs
/// their tokens.
async fn bootstrap_shares(
    config: &Config,
    meta: &MetaStore,
    committer: &Committer,
    clock: &dyn Clock,
) -> Result<(), NodeError> {
    for (share, tokens) in &config.shares {
        if meta.share(share)?.is_none() {
            let cmd = Command::CreateShare {
                share: share.clone(),
                now_ns: clock.now_ns(),
            };
            match committer.commit(cmd).await {
                Ok(_) => tracing::info!(%share, "created share"),
                Err(CommitError::Meta(MetaError::AlreadyExists(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for t in tokens {
            let cmd = Command::PutToken {
                token_hash: ContentHash::of(t.token.as_bytes()),
                share: share.clone(),
                access: t.access,
            };
            committer.commit(cmd).await?;
        }
    }
    revoke_unlisted_tokens(config, meta, committer).await
}

/// The configuration is the list of valid tokens for the shares it names: a
/// token removed from it stops working at the next start.
async fn revoke_unlisted_tokens(
    config: &Config,
    meta: &MetaStore,
    committer: &Committer,
) -> Result<(), NodeError> {
    let listed: std::collections::HashSet<ContentHash> = config
        .shares
        .iter()
        .flat_map(|(_, tokens)| tokens.iter().map(|t| ContentHash::of(t.token.as_bytes())))
        .collect();
    for (token_hash, record) in meta.tokens(TOKENS_MAX)? {
        let configured = config.shares.iter().any(|(s, _)| *s == record.share);
        if configured && !listed.contains(&token_hash) {
            committer
                .commit(Command::DeleteToken { token_hash })
                .await?;
            tracing::info!(share = %record.share, "revoked a token no longer in the configuration");
        }
    }
    Ok(())
}

/// Most tokens looked at when reconciling them with the configuration.
const TOKENS_MAX: usize = 100_000;

/// Writes `{"http": addr, "pid": n}` atomically (temp file, rename).
fn write_ready_file(path: &Path, addr: SocketAddr) -> std::io::Result<()> {
    let body = serde_json::json!({ "http": addr.to_string(), "pid": std::process::id() });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, path)
}
