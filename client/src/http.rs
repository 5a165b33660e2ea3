//! An async client for the HTTP API: streaming uploads and downloads,
//! listing with pagination, and the namespace operations.

use std::time::Duration;

use bytes::Bytes;
use cairn_proto::api::{ErrorBody, Listing, Stat, WriteResult};
use cairn_proto::{ErrorCode, FilePath, ShareName};
use futures::{Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode};

use crate::ClientError;

/// Characters left as they are in a path segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Characters left as they are in a query value.
const QUERY: &AsciiSet = &SEGMENT.remove(b'/');

/// A file or directory in a share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemotePath {
    pub share: ShareName,
    pub path: FilePath,
}

impl RemotePath {
    /// Parses `a/b/c` (a leading '/' is allowed) in `share`.
    pub fn parse(share: &ShareName, path: &str) -> Result<Self, ClientError> {
        let trimmed = path.trim_start_matches('/').trim_end_matches('/');
        let path =
            FilePath::parse(trimmed).map_err(|e| ClientError::Invalid(format!("'{path}': {e}")))?;
        Ok(Self {
            share: share.clone(),
            path,
        })
    }

    fn url_tail(&self) -> String {
        let segs: Vec<String> = self
            .path
            .segments()
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!("v1/{}/{}", self.share, segs.join("/"))
    }
}

/// One server's HTTP API.
#[derive(Clone)]
pub struct HttpClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl HttpClient {
    /// `base` is the server URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: Option<String>) -> Result<Self, ClientError> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Invalid(format!(
                "'{base}' is not an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| ClientError::Transport {
                url: base.clone(),
                source,
            })?;
        Ok(Self { base, token, http })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, url: String) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn url(&self, target: &RemotePath, query: &str) -> String {
        if query.is_empty() {
            format!("{}/{}", self.base, target.url_tail())
        } else {
            format!("{}/{}?{query}", self.base, target.url_tail())
        }
    }

    async fn send(&self, rb: RequestBuilder) -> Result<Response, ClientError> {
        let resp = rb.send().await.map_err(|source| ClientError::Transport {
            url: self.base.clone(),
            source,
        })?;
        if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED {
            Ok(resp)
        } else {
            Err(api_error(resp).await)
        }
    }

    /// Uploads `body` to `target`, replacing any file there. With `len`
    /// the server can refuse an oversize upload before it is sent.
    pub async fn put_stream<S>(
        &self,
        target: &RemotePath,
        len: Option<u64>,
        body: S,
    ) -> Result<WriteResult, ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let mut rb = self.request(Method::PUT, self.url(target, ""));
        if let Some(len) = len {
            rb = rb.header(reqwest::header::CONTENT_LENGTH, len);
        }
        let rb = rb.body(reqwest::Body::wrap_stream(body));
        json(self.send(rb).await?).await
    }

    pub async fn put_bytes(
        &self,
        target: &RemotePath,
        data: Bytes,
    ) -> Result<WriteResult, ClientError> {
        let rb = self.request(Method::PUT, self.url(target, "")).body(data);
        json(self.send(rb).await?).await
    }

    /// Starts a download; the response body streams.
    pub async fn get(&self, target: &RemotePath) -> Result<Response, ClientError> {
        self.send(self.request(Method::GET, self.url(target, "")))
            .await
    }

    pub async fn stat(&self, target: &RemotePath) -> Result<Stat, ClientError> {
        json(
            self.send(self.request(Method::GET, self.url(target, "stat")))
                .await?,
        )
        .await
    }

    /// One page of a directory listing.
    pub async fn list_page(
        &self,
        target: &RemotePath,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Listing, ClientError> {
        let mut q = format!("list&limit={limit}");
        if let Some(a) = after {
            q.push_str("&after=");
            q.push_str(&utf8_percent_encode(a, QUERY).to_string());
        }
        json(
            self.send(self.request(Method::GET, self.url(target, &q)))
                .await?,
        )
        .await
    }

    /// Every entry of a directory, following pagination.
    pub fn list_all<'a>(
        &'a self,
        target: &'a RemotePath,
    ) -> impl Stream<Item = Result<Stat, ClientError>> + 'a {
        futures::stream::try_unfold(Some(None::<String>), move |cursor| async move {
            let Some(after) = cursor else {
                return Ok::<_, ClientError>(None);
            };
            let page = self.list_page(target, after.as_deref(), 1000).await?;
            let next = page.next_after.map(Some);
            let entries = futures::stream::iter(page.entries.into_iter().map(Ok::<_, ClientError>));
            Ok(Some((entries, next)))
        })
        .try_flatten()
    }

    pub async fn mkdir(&self, target: &RemotePath) -> Result<WriteResult, ClientError> {
        json(
            self.send(self.request(Method::POST, self.url(target, "mkdir")))
                .await?,
        )
        .await
    }

    pub async fn rename(
        &self,
        from: &RemotePath,
        to: &FilePath,
        replace: bool,
    ) -> Result<WriteResult, ClientError> {
        let mut q = format!("rename={}", utf8_percent_encode(to.as_str(), QUERY));
        if !replace {
            q.push_str("&noreplace");
        }
        json(
            self.send(self.request(Method::POST, self.url(from, &q)))
                .await?,
        )
        .await
    }

    pub async fn delete(&self, target: &RemotePath) -> Result<(), ClientError> {
        self.send(self.request(Method::DELETE, self.url(target, "")))
            .await?;
        Ok(())
    }
}

use futures::TryStreamExt;

async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, ClientError> {
    let status = resp.status().as_u16();
    resp.json().await.map_err(|e| ClientError::Api {
        status,
        code: ErrorCode::Internal,
        message: format!("unreadable response body: {e}"),
    })
}

async fn api_error(resp: Response) -> ClientError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    match serde_json::from_str::<ErrorBody>(&text) {
        Ok(body) => ClientError::Api {
            status,
            code: body.error,
            message: body.message,
        },
        Err(_) => ClientError::Api {
            status,
            code: if status == 503 {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Internal
            },
            message: format!(
                "HTTP {status}: {}",
                text.chars().take(200).collect::<String>()
            ),
        },
    }
}

/// Reads a response body as a stream of byte blocks.
pub fn body_stream(resp: Response) -> impl Stream<Item = Result<Bytes, ClientError>> {
    let url = resp.url().to_string();
    resp.bytes_stream().map(move |r| {
        r.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_each_segment() {
        let share = ShareName::parse("default").unwrap();
        let p = RemotePath::parse(&share, "/dir/a b#?.txt").unwrap();
        assert_eq!(p.url_tail(), "v1/default/dir/a%20b%23%3F.txt");
        assert!(RemotePath::parse(&share, "a/../b").is_err());
        assert!(RemotePath::parse(&share, "").unwrap().path.is_root());
    }
}
