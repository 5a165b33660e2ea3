//! The chunk store the data path uses in a cluster: each chunk is written
//! to its placement (this node's disk and peers over QUIC) and acknowledged
//! once a write quorum has it on disk; reads use the local copy or fetch a
//! verified copy from a peer (repairing the local one on the way).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use cairn_proto::ContentHash;
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};

use super::liveness::Liveness;
use super::placement::{live_data_nodes, place, write_quorum};
use super::rpc::{Request, Response, StoreRefused};
use super::transport::Transport;
use crate::chunks::{ChunkError, ChunkStore};
use crate::consensus::{NodeId, NodeInfo, Raft};

/// How long one chunk transfer to or from a peer may take.
pub const CHUNK_RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a chunk transfer waits on the peers asked first before it
/// asks others too: a write, for its quorum among the peers that answer
/// probes, before it sends to the suspect ones; a fetch, for one peer's
/// answer, before it asks the next. A peer killed a moment ago is not
/// suspect yet, and waiting out its timeout stalled both for seconds.
const HEDGE_AFTER: Duration = Duration::from_millis(250);

/// Placement inputs shared by the data path and the repairer.
#[derive(Clone)]
pub struct Placement {
    pub me: NodeId,
    pub raft: Raft,
    pub liveness: Arc<Liveness>,
    pub replicas: usize,
    pub write_quorum: usize,
}

impl Placement {
    /// Every member, as the latest membership this node knows lists them.
    pub fn members(&self) -> Vec<(NodeId, NodeInfo)> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .nodes()
            .map(|(id, info)| (*id, info.clone()))
            .collect()
    }

    /// The nodes that should hold `hash` now.
    pub fn targets(&self, hash: &ContentHash) -> Vec<(NodeId, NodeInfo)> {
        let live = live_data_nodes(self.members(), self.me, &self.liveness);
        place(hash, &live, self.replicas)
    }
}

pub struct ReplicatedChunks {
    pub local: Arc<dyn ChunkStore>,
    pub transport: Arc<Transport>,
    pub placement: Placement,
    pub runtime: Handle,
    /// Bytes of chunk copies in flight to peers at once, at most; a write
    /// acknowledged at quorum keeps sending to the rest in the background.
    pub in_flight: Arc<Semaphore>,
}

impl ReplicatedChunks {
    /// Fetches `hash` from a peer that has a good copy (see
    /// [`fetch_remote`]).
    pub fn fetch_remote(&self, hash: &ContentHash) -> Result<Vec<u8>, ChunkError> {
        fetch_remote(&self.transport, &self.placement, &self.runtime, hash)
    }
}

/// Fetches a verified copy of `hash` from a peer: placement targets
/// first, then every other member, suspects last, hedged (see
/// [`fetch_hedged`]). Blocks (call from a blocking thread).
pub fn fetch_remote(
    transport: &Transport,
    placement: &Placement,
    runtime: &Handle,
    hash: &ContentHash,
) -> Result<Vec<u8>, ChunkError> {
    let mut candidates = placement.targets(hash);
    for member in placement.members() {
        if !candidates.iter().any(|c| c.0 == member.0) {
            candidates.push(member);
        }
    }
    let liveness = &placement.liveness;
    let candidates = fetch_order(candidates, placement.me, |id| liveness.is_suspect(id));
    runtime.block_on(fetch_hedged(transport, &candidates, hash))
}

/// What one peer said when asked for a chunk.
enum Fetched {
    Good(Vec<u8>),
    /// It has no copy, or sent a bad one.
    NotThere,
    /// No answer: it may hold a copy and come back.
    Unreachable,
}

