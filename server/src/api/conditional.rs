//! ETags and the conditional request headers.

use axum::http::HeaderMap;
use axum::http::header::{HeaderName, IF_MATCH, IF_NONE_MATCH};
use cairn_proto::ContentHash;

use super::error::{ApiError, ApiResult};
use crate::meta::{Precondition, TagSet};

/// A strong ETag: the quoted hex BLAKE3 of the content.
pub fn etag_header(hash: &ContentHash) -> String {
    format!("\"{}\"", hash.to_hex())
}

/// Parses `*` or a comma-separated list of (possibly weak) entity tags.
/// Tags that are not ours can never match, so they are dropped.
fn parse_tag_set(value: &str) -> TagSet {
    if value.trim() == "*" {
        return TagSet::Any;
    }
    let tags = value
        .split(',')
        .filter_map(|t| {
            let t = t.trim();
            let t = t.strip_prefix("W/").unwrap_or(t);
            t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
        })
        .collect();
    TagSet::Tags(tags)
}

fn header_tag_set(headers: &HeaderMap, name: HeaderName) -> ApiResult<Option<TagSet>> {
    match headers.get(&name) {
        None => Ok(None),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))?;
            Ok(Some(parse_tag_set(s)))
        }
    }
}

/// The `If-Match` / `If-None-Match` of a request.
pub fn precondition(headers: &HeaderMap) -> ApiResult<Precondition> {
    Ok(Precondition {
        if_match: header_tag_set(headers, IF_MATCH)?,
        if_none_match: header_tag_set(headers, IF_NONE_MATCH)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_sets() {
        let h = ContentHash::of(b"x");
        assert_eq!(parse_tag_set(" * "), TagSet::Any);
        let list = format!("\"zz\", W/{}, {}", etag_header(&h), etag_header(&h));
        assert_eq!(parse_tag_set(&list), TagSet::Tags(vec![h, h]));
        assert_eq!(parse_tag_set("garbage"), TagSet::Tags(vec![]));
    }
}
