//! What an object URL names: `/v1/{share}/{path}` plus its query.

use cairn_proto::{FilePath, ShareName};
use percent_encoding::percent_decode_str;

use super::error::{ApiError, ApiResult};

/// The share and path of an object request.
#[derive(Debug, Clone)]
pub struct Target {
    pub share: ShareName,
    pub path: FilePath,
    /// The URL ended in '/': the client means a directory.
    pub trailing_slash: bool,
}

impl Target {
    /// Parses the raw (still percent-encoded) URL path.
    pub fn parse(raw_path: &str) -> ApiResult<Self> {
        let rest = raw_path
            .strip_prefix("/v1/")
            .ok_or_else(|| ApiError::bad_request("object URLs are /v1/{share}/{path}"))?;
        let (share, tail) = rest.split_once('/').unwrap_or((rest, ""));
        let share = ShareName::parse(share)?;
        let trailing_slash = tail.ends_with('/');
        let tail = tail.strip_suffix('/').unwrap_or(tail);
        Ok(Self {
            share,
            path: FilePath::parse_url(tail)?,
            trailing_slash,
        })
    }
}

/// The query parameters the object routes understand.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub list: bool,
    pub stat: bool,
    pub mkdir: bool,
    pub after: Option<String>,
    pub limit: Option<usize>,
    pub rename: Option<String>,
    pub noreplace: bool,
}

impl Query {
    /// Parses `a&b=c` form encoding ('+' is a space, as HTML forms send it).
    pub fn parse(raw: Option<&str>) -> ApiResult<Self> {
        let mut q = Self::default();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = decode_form(v)?;
            match k {
                "list" => q.list = true,
                "stat" => q.stat = true,
                "mkdir" => q.mkdir = true,
                "noreplace" => q.noreplace = true,
                "after" => q.after = Some(v),
                "rename" => q.rename = Some(v),
                "limit" => {
                    let n = v
                        .parse()
                        .map_err(|_| ApiError::bad_request("limit must be a number"))?;
                    q.limit = Some(n);
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown query parameter '{other}'"
                    )));
                }
            }
        }
        Ok(q)
    }
}

fn decode_form(v: &str) -> ApiResult<String> {
    let v = v.replace('+', " ");
    percent_decode_str(&v)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("query value is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = Target::parse("/v1/default/bars/a%20b.bin").unwrap();
        assert_eq!(t.share.as_str(), "default");
        assert_eq!(t.path.as_str(), "bars/a b.bin");
        assert!(!t.trailing_slash);
        let t = Target::parse("/v1/default/bars/").unwrap();
        assert_eq!(t.path.as_str(), "bars");
        assert!(t.trailing_slash);
        assert!(Target::parse("/v1/default").unwrap().path.is_root());
        assert!(Target::parse("/v1/default/").unwrap().path.is_root());
        assert!(Target::parse("/v1/default/bars/../../etc/x").is_err());
        assert!(Target::parse("/v1/Bad/x").is_err());
        assert!(Target::parse("/v1/default/a//b").is_err());
    }

    #[test]
    fn queries() {
        let q = Query::parse(Some("list&after=a+b&limit=10")).unwrap();
        assert!(q.list);
        assert_eq!(q.after.as_deref(), Some("a b"));
        assert_eq!(q.limit, Some(10));
        assert_eq!(
            Query::parse(Some("rename=x%2By"))
                .unwrap()
                .rename
                .as_deref(),
            Some("x+y")
        );
        assert!(Query::parse(Some("limit=x")).is_err());
        assert!(Query::parse(Some("bogus")).is_err());
    }
}
