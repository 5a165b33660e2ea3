//! The cluster routes: `GET /cluster/status` (the cluster as this node sees
//! it: members, roles, leader, term, log positions, lag, under-replicated
//! chunks), and membership changes on the leader with the admin token:
//! `POST /cluster/nodes` (add: learner, caught up, then voter),
//! `POST /cluster/nodes/{id}/drain` (no new copies there, its copies
//! re-replicated, demoted to learner) and `DELETE /cluster/nodes/{id}`
//! (a drained node leaves).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::response::{IntoResponse, Response};
use cairn_proto::{ContentHash, ErrorCode};
use openraft::ChangeMembers;
use openraft::error::{ClientWriteError, RaftError};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::consensus::{NodeId, NodeInfo};

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    /// How to reach the node that answered (also before it joined).
    #[serde(rename = "self")]
    pub me: NodeInfo,
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The answering node's applied index: openraft 0.9 does not report
    /// the commit index itself, which this trails by at most one apply
    /// batch (on the leader, by the entries in flight).
    pub commit_index: Option<u64>,
    /// Sum of every reachable node's under-replicated chunk count.
    pub under_replicated: u64,
    pub nodes: Vec<NodeView>,
}

#[derive(Debug, Serialize)]
pub struct NodeView {
    pub id: NodeId,
    pub http: String,
    pub quic: String,
    /// `voter`, `learner` or `witness`.
    pub membership: &'static str,
    pub draining: bool,
    /// `leader`, `follower`, `candidate`, `learner`, or `unreachable`.
    pub role: String,
    pub reachable: bool,
    /// Milliseconds since this node last heard from it.
    pub last_seen_ms: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries it is behind the answering node's applied index.
    pub lag: Option<u64>,
    pub under_replicated: Option<u64>,
    pub repair_passes: Option<u64>,
    /// The node's chunk file system: its size, and the room left for
    /// chunks (free space less the metadata reserve).
    pub disk_total_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
}

pub async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(build(&state)).into_response()
}

fn build(state: &AppState) -> ClusterStatus {
    let me = state.peers.status();
    let metrics = state.committer.raft().metrics();
    let m = metrics.borrow().clone();
    let membership = m.membership_config.membership();
    let voters: Vec<NodeId> = membership.voter_ids().collect();
    let mut nodes = Vec::new();
    let mut under = 0;
    for (id, info) in membership.nodes() {
        let kind = if info.witness {
            "witness"
        } else if voters.contains(id) {
            "voter"
        } else {
            "learner"
        };
        let (status, seen) = if *id == me.id {
            (Some(me.clone()), Some(0))
        } else {
            match state.liveness.last_status(*id) {
                Some((s, ago)) if !state.liveness.is_dead(*id) || ago.as_secs() < 5 => {
                    (Some(s), Some(ago.as_millis() as u64))
                }
                Some((_, ago)) => (None, Some(ago.as_millis() as u64)),
                None => (None, None),
            }
        };
        // A status older than a few probe rounds means unreachable now.
        let reachable = seen.is_some_and(|ms| ms < 3_000);
        under += status.as_ref().map_or(0, |s| s.under_replicated);
        nodes.push(NodeView {
            id: *id,
            http: info.http.clone(),
            quic: info.quic.clone(),
            membership: kind,
            draining: info.draining,
            role: match (&status, reachable) {
                (Some(s), true) => s.role.clone(),
                _ => "unreachable".into(),
            },
            reachable,
            last_seen_ms: seen,
            applied_index: status.as_ref().and_then(|s| s.applied_index),
            lag: status.as_ref().map(|s| {
                me.applied_index
                    .unwrap_or(0)
                    .saturating_sub(s.applied_index.unwrap_or(0))
            }),
            under_replicated: status.as_ref().map(|s| s.under_replicated),
            repair_passes: status.as_ref().map(|s| s.repair_passes),
            disk_total_bytes: status.as_ref().and_then(|s| s.disk_total_bytes),
            disk_free_bytes: status.as_ref().and_then(|s| s.disk_free_bytes),
        });
    }
    ClusterStatus {
        node: me.id,
        me: state.me.clone(),
        leader: m.current_leader,
        term: m.current_term,
        commit_index: me.applied_index,
        under_replicated: under,
        nodes,
    }
}

/// A node to add, as `cairn cluster add` read it from the node itself.
#[derive(Debug, Deserialize)]
pub struct AddNode {
    pub id: NodeId,
    pub quic: String,
    pub http: String,
    #[serde(default)]
    pub witness: bool,
}

/// How long adding a node may wait for it to catch up with the log.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);

