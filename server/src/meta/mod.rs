//! Metadata: shares, the directory tree, file -> chunk lists and chunk
//! reference counts, as a deterministic state machine over RocksDB.

pub mod apply;
pub mod batch;
pub mod command;
pub mod keys;
pub mod leases;
pub mod locks;
pub mod overlay;
pub mod records;
pub mod sessions;
pub mod settle;
pub mod store;

#[cfg(test)]
mod model_tests;

pub use apply::{Applied, MetaError};
pub use batch::apply_batch;
pub use command::{Command, Precondition, TagSet};
pub use records::{Access, ChunkRef, Content, FileData, HandleRecord, Inode, SessionRecord};
pub use store::{MetaStore, StoreError};
