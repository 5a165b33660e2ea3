//! Client errors: what the server said, or why we could not ask it.

use cairn_proto::ErrorCode;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} ({code}, HTTP {status})")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
    },
    /// No usable answer: connection refused, reset, timed out.
    #[error("cannot reach {url}: {source}")]
    Transport { url: String, source: reqwest::Error },
    /// The server answered a native-protocol request with an error.
    #[error("{message} ({code})")]
    Protocol { code: ErrorCode, message: String },
    /// No node answered a native-protocol request in time.
    #[error("no answer from the cluster: {0}")]
    Connection(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("the downloaded content does not match its ETag (expected {expected}, got {actual})")]
    Integrity { expected: String, actual: String },
}

impl ClientError {
    /// The protocol error code, when the server gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api { code, .. } | Self::Protocol { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True if sending the same request again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Api { code, .. } | Self::Protocol { code, .. } => code.is_retryable(),
            Self::Transport { .. } | Self::Connection(_) => true,
            _ => false,
        }
    }
}