fn check_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let Some(expected) = &state.admin_token else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "membership changes need admin_token in the server configuration",
        ));
    };
    let given = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "missing admin bearer token"))?;
    // Compared as hashes: equal-time regardless of where they differ.
    if ContentHash::of(given.as_bytes()) != ContentHash::of(expected.as_bytes()) {
        return Err(ApiError::new(ErrorCode::Forbidden, "not the admin token"));
    }
    Ok(())
}

fn ensure_leader(state: &AppState) -> ApiResult<()> {
    let metrics = state.committer.raft().metrics();
    let m = metrics.borrow();
    if m.current_leader == Some(m.id) {
        return Ok(());
    }
    let leader = m.current_leader.and_then(|l| {
        m.membership_config
            .membership()
            .get_node(&l)
            .map(|n| n.http.clone())
    });
    Err(ApiError::new(
        ErrorCode::Unavailable,
        match leader {
            Some(url) => format!("not the leader: send membership changes to {url}"),
            None => "no leader: membership cannot change now".into(),
        },
    ))
}

fn change_error(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> ApiError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            ApiError::new(ErrorCode::Unavailable, "leadership changed; try again")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            ApiError::new(ErrorCode::PreconditionFailed, e.to_string())
        }
        RaftError::Fatal(e) => ApiError::new(ErrorCode::Internal, e.to_string()),
    }
}

pub async fn add(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::Json(node): axum::Json<AddNode>,
) -> Response {
    add_node(&state, &headers, node)
        .await
        .map(|()| axum::Json(build(&state)).into_response())
        .unwrap_or_else(IntoResponse::into_response)
}

async fn add_node(state: &AppState, headers: &HeaderMap, node: AddNode) -> ApiResult<()> {
    check_admin(state, headers)?;
    ensure_leader(state)?;
    if node.id == 0 || node.quic.is_empty() {
        return Err(ApiError::bad_request(
            "a node needs a positive id and a QUIC address",
        ));
    }
    let raft = state.committer.raft();
    let info = NodeInfo {
        quic: node.quic,
        http: node.http,
        witness: node.witness,
        draining: false,
    };
    tracing::info!(node = node.id, %info, "adding a node: as a learner until it catches up");
    // Blocking: returns once the learner has caught up with the log.
    tokio::time::timeout(CATCH_UP_TIMEOUT, raft.add_learner(node.id, info, true))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::Unavailable,
                "the new node did not catch up in time",
            )
        })?
        .map_err(change_error)?;
    raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node.id])), false)
        .await
        .map_err(change_error)?;
    tracing::info!(node = node.id, "node added as a voter");
    Ok(())
}

fn parse_id(id: &str) -> ApiResult<NodeId> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("'{id}' is not a node id")))
}

pub async fn drain(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    drain_node(&state, &headers, &id)
        .await
        .map(|()| axum::Json(build(&state)).into_response())
        .unwrap_or_else(IntoResponse::into_response)
}

async fn drain_node(state: &AppState, headers: &HeaderMap, id: &str) -> ApiResult<()> {
    check_admin(state, headers)?;
    ensure_leader(state)?;
    let id = parse_id(id)?;
    let raft = state.committer.raft();
    let (info, voter) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let info = membership.get_node(&id).cloned().ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("node {id} is not a member"))
        })?;
        (info, membership.voter_ids().any(|v| v == id))
    };
    if !info.draining {
        let info = NodeInfo {
            draining: true,
            ..info
        };
        // Same addresses, one flag changed: replacing the node entry is safe.
        raft.change_membership(ChangeMembers::SetNodes(BTreeMap::from([(id, info)])), true)
            .await
            .map_err(change_error)?;
    }
    if voter {
        // Kept as a learner: still a member its copies can be read from.
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
            .await
            .map_err(change_error)?;
    }
    tracing::info!(
        node = id,
        "node draining: its chunks are being re-replicated"
    );
    Ok(())
}

pub async fn remove(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    remove_node(&state, &headers, &id)
        .await
        .map(|()| axum::Json(build(&state)).into_response())
        .unwrap_or_else(IntoResponse::into_response)
}

async fn remove_node(state: &AppState, headers: &HeaderMap, id: &str) -> ApiResult<()> {
    check_admin(state, headers)?;
    ensure_leader(state)?;
    let id = parse_id(id)?;
    let raft = state.committer.raft();
    let drained = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let membership = m.membership_config.membership();
        let node = membership.get_node(&id).ok_or_else(|| {
            ApiError::new(ErrorCode::NotFound, format!("node {id} is not a member"))
        })?;
        node.draining && !membership.voter_ids().any(|v| v == id)
    };
    if !drained {
        return Err(ApiError::new(
            ErrorCode::PreconditionFailed,
            format!(
                "node {id} must be drained first (its data re-replicated): cairn cluster remove does both"
            ),
        ));
    }
    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
        .await
        .map_err(change_error)?;
    tracing::info!(node = id, "node removed from the cluster");
    Ok(())
}
