//! Error codes shared by every Cairn interface.
//!
//! The HTTP API sends them as `{"error": code, "message": text}`; the CLI maps
//! them to exit codes. The server maps them to HTTP statuses in one place.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What went wrong, in terms a client can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed request: bad header, bad query, body shorter than announced.
    BadRequest,
    /// A path or share name that is not allowed.
    InvalidPath,
    /// No token, or a token the server does not know.
    Unauthorized,
    /// The token is valid but does not grant this access to this share.
    Forbidden,
    NotFound,
    AlreadyExists,
    /// The directory still has entries.
    NotEmpty,
    /// A file operation on a directory.
    IsDirectory,
    /// A path goes through something that is not a directory.
    NotDirectory,
    /// `If-Match` / `If-None-Match` did not hold.
    PreconditionFailed,
    RangeNotSatisfiable,
    /// The upload is larger than the server's configured maximum.
    PayloadTooLarge,
    /// The disk (or the reserve kept for metadata) is full.
    InsufficientStorage,
    /// Stored data failed its hash check; no bad bytes were returned.
    Corrupt,
    /// Try again: the server is shutting down, overloaded or has lost quorum.
    Unavailable,
    Internal,
    /// Native protocol: the handle is not open (closed, or expired after
    /// its session was gone longer than the handle timeout).
    StaleHandle,
    /// Native protocol: the session does not exist (never set up, logged
    /// off, or expired); set up a new one.
    NoSession,
    /// Native protocol: another open handle's share mode forbids this access.
    SharingViolation,
    /// Native protocol: a byte-range lock of another handle overlaps.
    LockConflict,
    /// A file operation (open, download) on a symbolic link, which Cairn
    /// does not follow: read its target and resolve it instead.
    IsSymlink,
    /// Native protocol: a session's open handles or a handle's byte-range
    /// locks are at their limit; close or unlock some first.
    TooMany,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 22] = [
        Self::BadRequest,
        Self::InvalidPath,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::AlreadyExists,
        Self::NotEmpty,
        Self::IsDirectory,
        Self::NotDirectory,
        Self::PreconditionFailed,
        Self::RangeNotSatisfiable,
        Self::PayloadTooLarge,
        Self::InsufficientStorage,
        Self::Corrupt,
        Self::Unavailable,
        Self::Internal,
        Self::StaleHandle,
        Self::NoSession,
        Self::SharingViolation,
        Self::LockConflict,
        Self::IsSymlink,
        Self::TooMany,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::InvalidPath => "invalid_path",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::AlreadyExists => "already_exists",
            Self::NotEmpty => "not_empty",
            Self::IsDirectory => "is_directory",
            Self::NotDirectory => "not_directory",
            Self::PreconditionFailed => "precondition_failed",
            Self::RangeNotSatisfiable => "range_not_satisfiable",
            Self::PayloadTooLarge => "payload_too_large",
            Self::InsufficientStorage => "insufficient_storage",
            Self::Corrupt => "corrupt",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal",
            Self::StaleHandle => "stale_handle",
            Self::NoSession => "no_session",
            Self::SharingViolation => "sharing_violation",
            Self::LockConflict => "lock_conflict",
            Self::IsSymlink => "is_symlink",
            Self::TooMany => "too_many",
        }
    }

    /// True if the same request may succeed when sent again later.
    pub fn is_retryable(self) -> bool {
        matches!(self, Self::Unavailable)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error code this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown error code")]
pub struct UnknownErrorCode;

impl FromStr for ErrorCode {
    type Err = UnknownErrorCode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(UnknownErrorCode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_match_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
