//! The Cairn client library: the native protocol (sessions and durable
//! handles over QUIC that survive failover; what the `cairn` CLI uses) and
//! an async client for the HTTP API.

pub mod alloc;
pub mod error;
pub mod http;
pub mod native;

pub use alloc::tune_allocator;
pub use error::ClientError;
pub use http::{HttpClient, RemotePath};
pub use native::{Client, File, NativeConfig, OpenOptions};
