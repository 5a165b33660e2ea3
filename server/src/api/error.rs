//! The one place where errors become HTTP responses.
//!
//! Every error leaves as `{"error": code, "message": text}` with the status
//! its code implies. Errors are logged here, where they are handled: client
//! mistakes at DEBUG, retryable trouble at WARN, and at ERROR only what a
//! human must look at (corrupt data, a failing store).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use cairn_proto::api::ErrorBody;
use cairn_proto::{ErrorCode, PathError};

use crate::chunks::ChunkError;
use crate::consensus::CommitError;
use crate::meta::apply::ApplyError;
use crate::meta::{MetaError, StoreError};

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn status(&self) -> StatusCode {
        status_of(self.code)
    }
}

pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidPath => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::StaleHandle | ErrorCode::NoSession => {
            StatusCode::NOT_FOUND
        }
        ErrorCode::AlreadyExists
        | ErrorCode::NotEmpty
        | ErrorCode::IsDirectory
        | ErrorCode::NotDirectory
        | ErrorCode::SharingViolation
        | ErrorCode::LockConflict
        | ErrorCode::IsSymlink
        | ErrorCode::TooMany => StatusCode::CONFLICT,
        ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
        ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Corrupt | ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self.code {
            ErrorCode::Corrupt | ErrorCode::Internal => {
                tracing::error!(code = %self.code, "{}", self.message);
            }
            ErrorCode::Unavailable | ErrorCode::InsufficientStorage => {
                tracing::warn!(code = %self.code, "{}", self.message);
            }
            _ => tracing::debug!(code = %self.code, "{}", self.message),
        }
        let status = self.status();
        let retry = self.code.is_retryable();
        let mut resp = (
            status,
            Json(ErrorBody {
                error: self.code,
                message: self.message,
            }),
        )
            .into_response();
        if retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::new(ErrorCode::InvalidPath, e.to_string())
    }
}

impl From<MetaError> for ApiError {
    fn from(e: MetaError) -> Self {
        Self::new(e.code(), e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_no_space() {
            Self::new(
                ErrorCode::InsufficientStorage,
                format!("metadata disk is full: {e}"),
            )
        } else {
            Self::new(ErrorCode::Internal, e.to_string())
        }
    }
}

impl From<ApplyError> for ApiError {
    fn from(e: ApplyError) -> Self {
        match e {
            ApplyError::Meta(e) => e.into(),
            ApplyError::Store(e) => e.into(),
        }
    }
}

impl From<CommitError> for ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Meta(e) => e.into(),
            CommitError::Store(e) => Self::new(ErrorCode::Internal, format!("metadata store: {e}")),
            e @ (CommitError::Unavailable(_) | CommitError::Unknown(_)) => {
                Self::new(ErrorCode::Unavailable, e.to_string())
            }
            CommitError::Stopped => {
                Self::new(ErrorCode::Unavailable, "the server is shutting down")
            }
        }
    }
}

impl From<ChunkError> for ApiError {
    fn from(e: ChunkError) -> Self {
        let code = match &e {
            ChunkError::Missing(_) | ChunkError::Corrupt { .. } | ChunkError::Oversize { .. } => {
                ErrorCode::Corrupt
            }
            ChunkError::NoSpace => ErrorCode::InsufficientStorage,
            ChunkError::Unavailable(_) => ErrorCode::Unavailable,
            ChunkError::Io(_) => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::new(ErrorCode::Internal, format!("worker task failed: {e}"))
    }
}
