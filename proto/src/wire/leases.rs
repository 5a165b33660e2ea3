//! Leases: what a client may cache about an open file, and the notices a
//! server pushes when another open needs the cache given up.
//!
//! A lease belongs to a handle. `READ` lets its holder keep file data and
//! attributes cached across reads (no other handle can write); `READ |
//! WRITE` also lets it keep writes unflushed (no other handle is open).
//! When another open conflicts, every node first breaks the conflicting
//! leases: the holder's node pushes a [`Notice::LeaseBreak`] on a
//! unidirectional stream, the holder flushes what it holds, drops what it
//! may no longer cache, and answers with a `LeaseAck`. The open waits for
//! the acknowledgements (at most a break timeout, after which the server
//! takes the lease away itself).

use serde::{Deserialize, Serialize};

use super::frame::{Frame, FrameError, finish_frame, start_frame};
use super::messages::{HandleId, MessageError};

/// Lease bits. `WRITE` is only granted together with `READ`.
pub mod lease {
    pub const NONE: u8 = 0;
    pub const READ: u8 = 1;
    pub const WRITE: u8 = 2;
    pub const READ_WRITE: u8 = READ | WRITE;

    /// A short name for logs: `none`, `R`, `RW`.
    pub fn name(level: u8) -> &'static str {
        match level & READ_WRITE {
            READ => "R",
            READ_WRITE => "RW",
            WRITE => "W",
            _ => "none",
        }
    }
}

/// Capability bits in `Negotiate`/`Negotiated`.
pub mod capability {
    /// The server grants leases and pushes break notices.
    pub const LEASES: u64 = 1;
    /// The share may hold symbolic links (`Attr.kind` = symlink), made
    /// with `Symlink` and read with `ReadLink`.
    pub const SYMLINKS: u64 = 2;
    /// The server takes `LockRange` and `TestLock`: POSIX-style locks of
    /// an owner through a handle.
    pub const POSIX_LOCKS: u64 = 4;
}

/// The holder acknowledges a break: it caches at most `lease` from now on.
/// Idempotent, so a retry after a failover is harmless.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAck {
    pub handle: HandleId,
    pub lease: u8,
}

/// A lease must shrink from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseBreak {
    pub handle: HandleId,
    pub from: u8,
    pub to: u8,
}

/// What a server pushes, one frame per unidirectional stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    LeaseBreak(LeaseBreak),
}

impl Notice {
    pub fn kind(&self) -> u16 {
        match self {
            Self::LeaseBreak(_) => 0xC001,
        }
    }

    pub fn encode(&self) -> Result<Vec<u8>, FrameError> {
        let mut payload = start_frame(self.kind(), 64);
        match self {
            Self::LeaseBreak(b) => super::messages::put(b, &mut payload),
        }
        finish_frame(&mut payload)?;
        Ok(payload)
    }

    pub fn decode(frame: &Frame) -> Result<Self, MessageError> {
        let kind = frame.kind;
        match kind {
            0xC001 => Ok(Self::LeaseBreak(
                super::messages::body(kind, &frame.payload)?.0,
            )),
            other => Err(MessageError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decode_frame;

    #[test]
    fn lease_break_round_trips_and_names() {
        let n = Notice::LeaseBreak(LeaseBreak {
            handle: HandleId(7),
            from: lease::READ_WRITE,
            to: lease::READ,
        });
        let bytes = n.encode().unwrap();
        let (frame, used) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(frame.kind, 0xC001);
        assert_eq!(Notice::decode(&frame).unwrap(), n);
        assert_eq!(lease::name(lease::READ_WRITE), "RW");
        assert_eq!(lease::name(lease::NONE), "none");
    }

    #[test]
    fn unknown_notice_is_refused() {
        let mut bytes = Vec::new();
        crate::wire::encode_frame(0xC0FF, b"", &mut bytes).unwrap();
        let (frame, _) = decode_frame(&bytes).unwrap().unwrap();
        assert_eq!(
            Notice::decode(&frame),
            Err(MessageError::UnknownKind(0xC0FF))
        );
    }
}
