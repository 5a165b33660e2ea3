//! Wiring: open the stores, start Raft, the cluster transport and the
//! workers, serve HTTP, and shut all of it down in order.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cairn_proto::ContentHash;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::listener::{self, Drained, ListenLimits};
use crate::api::{self, AppState, Limits};
use crate::chunks::{ChunkError, ChunkStore, LocalChunkStore, Pins};
use crate::clock::{Clock, SystemClock};
use crate::cluster::liveness::Liveness;
use crate::cluster::replicated::{Placement, ReplicatedChunks};
use crate::cluster::service::{self, PeerService, RepairStats};
use crate::cluster::tls::{self, TlsError};
use crate::cluster::transport::Transport;
use crate::config::{ClusterConfig, Config};
use crate::consensus::committer::{ReadLease, Timeouts};
use crate::consensus::lease::{AppliedMark, Leases};
use crate::consensus::network::Network;
use crate::consensus::snapshot::SnapshotDir;
use crate::consensus::state_machine::MachineError;
use crate::consensus::watchdog::{self, LeaderContact};
use crate::consensus::{CommitError, Committer, LogStore, NodeInfo, Raft, StateMachine};
use crate::meta::{Command, MetaError, MetaStore, StoreError};
use crate::metrics::Metrics;
use crate::native::{NativeOptions, NativeServer};
use crate::workers::gc::Gc;
use crate::workers::probe::Prober;
use crate::workers::repair::Repairer;
use crate::workers::run_worker;
use crate::workers::scrub::Scrubber;

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
    #[error("metadata state machine: {0}")]
    Machine(#[from] MachineError),
    #[error("chunk store: {0}")]
    Chunks(#[from] ChunkError),
    #[error("cluster TLS: {0}")]
    Tls(#[from] TlsError),
    #[error("Raft: {0}")]
    Raft(String),
    #[error("bootstrapping shares: {0}")]
    Bootstrap(#[from] CommitError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("writing the ready file: {0}")]
    ReadyFile(std::io::Error),
    #[error("HTTP server: {0}")]
    Serve(std::io::Error),
}

/// Runs a node until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), NodeError> {
    let listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| NodeError::Listen {
            addr: config.http_listen.to_string(),
            source,
        })?;
    let http_addr = listener.local_addr().map_err(NodeError::Serve)?;
    let node = Node::start(&config, Some(http_addr), shutdown.clone()).await?;
    if let Some(path) = &config.ready_file {
        write_ready_file(path, config.node_id, http_addr, node.quic_addr)
            .map_err(NodeError::ReadyFile)?;
    }
    tracing::info!(node = config.node_id, http = %http_addr, quic = ?node.quic_addr, data_dir = %config.data_dir.display(), "listening");

    let limits = ListenLimits {
        connections_max: config.http_connections_max,
        header_timeout: config.http_header_timeout,
        shutdown_grace: config.shutdown_grace,
    };
    let router = api::router(Arc::clone(&node.state));
    let served = listener::serve(listener, router, limits, shutdown).await;
    node.stop().await;
    if served != Drained::Clean {
        tracing::warn!("some connections outlived the shutdown grace period");
    }
    tracing::info!("stopped");
    Ok(())
}

/// A started node: its stores, Raft, workers and protocol servers, but
/// not its HTTP listener (which `run` adds; the native protocol's tests
/// drive [`Node::native`] in memory instead).
pub struct Node {
    pub state: Arc<AppState>,
    pub native: Arc<NativeServer>,
    pub quic_addr: Option<SocketAddr>,
    raft: Raft,
    workers_stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
    peers_stop: CancellationToken,
    peers_task: Option<tokio::task::JoinHandle<()>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
}

impl Node {
    /// Opens the stores under `config.data_dir`, starts Raft (initializing
    /// a new cluster if need be), the workers, the QUIC listener (cluster
    /// mode) and the native protocol's timers. `http_addr` is where HTTP
    /// clients reach this node, if anywhere.
    pub async fn start(
        config: &Config,
        http_addr: Option<SocketAddr>,
        shutdown: CancellationToken,
    ) -> Result<Self, NodeError> {
        let data_dir = &config.data_dir;
        std::fs::create_dir_all(data_dir).map_err(|source| NodeError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let meta = MetaStore::open(&data_dir.join("meta"))?;
        let local: Arc<dyn ChunkStore> = Arc::new(LocalChunkStore::open(
            &data_dir.join("chunks"),
            config.free_bytes_min,
        )?);
        let metrics = Arc::new(Metrics::new());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);

        let endpoint = bind_quic(&config.cluster)?;
        let quic_addr = match &endpoint {
            Some(e) => Some(e.local_addr().map_err(NodeError::Serve)?),
            None => None,
        };
        let transport = endpoint.clone().map(|e| Arc::new(Transport::new(e)));
        let me = NodeInfo {
            quic: config
                .cluster
                .advertise_quic
                .clone()
                .or(quic_addr.map(|a| a.to_string()))
                .unwrap_or_default(),
            http: config
                .cluster
                .advertise_http
                .clone()
                .or(http_addr.map(|a| format!("http://{a}")))
                .unwrap_or_default(),
            witness: config.cluster.witness,
            draining: false,
        };

        // Well under openraft's follower lease (election_timeout_max): see
        // `consensus::lease`.
        let leases = Arc::new(Leases::new(Duration::from_millis(
            config.cluster.election_timeout_ms * 4 / 5,
        )));
        let (raft, mark) =
            start_raft(config, &meta, transport.clone(), Arc::clone(&leases)).await?;
        let joined = initialize(config, &raft, &me).await?;
        let committer = Committer::new(
            config.node_id,
            raft.clone(),
            transport.clone(),
            Arc::clone(&metrics),
            ReadLease {
                leases: Arc::clone(&leases),
                mark,
            },
            Timeouts {
                write: Duration::from_secs(config.cluster.write_timeout_secs),
                read: Duration::from_secs(config.cluster.read_timeout_secs),
                quorum_lease: Duration::from_millis(
                    config.cluster.election_timeout_ms + config.cluster.election_timeout_ms / 2,
                ),
            },
        );
        let liveness = Arc::new(Liveness::new(Duration::from_secs(
            config.cluster.dead_after_secs,
        )));
        let placement = Placement {
            me: config.node_id,
            raft: raft.clone(),
            liveness: Arc::clone(&liveness),
            replicas: config.cluster.replicas,
            write_quorum: config.cluster.write_quorum,
        };
        let stats = Arc::new(RepairStats::default());
        let chunks: Arc<dyn ChunkStore> = match &transport {
            Some(t) => Arc::new(ReplicatedChunks {
                local: Arc::clone(&local),
                transport: Arc::clone(t),
                placement: placement.clone(),
                runtime: tokio::runtime::Handle::current(),
                in_flight: Arc::new(Semaphore::new(REPLICATION_BYTES_MAX)),
            }),
            None => Arc::clone(&local),
        };

        let peers_stop = CancellationToken::new();
        let leader_contact = Arc::new(LeaderContact::default());
        let watchdog = transport.as_ref().map(|_| {
            let c = &config.cluster;
            // openraft's leader lease is election_timeout_max (see start_raft).
            let lease = Duration::from_millis(c.election_timeout_ms + c.election_timeout_ms / 2);
            tokio::spawn(watchdog::run(
                raft.clone(),
                Arc::clone(&leader_contact),
                lease,
                peers_stop.clone(),
            ))
        });
        let peer_service = Arc::new(PeerService {
            committer: committer.clone(),
            local: Arc::clone(&local),
            stats: Arc::clone(&stats),
            budget: Arc::new(Semaphore::new(INBOUND_BYTES_MAX)),
            leader_contact: Arc::clone(&leader_contact),
            leases,
        });
        let native = Arc::new(OnceLock::new());
        let peers_task = endpoint.map(|e| {
            tokio::spawn(service::serve(
                e,
                Arc::clone(&peer_service),
                Arc::clone(&native),
                peers_stop.clone(),
            ))
        });

        // A node waiting to join gets its shares with the cluster's state.
        if joined {
            bootstrap_shares(config, &meta, &committer, clock.as_ref()).await?;
        }

        let pins = Pins::new();
        let workers_stop = CancellationToken::new();
        let mut workers = vec![tokio::spawn(run_worker(
            Gc {
                meta: Arc::clone(&meta),
                committer: committer.clone(),
                chunks: Arc::clone(&chunks),
                pins: Arc::clone(&pins),
                metrics: Arc::clone(&metrics),
                clock: Arc::clone(&clock),
                grace: config.gc_grace,
                interval: config.gc_interval,
            },
            workers_stop.clone(),
        ))];
        if let Some(t) = &transport {
            workers.push(tokio::spawn(run_worker(
                Prober {
                    transport: Arc::clone(t),
                    placement: placement.clone(),
                    misses: Default::default(),
                },
                workers_stop.clone(),
            )));
            workers.push(tokio::spawn(run_worker(
                Repairer {
                    meta: Arc::clone(&meta),
                    local: Arc::clone(&local),
                    transport: Arc::clone(t),
                    placement: placement.clone(),
                    stats: Arc::clone(&stats),
                    interval: Duration::from_secs(config.cluster.repair_interval_secs),
                },
                workers_stop.clone(),
            )));
            workers.push(tokio::spawn(run_worker(
                Scrubber {
                    local: Arc::clone(&local),
                    transport: Arc::clone(t),
                    placement: placement.clone(),
                    stats: Arc::clone(&stats),
                    interval: Duration::from_secs(config.cluster.scrub_interval_secs),
                    bytes_per_sec: config.cluster.scrub_bytes_per_sec,
                },
                workers_stop.clone(),
            )));
        }

        let write_buffer_bytes = usize::try_from(config.cluster.write_buffer_bytes_max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        let state = Arc::new(AppState {
            node_id: config.node_id,
            meta,
            committer,
            chunks,
            pins,
            metrics,
            clock,
            peers: Arc::clone(&peer_service),
            liveness,
            me: me.clone(),
            admin_token: config.admin_token.clone(),
            limits: Limits {
                upload_bytes_max: config.upload_bytes_max,
                inline_bytes_max: config.inline_bytes_max,
                body_idle_timeout: config.body_idle_timeout,
            },
            chunk_buffers: Arc::new(Semaphore::new(config.upload_buffers)),
            read_buffers: Arc::new(Semaphore::new(config.download_buffers)),
            hash_ahead: Arc::new(Semaphore::new(
                crate::native::running_hash::NODE_AHEAD_BYTES_MAX,
            )),
            chunk_cache: Arc::new(crate::chunks::ChunkCache::new(CHUNK_CACHE_BYTES)),
            write_buffers: Arc::new(Semaphore::new(write_buffer_bytes)),
            write_buffer_bytes,
            shutdown: shutdown.clone(),
        });
        let native_server = NativeServer::new(
            Arc::clone(&state),
            NativeOptions {
                handle_timeout: Duration::from_secs(config.cluster.handle_timeout_secs),
                write_timeout: Duration::from_secs(config.cluster.write_timeout_secs),
                lease_break_timeout: Duration::from_secs(config.cluster.lease_break_timeout_secs),
                request_buffer_bytes: config.cluster.request_buffer_bytes_max,
                request_idle_timeout: config.body_idle_timeout,
            },
        );
        let _ = native.set(Arc::clone(&native_server));
        workers.push(tokio::spawn(
            Arc::clone(&native_server).run_timers(workers_stop.clone()),
        ));
        Ok(Self {
            state,
            native: native_server,
            quic_addr,
            raft,
            workers_stop,
            workers,
            peers_stop,
            peers_task,
            watchdog,
        })
    }

    /// Stops the workers, then the peer service, then Raft.
    pub async fn stop(self) {
        self.workers_stop.cancel();
        for w in self.workers {
            let _ = w.await;
        }
        drop(self.native);
        drop(self.state);
        // Raft last: peers keep hearing from this node until its requests
        // are drained, so an orderly stop of a leader hands over cleanly.
        self.peers_stop.cancel();
        if let Some(t) = self.peers_task {
            let _ = t.await;
        }
        if let Some(w) = self.watchdog {
            let _ = w.await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft did not stop cleanly");
        }
    }
}

/// Verified chunks kept in memory for small reads.
const CHUNK_CACHE_BYTES: usize = 64 << 20;
/// Bytes of chunk copies this node sends to peers at once, at most.
const REPLICATION_BYTES_MAX: usize = 128 << 20;
/// Bytes of peer requests this node holds at once, at most.
const INBOUND_BYTES_MAX: usize = 256 << 20;

fn bind_quic(cluster: &ClusterConfig) -> Result<Option<quinn::Endpoint>, NodeError> {
    if cluster.quic_listen.is_empty() {
        return Ok(None);
    }
    let listen_err = |source: std::io::Error| NodeError::Listen {
        addr: cluster.quic_listen.clone(),
        source,
    };
    let addr: SocketAddr = cluster.quic_listen.parse().map_err(|e| {
        listen_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{e}"),
        ))
    })?;
    let Some(dir) = &cluster.tls_dir else {
        return Ok(None);
    };
    let idle = Duration::from_secs(10);
    let reset_secret = tls::reset_secret(dir)?;
    let mut endpoint = cairn_quic::endpoint(
        addr,
        Some(tls::server_config(dir, idle)?),
        Some(&reset_secret),
    )
    .map_err(listen_err)?;
    endpoint.set_default_client_config(tls::client_config(dir, idle)?);
    Ok(Some(endpoint))
}

