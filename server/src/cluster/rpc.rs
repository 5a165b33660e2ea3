//! The node-to-node messages. Postcard-encoded; a peer on another version
//! fails to decode and the call errors (nodes of one cluster run one build).

use cairn_proto::ContentHash;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::consensus::{NodeId, Outcome, TypeConfig};
use crate::meta::Command;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A metadata mutation forwarded to the leader.
    Write(Command),
    /// Asks the leader for a log index after which reads are linearizable.
    ReadIndex,
    /// Store a chunk, whose bytes are the frame's body (the receiver
    /// checks they hash to `hash`).
    PutChunk {
        hash: ContentHash,
    },
    GetChunk {
        hash: ContentHash,
    },
    HasChunk {
        hash: ContentHash,
    },
    /// Liveness probe and this node's view, for `cluster status`.
    Status,
}

/// Why the leader-side of a forwarded request refused it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum Refused {
    /// Not the leader; the request was not applied.
    #[error("not the leader")]
    NotLeader,
    /// Leadership was lost while the request was in flight: it may or may
    /// not have been applied.
    #[error("leadership changed while the request was in flight")]
    Unknown,
    #[error("{0}")]
    Failed(String),
}

/// Why a node did not store a chunk a peer sent it.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
pub enum StoreRefused {
    /// It would have eaten into the node's free-space reserve: sending it
    /// again will not help until space is freed.
    #[error("no space left for chunk data")]
    NoSpace,
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<Outcome, Refused>),
    ReadIndex(Result<u64, Refused>),
    Stored(Result<(), StoreRefused>),
    /// Whether the chunk is here; its bytes are the frame's body.
    Chunk(Result<bool, String>),
    Has(bool),
    Status(NodeStatus),
    /// The request was not understood by this node.
    BadRequest(String),
}

/// One node's view of itself, as `cluster status` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: NodeId,
    /// `leader`, `follower`, `candidate`, `learner` or `shutdown`.
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// Referenced chunks this node should hold but does not (as of the
    /// last repair pass).
    pub under_replicated: u64,
    pub chunks_repaired: u64,
    /// Repair passes completed since the node started.
    pub repair_passes: u64,
    pub corrupt_chunks_found: u64,
    /// Size of the file system holding this node's chunks.
    pub disk_total_bytes: Option<u64>,
    /// Room left there for chunks: free space less the reserve kept for
    /// metadata (`free_bytes_min`); 0 means new copies are refused.
    pub disk_free_bytes: Option<u64>,
}
