//! Raft over the metadata state machine, with openraft.
//!
//! Every metadata mutation is a [`Command`] appended to the Raft log; once a
//! majority holds it on disk it is applied, in log order, by the same
//! deterministic `apply` on every node. The log, the vote and the state
//! machine share one RocksDB database ([`MetaStore`]).
//!
//! [`MetaStore`]: crate::meta::MetaStore

pub mod committer;
pub mod group_commit;
pub mod lease;
pub mod log_store;
pub mod network;
pub mod snapshot;
pub mod state_machine;
pub mod watchdog;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::meta::{Applied, Command, MetaError};

pub use committer::{CommitError, Committer};
pub use log_store::LogStore;
pub use state_machine::StateMachine;

/// A node's id, unique in its cluster and never reused.
pub type NodeId = u64;

/// What a committed command did, as every node computes it.
pub type Outcome = Result<Applied, MetaError>;

/// What one log entry did: one outcome per command it carries (a
/// [`Command::Batch`] carries several; other entries one).
pub type Outcomes = Vec<Outcome>;

/// How a node is reached, and what it stores; kept in the Raft membership
/// so every node knows every other.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// QUIC address for node-to-node traffic (`host:port`).
    pub quic: String,
    /// Base URL of the HTTP API, for clients.
    pub http: String,
    /// A witness votes and holds metadata but stores no chunks.
    pub witness: bool,
    /// Being removed: no new chunk copies are placed here, and its copies
    /// are re-replicated elsewhere before it leaves.
    #[serde(default)]
    pub draining: bool,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.http, self.quic)?;
        if self.witness {
            f.write_str(" witness")?;
        }
        if self.draining {
            f.write_str(" draining")?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// The Raft types of a Cairn cluster.
    pub TypeConfig:
        D = Command,
        R = Outcomes,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Members = BTreeMap<NodeId, NodeInfo>;

/// Turns any error into openraft's I/O error for `subject`.
fn io_error(
    subject: openraft::ErrorSubject<NodeId>,
    verb: openraft::ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::new(&e)).into()
}

#[cfg(test)]
mod suite_tests {
    #![allow(clippy::unwrap_used)]
    //! openraft's own storage test suite, run against our log store and
    //! state machine on a real RocksDB.

    use openraft::testing::{StoreBuilder, Suite};

    use super::snapshot::SnapshotDir;
    use super::{LogStore, StateMachine, StorageError, TypeConfig};
    use crate::meta::MetaStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().unwrap();
            let meta = MetaStore::open(&dir.path().join("meta")).unwrap();
            let snapshots = SnapshotDir::open(&dir.path().join("snapshots")).unwrap();
            let sm = StateMachine::open(std::sync::Arc::clone(&meta), snapshots).unwrap();
            Ok((dir, LogStore::new(meta), sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
