//! openraft's network over the cluster transport: Raft RPCs are calls on
//! QUIC streams with openraft's own deadlines.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::lease::Leases;
use super::{NodeId, NodeInfo, TypeConfig};
use crate::cluster::rpc::{Request, Response};
use crate::cluster::transport::{RpcError, Transport};

/// Makes one [`Connection`] per Raft peer.
#[derive(Clone)]
pub struct Network {
    transport: Option<Arc<Transport>>,
    leases: Arc<Leases>,
}

impl Network {
    /// `None` for a single node without a cluster listener: it never has a
    /// peer to call. Accepted appends and higher terms in answers are
    /// recorded in `leases`.
    pub fn new(transport: Option<Arc<Transport>>, leases: Arc<Leases>) -> Self {
        Self { transport, leases }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection {
            transport: self.transport.clone(),
            leases: Arc::clone(&self.leases),
            target,
            addr: node.quic.clone(),
        }
    }
}

pub struct Connection {
    transport: Option<Arc<Transport>>,
    leases: Arc<Leases>,
    target: NodeId,
    addr: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unexpected(String);

impl Connection {
    async fn call<E: std::error::Error>(
        &self,
        req: Request,
        option: &RPCOption,
    ) -> Result<Response, RPCError<NodeId, NodeInfo, E>> {
        let Some(transport) = &self.transport else {
            let e = Unexpected(format!(
                "no cluster transport to reach node {}",
                self.target
            ));
            return Err(RPCError::Unreachable(Unreachable::new(&e)));
        };
        transport
            .call(&self.addr, &req, option.hard_ttl())
            .await
            .map_err(|e| match e {
                RpcError::Connect { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                e => RPCError::Network(NetworkError::new(&e)),
            })
    }

    fn unexpected<E: std::error::Error>(resp: &Response) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::Network(NetworkError::new(&Unexpected(format!(
            "unexpected answer: {resp:?}"
        ))))
    }

    fn remote<E: std::error::Error>(&self, e: E) -> RPCError<NodeId, NodeInfo, E> {
        RPCError::RemoteError(RemoteError::new(self.target, e))
    }
}

type Rpc<T, E = RaftError<NodeId>> = Result<T, RPCError<NodeId, NodeInfo, E>>;

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<AppendEntriesResponse<NodeId>> {
        let sent = Instant::now();
        let term = rpc.vote.leader_id().get_term();
        let answer = match self.call(Request::AppendEntries(rpc), &option).await? {
            Response::AppendEntries(r) => r.map_err(|e| self.remote(e))?,
            other => return Err(Self::unexpected(&other)),
        };
        match &answer {
            // Only a full success: it is what the follower's election
            // watchdog counts as contact (see `lease`).
            AppendEntriesResponse::Success => self.leases.acknowledged(self.target, term, sent),
            AppendEntriesResponse::HigherVote(v) => self.leases.saw_term(v.leader_id().get_term()),
            AppendEntriesResponse::PartialSuccess(_) | AppendEntriesResponse::Conflict => {}
        }
        Ok(answer)
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Rpc<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>> {
        match self.call(Request::InstallSnapshot(rpc), &option).await? {
            Response::InstallSnapshot(r) => {
                let r = r.map_err(|e| self.remote(e))?;
                self.leases.saw_term(r.vote.leader_id().get_term());
                Ok(r)
            }
            other => Err(Self::unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Rpc<VoteResponse<NodeId>> {
        match self.call(Request::Vote(rpc), &option).await? {
            Response::Vote(r) => {
                let r = r.map_err(|e| self.remote(e))?;
                self.leases.saw_term(r.vote.leader_id().get_term());
                Ok(r)
            }
            other => Err(Self::unexpected(&other)),
        }
    }
}