/// Asks `candidates` in order for `hash`, the next one also whenever
/// [`HEDGE_AFTER`] passes with no answer: a peer killed a moment
/// ago is not suspect yet and would hold the read for the whole chunk RPC
/// timeout. The first good copy wins; the calls still out are dropped
/// (their streams reset).
async fn fetch_hedged(
    transport: &Transport,
    candidates: &[(NodeId, NodeInfo)],
    hash: &ContentHash,
) -> Result<Vec<u8>, ChunkError> {
    let mut asking = futures::stream::FuturesUnordered::new();
    let mut next = candidates.iter();
    let mut unreachable = Vec::new();
    loop {
        if asking.is_empty() {
            match next.next() {
                Some((id, info)) => asking.push(ask_for_chunk(transport, *id, info, hash)),
                None => break,
            }
        }
        let answer = tokio::select! {
            answer = futures::StreamExt::next(&mut asking) => answer,
            () = tokio::time::sleep(HEDGE_AFTER), if next.len() > 0 => {
                if let Some((id, info)) = next.next() {
                    asking.push(ask_for_chunk(transport, *id, info, hash));
                }
                continue;
            }
        };
        match answer {
            Some((_, Fetched::Good(data))) => return Ok(data),
            Some((id, Fetched::Unreachable)) => unreachable.push(id),
            Some((_, Fetched::NotThere)) | None => {}
        }
    }
    if unreachable.is_empty() {
        Err(ChunkError::Missing(*hash))
    } else {
        // A node that may hold it did not answer (killed, restarting, cut
        // off): the chunk may well come back; worth a retry.
        Err(ChunkError::Unavailable(format!(
            "no reachable copy of chunk {hash} (nodes {unreachable:?} did not answer)"
        )))
    }
}

async fn ask_for_chunk(
    transport: &Transport,
    id: NodeId,
    info: &NodeInfo,
    hash: &ContentHash,
) -> (NodeId, Fetched) {
    let req = Request::GetChunk { hash: *hash };
    let call =
        transport.call_with_body::<_, Response>(&info.quic, &req, Bytes::new(), CHUNK_RPC_TIMEOUT);
    let fetched = match call.await {
        Ok((Response::Chunk(Ok(true)), data)) => {
            let actual = ContentHash::of(&data);
            if actual == *hash {
                Fetched::Good(data)
            } else {
                tracing::error!(%hash, %actual, peer = id, "a peer sent a chunk that does not match its hash");
                Fetched::NotThere
            }
        }
        Ok((Response::Chunk(Ok(false)), _)) => Fetched::NotThere,
        Ok((other, _)) => {
            tracing::debug!(peer = id, ?other, "chunk fetch failed");
            Fetched::NotThere
        }
        Err(e) => {
            tracing::debug!(peer = id, error = %e, "chunk fetch failed");
            Fetched::Unreachable
        }
    };
    (id, fetched)
}

/// The peers to ask for a chunk, in order: `candidates` (placement first)
/// without this node and witnesses, those that missed their last probes
/// after the rest. A dead peer costs a connect or call timeout before the
/// next is asked; a read of a chunk missing here (a node that was down
/// when it was written) waited out a dead placement target first.
fn fetch_order(
    candidates: Vec<(NodeId, NodeInfo)>,
    me: NodeId,
    suspect: impl Fn(NodeId) -> bool,
) -> Vec<(NodeId, NodeInfo)> {
    let (mut answering, suspects): (Vec<_>, Vec<_>) = candidates
        .into_iter()
        .filter(|(id, info)| *id != me && !info.witness)
        .partition(|(id, _)| !suspect(*id));
    answering.extend(suspects);
    answering
}

/// What became of one copy of a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copied {
    Stored,
    /// Its node is out of room (past its reserve): no retry will store it.
    NoSpace,
    /// Refused otherwise, or no answer: another try may well store it.
    Failed,
}

impl Copied {
    fn of(result: &Result<(), ChunkError>) -> Self {
        match result {
            Ok(()) => Self::Stored,
            Err(ChunkError::NoSpace) => Self::NoSpace,
            Err(_) => Self::Failed,
        }
    }
}

/// The error of a write that did not reach its quorum of `need` copies
/// among `targets` nodes: out of space when the nodes with room are too
/// few for the quorum (a client's retries would only send the bytes again
/// and again), unavailable otherwise.
fn short_of_quorum(copies: &[Copied], targets: usize, need: usize) -> ChunkError {
    let full = copies.iter().filter(|c| **c == Copied::NoSpace).count();
    if full > 0 && targets.saturating_sub(full) < need {
        return ChunkError::NoSpace;
    }
    let acks = copies.iter().filter(|c| **c == Copied::Stored).count();
    ChunkError::Unavailable(format!(
        "only {acks} of the {need} copies needed could be stored"
    ))
}

