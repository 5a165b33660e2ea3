//! The cluster: node-to-node transport (QUIC, mutual TLS), the messages
//! nodes exchange, and how chunks are placed and kept replicated.

pub mod liveness;
pub mod placement;
pub mod replicated;
pub mod rpc;
pub mod service;
pub mod tls;
pub mod transport;