async fn start_raft(
    config: &Config,
    meta: &Arc<MetaStore>,
    transport: Option<Arc<Transport>>,
    leases: Arc<Leases>,
) -> Result<(Raft, Arc<AppliedMark>), NodeError> {
    let c = &config.cluster;
    let raft_config = openraft::Config {
        cluster_name: "cairn".into(),
        heartbeat_interval: c.heartbeat_ms,
        election_timeout_min: c.election_timeout_ms,
        // openraft's followers refuse votes until election_timeout_max after
        // the last heartbeat (the leader lease), so a narrow range elects
        // sooner after a leader dies: the second candidacy lands past it.
        election_timeout_max: c.election_timeout_ms + c.election_timeout_ms / 2,
        // Entries carry inline files (<= 64 KiB by default): keep one
        // append message well under the transport's message limit.
        max_payload_entries: 64,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(c.snapshot_logs),
        // Entries kept behind a snapshot, so a briefly lagging follower
        // catches up from the log rather than a whole snapshot.
        max_in_snapshot_log_to_keep: c.snapshot_logs / 10,
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    let snapshots =
        SnapshotDir::open(&config.data_dir.join("raft-snapshots")).map_err(|source| {
            NodeError::DataDir {
                path: config.data_dir.join("raft-snapshots").display().to_string(),
                source,
            }
        })?;
    let sm = StateMachine::open(Arc::clone(meta), snapshots)?;
    let mark = sm.applied_mark();
    let raft = Raft::new(
        config.node_id,
        Arc::new(raft_config),
        Network::new(transport, leases),
        LogStore::new(Arc::clone(meta)),
        sm,
    )
    .await
    .map_err(|e| NodeError::Raft(e.to_string()))?;
    Ok((raft, mark))
}

/// A node that has never been part of a cluster starts one: alone (no
/// cluster listener), or with the configured initial members (each of
/// which does the same, with the same list, which Raft allows). A cluster
/// node not in that list (or with none) waits to be added; then this
/// returns false.
async fn initialize(config: &Config, raft: &Raft, me: &NodeInfo) -> Result<bool, NodeError> {
    if raft
        .is_initialized()
        .await
        .map_err(|e| NodeError::Raft(e.to_string()))?
    {
        return Ok(true);
    }
    let initial = &config.cluster.initial_members;
    let clustered = !config.cluster.quic_listen.is_empty();
    let members: BTreeMap<u64, NodeInfo> = if initial.is_empty() && !clustered {
        BTreeMap::from([(config.node_id, me.clone())])
    } else if initial.iter().any(|m| m.id == config.node_id) {
        initial
            .iter()
            .map(|m| {
                let info = NodeInfo {
                    quic: m.quic.clone(),
                    http: m.http.clone(),
                    witness: m.witness,
                    draining: false,
                };
                (m.id, info)
            })
            .collect()
    } else {
        tracing::info!("not an initial member: waiting to be added to a cluster");
        return Ok(false);
    };
    tracing::info!(members = members.len(), "initializing a new cluster");
    match raft.initialize(members).await {
        Ok(()) => Ok(true),
        Err(openraft::error::RaftError::APIError(
            openraft::error::InitializeError::NotAllowed(_),
        )) => Ok(true),
        Err(e) => Err(NodeError::Raft(e.to_string())),
    }
}

/// Creates the configured shares that do not exist yet and (re)installs
/// their tokens. Nothing is written when the state already matches, so a
/// restarted node needs no quorum to start.
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
            match commit_retrying(committer, cmd).await {
                Ok(_) => tracing::info!(%share, "created share"),
                Err(CommitError::Meta(MetaError::AlreadyExists(_))) => {}
                Err(e) => return Err(e.into()),
            }
        }
        for t in tokens {
            let token_hash = ContentHash::of(t.token.as_bytes());
            let current = meta.token(&token_hash)?;
            if current.is_some_and(|r| r.share == *share && r.access == t.access) {
                continue;
            }
            let cmd = Command::PutToken {
                token_hash,
                share: share.clone(),
                access: t.access,
            };
            commit_retrying(committer, cmd).await?;
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
            commit_retrying(committer, Command::DeleteToken { token_hash }).await?;
            tracing::info!(share = %record.share, "revoked a token no longer in the configuration");
        }
    }
    Ok(())
}