impl ReplicatedChunks {
    /// Sends one copy of the chunk to `target` in the background; what
    /// became of it comes on `tx`.
    fn send_copy(
        &self,
        hash: &ContentHash,
        shared: &Bytes,
        target: &(NodeId, NodeInfo),
        tx: &mpsc::Sender<Copied>,
    ) -> Result<(), ChunkError> {
        let len = u32::try_from(shared.len()).unwrap_or(u32::MAX).max(1);
        let permit = self
            .runtime
            .block_on(Arc::clone(&self.in_flight).acquire_many_owned(len))
            .map_err(|_| ChunkError::Unavailable("the node is shutting down".into()))?;
        let transport = Arc::clone(&self.transport);
        let (id, addr, tx) = (target.0, target.1.quic.clone(), tx.clone());
        let req = Request::PutChunk { hash: *hash };
        let body = shared.clone();
        self.runtime.spawn(async move {
            let answer = transport
                .call_with_body::<_, Response>(&addr, &req, body, CHUNK_RPC_TIMEOUT)
                .await
                .map(|(resp, _)| resp);
            drop(permit);
            let copy = match answer {
                Ok(Response::Stored(Ok(()))) => Copied::Stored,
                Ok(Response::Stored(Err(StoreRefused::NoSpace))) => {
                    tracing::warn!(peer = id, "a replica has no space for a chunk");
                    Copied::NoSpace
                }
                Ok(other) => {
                    tracing::warn!(peer = id, ?other, "a replica refused a chunk");
                    Copied::Failed
                }
                Err(e) => {
                    tracing::debug!(peer = id, error = %e, "a replica write failed");
                    Copied::Failed
                }
            };
            let _ = tx.send(copy).await;
        });
        Ok(())
    }
}

impl ChunkStore for ReplicatedChunks {
    fn put(&self, hash: &ContentHash, data: &[u8]) -> Result<(), ChunkError> {
        // One copy, shared by every peer's send (QUIC takes it as it is).
        self.put_shared(hash, Bytes::copy_from_slice(data))
    }

