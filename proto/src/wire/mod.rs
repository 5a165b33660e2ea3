//! The native client protocol: frames and messages, with no I/O.
//!
//! A request is one frame on its own QUIC bidirectional stream, answered by
//! one response frame on the same stream; server notices travel on
//! unidirectional streams. `PROTOCOL.md` (next to this crate's manifest) is
//! the reference for other implementations; this module is the one Rust
//! implementation of it.

mod frame;
mod leases;
mod locks;
mod messages;
mod rope;

pub use frame::{
    Crc32c, FRAME_OVERHEAD, FRAME_PAYLOAD_MAX, Frame, FrameError, crc32c, decode_frame,
    decode_frame_bytes, decode_frame_bytes_summed, encode_frame, encode_frame_around, finish_frame,
    start_frame,
};
pub use leases::{LeaseAck, LeaseBreak, Notice, capability, lease};
pub use locks::{HeldLock, LockKind, LockRange, LockTested, TestLock};
pub use messages::*;
pub use rope::{DataPieces, Rope, data_answer};

/// The protocol version this build speaks (negotiated; see `Negotiate`).
pub const PROTOCOL_VERSION: u16 = 1;

/// The TLS ALPN of the native protocol on a node's QUIC port.
pub const ALPN: &[u8] = b"cairn/1";
