//! Where a chunk's copies live: rendezvous (highest random weight) hashing
//! over the live data nodes. Each node scores `BLAKE3(chunk | node id)`;
//! the `replicas` highest scores hold the chunk. Adding or losing a node
//! moves only the chunks whose top set it enters or leaves.

use cairn_proto::ContentHash;

use super::liveness::Liveness;
use crate::consensus::{NodeId, NodeInfo};

fn score(hash: &ContentHash, node: NodeId) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(hash.as_bytes());
    h.update(&node.to_be_bytes());
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out.as_bytes()[..8]);
    u64::from_be_bytes(first)
}

/// The `replicas` nodes of `nodes` that should hold `hash`, best first.
pub fn place(
    hash: &ContentHash,
    nodes: &[(NodeId, NodeInfo)],
    replicas: usize,
) -> Vec<(NodeId, NodeInfo)> {
    let mut scored: Vec<(u64, &(NodeId, NodeInfo))> =
        nodes.iter().map(|n| (score(hash, n.0), n)).collect();
    scored.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.0.cmp(&b.1.0)));
    scored
        .into_iter()
        .take(replicas)
        .map(|(_, n)| n.clone())
        .collect()
}

/// Data nodes (not witnesses, not draining) of `members` that are not
/// declared dead;
/// `me` always counts as alive.
pub fn live_data_nodes(
    members: impl IntoIterator<Item = (NodeId, NodeInfo)>,
    me: NodeId,
    liveness: &Liveness,
) -> Vec<(NodeId, NodeInfo)> {
    members
        .into_iter()
        .filter(|(id, info)| {
            !info.witness && !info.draining && (*id == me || !liveness.is_dead(*id))
        })
        .collect()
}

/// Copies that must be durable before a write is acknowledged: the
/// configured quorum, or a majority of the copies placed; never none (a
/// write placed nowhere fails rather than succeed with no copy).
pub fn write_quorum(configured: usize, placed: usize) -> usize {
    if configured == 0 {
        placed / 2 + 1
    } else {
        configured.min(placed).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ids: &[NodeId]) -> Vec<(NodeId, NodeInfo)> {
        ids.iter().map(|i| (*i, NodeInfo::default())).collect()
    }

    #[test]
    fn placement_is_stable_and_moves_little_when_a_node_joins() {
        let three = nodes(&[1, 2, 3]);
        let four = nodes(&[1, 2, 3, 4]);
        let mut moved = 0;
        for i in 0..1000u32 {
            let h = ContentHash::of(&i.to_le_bytes());
            let a = place(&h, &three, 2);
            assert_eq!(a, place(&h, &three, 2));
            let b = place(&h, &four, 2);
            let a_ids: Vec<_> = a.iter().map(|n| n.0).collect();
            moved += b.iter().filter(|n| !a_ids.contains(&n.0)).count();
        }
        // A new node takes about its share (2 copies x 1000 / 4 = 500).
        assert!((350..650).contains(&moved), "{moved} copies moved");
    }

    #[test]
    fn all_nodes_when_fewer_than_replicas() {
        let h = ContentHash::of(b"x");
        assert_eq!(place(&h, &nodes(&[1, 2]), 3).len(), 2);
        assert_eq!(write_quorum(0, 3), 2);
        assert_eq!(write_quorum(0, 1), 1);
        assert_eq!(write_quorum(3, 2), 2);
        // Placed nowhere: the write must fail, not succeed with no copy.
        assert_eq!(write_quorum(2, 0), 1);
    }
}
