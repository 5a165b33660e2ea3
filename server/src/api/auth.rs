//! Bearer tokens, per share, read or read-write.

use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use cairn_proto::{ContentHash, ErrorCode, ShareName};

use super::error::{ApiError, ApiResult};
use crate::consensus::Committer;
use crate::meta::records::TokenRecord;
use crate::meta::{Access, MetaStore};

/// What the request needs to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Read,
    Write,
}

/// Checks the request's bearer token against `share`.
pub async fn authorize(
    meta: &MetaStore,
    committer: &Committer,
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
    let record = token_record(meta, committer, token).await?;
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

/// The record of `token`. One this node does not know yet may have been
/// created a moment ago through another node (the cluster's first tokens,
/// right after it forms, included): it is called unknown only once this
/// node has caught up with every write acknowledged before the request.
/// Unknown tokens cost a read barrier; known ones none.
pub async fn token_record(
    meta: &MetaStore,
    committer: &Committer,
    token: &str,
) -> ApiResult<TokenRecord> {
    let hash = ContentHash::of(token.as_bytes());
    if let Some(record) = meta.token(&hash)? {
        return Ok(record);
    }
    committer.read_barrier().await?;
    meta.token(&hash)?
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, "unknown token"))
}
