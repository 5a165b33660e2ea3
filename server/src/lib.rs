//! The Cairn node: metadata state machine over RocksDB, chunk store on local
//! disk, HTTP API, and the background workers that keep them tidy.
//!
//! Bottom up: [`meta`] and [`chunks`] (storage), [`consensus`] (Raft over
//! the metadata), [`cluster`] (QUIC transport, chunk placement and
//! replication), [`workers`] (GC, repair, scrub), [`api`] (HTTP), [`node`]
//! (wiring). `main.rs` only parses the command line.

pub mod api;
pub mod chunks;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod meta;
pub mod metrics;
pub mod native;
pub mod node;
pub mod workers;
