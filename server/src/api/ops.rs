//! Namespace operations: stat, list, mkdir, rename, delete.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_proto::api::{EntryKind, Listing, Stat, WriteResult};
use cairn_proto::{ErrorCode, FilePath, InodeId};

use super::AppState;
use super::conditional::precondition;
use super::error::{ApiError, ApiResult};
use super::target::{Query, Target};
use crate::meta::{Command, Inode};

/// Entries per listing page unless `limit` asks for fewer.
pub const LIST_LIMIT_DEFAULT: usize = 1000;
/// The most entries one listing page may hold.
pub const LIST_LIMIT_MAX: usize = 10_000;
/// Permission bits of directories created over HTTP.
pub const DIR_MODE: u32 = 0o755;

pub fn stat_of(name: &str, id: InodeId, inode: &Inode) -> Stat {
    Stat {
        name: name.to_owned(),
        kind: inode.kind,
        inode: id.0,
        size: inode.size(),
        mode: inode.mode,
        nlink: inode.nlink,
        mtime_ns: inode.mtime_ns,
        ctime_ns: inode.ctime_ns,
        etag: inode.etag().map(|e| e.to_hex()),
        content_type: inode.file.as_ref().and_then(|f| f.content_type.clone()),
    }
}

pub fn list(
    state: &AppState,
    target: &Target,
    query: &Query,
    dir: InodeId,
    inode: &Inode,
) -> ApiResult<Response> {
    if inode.kind != EntryKind::Directory {
        return Err(ApiError::new(
            ErrorCode::NotDirectory,
            format!("{} is not a directory", target.path),
        ));
    }
    let limit = query.limit.unwrap_or(LIST_LIMIT_DEFAULT);
    if limit == 0 || limit > LIST_LIMIT_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {LIST_LIMIT_MAX}"
        )));
    }
    let (entries, more) = state
        .meta
        .snapshot()
        .list(dir, query.after.as_deref(), limit)?;
    let next_after = if more {
        entries.last().map(|e| e.name.clone())
    } else {
        None
    };
    let listing = Listing {
        path: target.path.as_str().to_owned(),
        entries: entries
            .iter()
            .map(|e| stat_of(&e.name, e.entry.inode, &e.inode))
            .collect(),
        next_after,
    };
    Ok(Json(listing).into_response())
}

pub async fn mkdir(state: &AppState, target: &Target) -> ApiResult<Response> {
    let cmd = Command::Mkdir {
        share: target.share.clone(),
        path: target.path.clone(),
        mode: DIR_MODE,
        now_ns: state.clock.now_ns(),
    };
    state.committer.commit(cmd).await?;
    tracing::debug!(share = %target.share, path = %target.path, "mkdir");
    let result = WriteResult {
        path: target.path.as_str().to_owned(),
        created: true,
        etag: None,
        size: 0,
    };
    Ok((StatusCode::CREATED, Json(result)).into_response())
}

pub async fn rename(
    state: &AppState,
    target: &Target,
    to: &str,
    replace: bool,
) -> ApiResult<Response> {
    let to = FilePath::parse(to.trim_start_matches('/'))?;
    let cmd = Command::Rename {
        share: target.share.clone(),
        from: target.path.clone(),
        to: to.clone(),
        replace,
        now_ns: state.clock.now_ns(),
    };
    let applied = state.committer.commit(cmd).await?;
    tracing::debug!(share = %target.share, from = %target.path, to = %to, "renamed");
    let result = WriteResult {
        path: to.as_str().to_owned(),
        created: applied.created,
        etag: applied.etag.map(|e| e.to_hex()),
        size: applied.size,
    };
    Ok(Json(result).into_response())
}

pub async fn delete(state: &AppState, target: &Target, headers: &HeaderMap) -> ApiResult<Response> {
    if target.trailing_slash {
        // `DELETE dir/` names a directory; refuse to delete a file by it.
        let (_, inode) = state.meta.snapshot().resolve(&target.share, &target.path)?;
        if !inode.is_dir() {
            return Err(ApiError::new(
                ErrorCode::NotDirectory,
                format!("{} is a file", target.path),
            ));
        }
    }
    let cmd = Command::Remove {
        share: target.share.clone(),
        path: target.path.clone(),
        now_ns: state.clock.now_ns(),
        precondition: precondition(headers)?,
    };
    state.committer.commit(cmd).await?;
    tracing::debug!(share = %target.share, path = %target.path, "deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}
