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

/// Parses `*` or a comma-separated list of entity tags. Our tags are strong;
/// a weak tag (`W/"…"`) matches only under weak comparison, which
/// `If-None-Match` uses and `If-Match` does not. Tags that are not ours can
/// never match, so they are dropped.
fn parse_tag_set(value: &str, weak_matches: bool) -> TagSet {
    if value.trim() == "*" {
        return TagSet::Any;
    }
    let tags = value
        .split(',')
        .filter_map(|t| {
            let t = t.trim();
            let t = match t.strip_prefix("W/") {
                Some(weak) if weak_matches => weak,
                Some(_) => return None,
                None => t,
            };
            t.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
        })
        .collect();
    TagSet::Tags(tags)
}

/// All lines of a list header, joined: `If-Match: "a"` + `If-Match: "b"`
/// means `If-Match: "a", "b"`.
fn header_tag_set(
    headers: &HeaderMap,
    name: HeaderName,
    weak_matches: bool,
) -> ApiResult<Option<TagSet>> {
    let mut lines = Vec::new();
    for v in headers.get_all(&name) {
        lines.push(
            v.to_str()
                .map_err(|_| ApiError::bad_request(format!("{name} is not ASCII")))?,
        );
    }
    if lines.is_empty() {
        return Ok(None);
    }
    Ok(Some(parse_tag_set(&lines.join(","), weak_matches)))
}

/// The `If-Match` / `If-None-Match` of a request.
pub fn precondition(headers: &HeaderMap) -> ApiResult<Precondition> {
    Ok(Precondition {
        if_match: header_tag_set(headers, IF_MATCH, false)?,
        if_none_match: header_tag_set(headers, IF_NONE_MATCH, true)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_sets() {
        let h = ContentHash::of(b"x");
        assert_eq!(parse_tag_set(" * ", true), TagSet::Any);
        let list = format!("\"zz\", W/{}, {}", etag_header(&h), etag_header(&h));
        assert_eq!(parse_tag_set(&list, true), TagSet::Tags(vec![h, h]));
        assert_eq!(parse_tag_set(&list, false), TagSet::Tags(vec![h]));
        assert_eq!(parse_tag_set("garbage", true), TagSet::Tags(vec![]));
    }
}