    fn put_shared(&self, hash: &ContentHash, shared: Bytes) -> Result<(), ChunkError> {
        let data = &shared[..];
        let targets = self.placement.targets(hash);
        let need = write_quorum(self.placement.write_quorum, targets.len());
        let (tx, mut rx) = mpsc::channel(targets.len().max(1));
        let me = self.placement.me;
        let liveness = &self.placement.liveness;
        // A peer that stopped answering probes is not sent to at first...
        let (suspects, peers): (Vec<_>, Vec<_>) = targets
            .iter()
            .filter(|t| t.0 != me)
            .partition(|t| liveness.is_suspect(t.0));
        let mut outstanding = peers.len();
        for target in peers {
            self.send_copy(hash, &shared, target, &tx)?;
        }
        let mut copies = Vec::with_capacity(targets.len());
        if targets.iter().any(|t| t.0 == self.placement.me) {
            let local = self.local.put(hash, data);
            if let Err(e) = &local {
                tracing::debug!(%hash, error = %e, "the local copy failed");
            }
            copies.push(Copied::of(&local));
        }
        let acks = |copies: &[Copied]| copies.iter().filter(|c| **c == Copied::Stored).count();
        // ...unless the others do not make the quorum soon: a peer killed a
        // moment ago is not suspect yet, and one restarted a moment ago may
        // still be (its probes go through a connection to the old process
        // until that times out). Waiting out the dead one's timeout while
        // the live one sat skipped stalled writes for seconds.
        let hedge_at = tokio::time::Instant::now() + HEDGE_AFTER;
        while acks(&copies) < need && outstanding > 0 {
            let next = self
                .runtime
                .block_on(tokio::time::timeout_at(hedge_at, rx.recv()));
            match next {
                Ok(Some(copy)) => {
                    outstanding -= 1;
                    copies.push(copy);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if acks(&copies) < need && !suspects.is_empty() {
            tracing::debug!(
                %hash,
                stored = acks(&copies),
                need,
                suspects = ?suspects.iter().map(|t| t.0).collect::<Vec<_>>(),
                "copies short of the quorum; sending to suspect peers too"
            );
            for target in suspects {
                self.send_copy(hash, &shared, target, &tx)?;
            }
        }
        drop(tx);
        while acks(&copies) < need {
            match self.runtime.block_on(rx.recv()) {
                Some(copy) => copies.push(copy),
                None => break,
            }
        }
        if acks(&copies) >= need {
            return Ok(());
        }
        Err(short_of_quorum(&copies, targets.len(), need))
    }

    fn get(&self, hash: &ContentHash) -> Result<Vec<u8>, ChunkError> {
        let local_err = match self.local.get(hash) {
            Ok(data) => return Ok(data),
            Err(e @ (ChunkError::Missing(_) | ChunkError::Corrupt { .. })) => e,
            Err(e) => return Err(e),
        };
        let data = self.fetch_remote(hash).map_err(|e| match e {
            ChunkError::Unavailable(_) => e,
            _ => local_err.clone_kind(),
        })?;
        // Heal the local copy if this node should have one.
        let corrupt = matches!(local_err, ChunkError::Corrupt { .. });
        if corrupt
            || self
                .placement
                .targets(hash)
                .iter()
                .any(|t| t.0 == self.placement.me)
        {
            if corrupt {
                tracing::error!(%hash, "replacing a corrupt local chunk with a peer's copy");
                self.local.delete(hash)?;
            }
            if let Err(e) = self.local.put(hash, &data) {
                tracing::warn!(%hash, error = %e, "could not store the fetched copy locally");
            }
        }
        Ok(data)
    }

    fn delete(&self, hash: &ContentHash) -> Result<(), ChunkError> {
        self.local.delete(hash)
    }

    fn has(&self, hash: &ContentHash) -> bool {
        self.local.has(hash)
    }

    fn for_each(&self, visit: &mut dyn FnMut(ContentHash, SystemTime)) -> Result<(), ChunkError> {
        self.local.for_each(visit)
    }

    fn free_bytes(&self) -> Result<u64, ChunkError> {
        self.local.free_bytes()
    }

    fn total_bytes(&self) -> Result<u64, ChunkError> {
        self.local.total_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use Copied::{Failed, NoSpace, Stored};

    fn node(id: NodeId, witness: bool) -> (NodeId, NodeInfo) {
        let info = NodeInfo {
            quic: format!("127.0.0.1:{id}"),
            http: String::new(),
            witness,
            draining: false,
        };
        (id, info)
    }

    #[test]
    fn chunks_are_fetched_from_answering_peers_first() {
        let candidates = vec![
            node(2, false),
            node(1, false),
            node(3, false),
            node(4, true),
            node(5, false),
        ];
        let order: Vec<NodeId> = fetch_order(candidates, 1, |id| id == 2)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        // Placement order kept among the answering; the suspect last; no
        // witness, not this node.
        assert_eq!(order, vec![3, 5, 2]);
    }

    #[test]
    fn a_write_short_of_its_quorum_is_out_of_space_only_when_retrying_cannot_help() {
        let no_space = |copies: &[Copied], targets| {
            matches!(short_of_quorum(copies, targets, 2), ChunkError::NoSpace)
        };
        // Two of three full: no quorum until space is freed.
        assert!(no_space(&[Stored, NoSpace, NoSpace], 3));
        // One full, one unreachable: that one may come back.
        assert!(!no_space(&[Stored, NoSpace, Failed], 3));
        assert!(!no_space(&[NoSpace, Failed, Failed], 3));
        // A lone node out of space.
        assert!(matches!(
            short_of_quorum(&[NoSpace], 1, 1),
            ChunkError::NoSpace
        ));
        assert!(matches!(
            short_of_quorum(&[Failed], 1, 1),
            ChunkError::Unavailable(_)
        ));
        // Placed nowhere (no live data node): unavailable, not full.
        assert!(matches!(
            short_of_quorum(&[], 0, 1),
            ChunkError::Unavailable(_)
        ));
    }
}
