//! Bearer tokens, per share, read or read-write.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use cairn_proto::{ContentHash, ErrorCode, ShareName};

use super::error::{ApiError, ApiResult};
use crate::meta::{Access, MetaStore};

/// What the request needs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// Checks the request's bearer token against `share`.
pub fn authorize(
    meta: &MetaStore,
    headers: &HeaderMap,
    share: &ShareName,
    need: Need,
) -> ApiResult<()> {
    let unauthorized = |m: &str| ApiError::new(ErrorCode::Unauthorized, m);
    let header = headers
        .get(AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing 'Authorization: Bearer TOKEN' header"))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer TOKEN'"))?;
    let record = meta
        .token(&ContentHash::of(token.as_bytes()))?
        .ok_or_else(|| unauthorized("unknown token"))?;
    if record.share != *share {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("the token does not grant access to share '{share}'"),
        ));
    }
    if need == Need::Write && record.access != Access::ReadWrite {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("the token grants read-only access to share '{share}'"),
        ));
    }
    Ok(())
}
