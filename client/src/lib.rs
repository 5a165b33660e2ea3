//! The Cairn client library: an async client for the HTTP API (used by the
//! `cairn` CLI), to be joined by the native protocol and failover.

pub mod error;
pub mod http;

pub use error::ClientError;
pub use http::{HttpClient, RemotePath};