/// Commits a bootstrap command, trying again while the cluster is still
/// electing its first leader (these commands are safe to apply twice).
async fn commit_retrying(committer: &Committer, cmd: Command) -> Result<(), CommitError> {
    let started = std::time::Instant::now();
    loop {
        match committer.commit(cmd.clone()).await {
            Ok(_) => return Ok(()),
            Err(e @ (CommitError::Unknown(_) | CommitError::Unavailable(_)))
                if started.elapsed() < BOOTSTRAP_PATIENCE =>
            {
                tracing::info!(error = %e, "bootstrap write not committed yet; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// How long bootstrap writes wait for the cluster to have a majority.
const BOOTSTRAP_PATIENCE: Duration = Duration::from_secs(120);

/// Most tokens looked at when reconciling them with the configuration.
const TOKENS_MAX: usize = 100_000;

/// Writes `{"id": n, "http": addr, "quic": addr, "pid": n}` atomically.
fn write_ready_file(
    path: &Path,
    id: u64,
    http: SocketAddr,
    quic: Option<SocketAddr>,
) -> std::io::Result<()> {
    let body = serde_json::json!({
        "id": id,
        "http": http.to_string(),
        "quic": quic.map(|q| q.to_string()),
        "pid": std::process::id(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, body.to_string())?;
    std::fs::rename(&tmp, path)
}
