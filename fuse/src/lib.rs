//! The Cairn FUSE mount: a share of a Cairn cluster as a local file system.
//!
//! Every file system call becomes native-protocol requests through one
//! [`cairn_client::Client`] session, so the mount inherits its failover: a
//! call made while the cluster fails over blocks and resumes (like a hard
//! NFS mount), and fails with `EIO` only after the mount's timeout. FUSE
//! file handles are durable protocol handles, so an application keeps its
//! file descriptors and offsets across a node's death.
//!
//! The FUSE thread never waits on the network: each call copies its
//! arguments, moves its reply into a task on the mount's runtime and
//! returns.

pub mod attr;
mod dirattrs;
mod errno;
pub mod fs;
mod inodes;
mod locks;
pub mod metrics;
pub mod options;
mod writeback;

pub use fs::CairnFs;
pub use options::MountOptions;
