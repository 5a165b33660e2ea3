//! `GET /cluster/status`: the cluster as this node sees it (members,
//! roles, leader, term, log positions, lag, under-replicated chunks).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::consensus::NodeId;

#[derive(Debug, Serialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
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
    /// `leader`, `follower`, `candidate`, `learner`, or `unreachable`.
    pub role: String,
    pub reachable: bool,
    /// Milliseconds since this node last heard from it.
    pub last_seen_ms: Option<u64>,
    pub applied_index: Option<u64>,
    /// Entries it is behind the answering node's applied index.
    pub lag: Option<u64>,
    pub under_replicated: Option<u64>,
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
        });
    }
    ClusterStatus {
        node: me.id,
        leader: m.current_leader,
        term: m.current_term,
        commit_index: me.commit_index,
        under_replicated: under,
        nodes,
    }
}
