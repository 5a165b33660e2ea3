//! An async client for the HTTP API: streaming uploads and downloads,
//! listing with pagination, and the namespace operations.

use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_proto::api::{ErrorBody, Listing, Stat, WriteResult};
use cairn_proto::{ErrorCode, FilePath, ShareName};
use futures::{Stream, StreamExt};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use tokio_util::io::ReaderStream;

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

/// How long and how eagerly a request is retried on other nodes.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Give up after this long (0: one attempt per node at most, no waiting).
    pub deadline: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
        }
    }
}

/// Whether a request may be sent again after an unknown outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    /// Applying it twice has the effect of applying it once (reads, whole
    /// PUTs, DELETE, mkdir): retry on any transport error or 503.
    Safe,
    /// Only retried when it surely never reached a server (connect failed).
    NotSent,
}

/// The HTTP API of a cluster: any node serves any request, so a request
/// that meets a dead node or a 503 is retried on the next one, with backoff,
/// within the retry deadline.
#[derive(Clone)]
pub struct HttpClient {
    /// Every node's base URL: the ones given, plus those learned from
    /// `/cluster/status` the first time a node fails.
    nodes: Arc<RwLock<Vec<String>>>,
    discovered: Arc<AtomicBool>,
    /// Index of the node that answered last; tried first.
    preferred: Arc<AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl HttpClient {
    /// `urls` is one or more node URLs separated by commas, e.g.
    /// `http://10.0.0.1:8080,http://10.0.0.2:8080`.
    pub fn new(urls: &str, token: Option<String>) -> Result<Self, ClientError> {
        let mut nodes: Vec<String> = Vec::new();
        for u in urls.split(',').map(|u| u.trim().trim_end_matches('/')) {
            if !u.is_empty() && !nodes.iter().any(|n| n == u) {
                nodes.push(u.to_owned());
            }
        }
        if nodes.is_empty() {
            return Err(ClientError::Invalid("no server URL given".into()));
        }
        if let Some(bad) = nodes
            .iter()
            .find(|u| !(u.starts_with("http://") || u.starts_with("https://")))
        {
            return Err(ClientError::Invalid(format!(
                "'{bad}' is not an http:// or https:// URL"
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // A node that stops answering (a partition drops packets) must
            // not hold a request past the retry deadline: reads time out.
            .read_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .build()
            .map_err(|source| ClientError::Transport {
                url: nodes[0].clone(),
                source,
            })?;
        Ok(Self {
            nodes: Arc::new(RwLock::new(nodes)),
            discovered: Arc::new(AtomicBool::new(false)),
            preferred: Arc::new(AtomicUsize::new(0)),
            token,
            http,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The node tried first.
    pub fn base_url(&self) -> String {
        let nodes = self.nodes();
        nodes[self.preferred.load(Ordering::Relaxed) % nodes.len()].clone()
    }

    /// Every node this client knows.
    pub fn nodes(&self) -> Vec<String> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The cluster's status as the first node that answers reports it
    /// (`GET /cluster/status`); every member's URL is remembered.
    pub async fn cluster_status(&self) -> Result<serde_json::Value, ClientError> {
        let resp = self
            .send(Replay::Safe, |c, base| {
                Ok(c.request(Method::GET, format!("{base}/cluster/status")))
            })
            .await?;
        let url = resp.url().to_string();
        let status: serde_json::Value = resp
            .json()
            .await
            .map_err(|source| ClientError::Transport { url, source })?;
        self.learn(&status);
        Ok(status)
    }

    /// One request to the node at `base` (no failover: membership changes
    /// go to the leader), with `token` as the bearer; returns its JSON.
    pub async fn call_node(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, ClientError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let mut rb = self.http.request(method, &url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        if !resp.status().is_success() {
            return Err(api_error(resp).await);
        }
        resp.json()
            .await
            .map_err(|source| ClientError::Transport { url, source })
    }

    fn learn(&self, status: &serde_json::Value) {
        let Some(members) = status.get("nodes").and_then(|n| n.as_array()) else {
            return;
        };
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        for m in members {
            if let Some(url) = m.get("http").and_then(|u| u.as_str()) {
                let url = url.trim_end_matches('/').to_owned();
                if !nodes.contains(&url) {
                    nodes.push(url);
                }
            }
        }
    }

    /// Learns the other nodes from any known node, once per client.
    async fn discover(&self) {
        if self.discovered.swap(true, Ordering::Relaxed) {
            return;
        }
        for base in self.nodes() {
            let req = self
                .http
                .get(format!("{base}/cluster/status"))
                .timeout(Duration::from_secs(2));
            if let Ok(resp) = req.send().await
                && resp.status().is_success()
                && let Ok(status) = resp.json::<serde_json::Value>().await
            {
                self.learn(&status);
                return;
            }
        }
    }

    fn request(&self, method: Method, url: String) -> RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn url(base: &str, target: &RemotePath, query: &str) -> String {
        if query.is_empty() {
            format!("{base}/{}", target.url_tail())
        } else {
            format!("{base}/{}?{query}", target.url_tail())
        }
    }

    /// Sends the request `make` builds for a node, moving on to the next
    /// node on failures that `replay` allows to retry.
    async fn send(
        &self,
        replay: Replay,
        make: impl Fn(&Self, &str) -> Result<RequestBuilder, ClientError>,
    ) -> Result<Response, ClientError> {
        self.send_tracked(replay, make).await.0
    }

    /// [`Self::send`], also saying whether a failed attempt may have been
    /// applied (it got no answer after the request could have reached a
    /// node, or a 503).
    async fn send_tracked(
        &self,
        replay: Replay,
        make: impl Fn(&Self, &str) -> Result<RequestBuilder, ClientError>,
    ) -> (Result<Response, ClientError>, bool) {
        let started = Instant::now();
        let mut nodes = self.nodes();
        let mut n = nodes.len();
        // Walk the nodes from the preferred one; other requests moving the
        // preference meanwhile must not send this one back to a dead node.
        let first = self.preferred.load(Ordering::Relaxed);
        let mut backoff = self.retry.backoff_initial;
        let mut maybe_applied = false;
        let mut last_err: Option<ClientError> = None;
        let mut attempt = 0usize;
        loop {
            let i = (first + attempt) % n;
            let base = &nodes[i % n];
            attempt += 1;
            let rb = match make(self, base) {
                Ok(rb) => rb,
                // A body that cannot be sent again: report why the last
                // attempt failed, not that.
                Err(e) => return (Err(last_err.unwrap_or(e)), maybe_applied),
            };
            let err = match rb.send().await {
                Ok(resp)
                    if resp.status().is_success() || resp.status() == StatusCode::NOT_MODIFIED =>
                {
                    self.preferred.store(i, Ordering::Relaxed);
                    return (Ok(resp), maybe_applied);
                }
                Ok(resp) => api_error(resp).await,
                Err(source) => ClientError::Transport {
                    url: base.clone(),
                    source,
                },
            };
            let (retry, unknown) = match &err {
                ClientError::Transport { source, .. } => (
                    replay == Replay::Safe || source.is_connect(),
                    !source.is_connect(),
                ),
                ClientError::Api { code, .. } => (
                    replay == Replay::Safe && code.is_retryable(),
                    *code == ErrorCode::Unavailable,
                ),
                _ => (false, false),
            };
            maybe_applied |= unknown;
            let out_of_time = started.elapsed() + backoff > self.retry.deadline;
            if !retry || (out_of_time && attempt >= n) {
                return (Err(err), maybe_applied);
            }
            tracing::debug!(node = %base, error = %err, "retrying on the next node");
            last_err = Some(err);
            if !self.discovered.load(Ordering::Relaxed) {
                self.discover().await;
                nodes = self.nodes();
                n = nodes.len();
            }
            // Try every node once before waiting; then back off per round.
            if attempt.is_multiple_of(n) && !out_of_time {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.retry.backoff_max);
            }
        }
    }

    /// Uploads `body` to `target`, replacing any file there, in one attempt
    /// (a stream cannot be replayed). With `len` the server can refuse an
    /// oversize upload before it is sent.
    pub async fn put_stream<S>(
        &self,
        target: &RemotePath,
        len: Option<u64>,
        body: S,
    ) -> Result<WriteResult, ClientError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let body = std::sync::Mutex::new(Some(reqwest::Body::wrap_stream(body)));
        let resp = self
            .send(Replay::NotSent, |c, base| {
                let body = body.lock().ok().and_then(|mut b| b.take()).ok_or_else(|| {
                    ClientError::Invalid("a streamed upload cannot be sent twice".into())
                })?;
                let mut rb = c.request(Method::PUT, Self::url(base, target, ""));
                if let Some(len) = len {
                    rb = rb.header(reqwest::header::CONTENT_LENGTH, len);
                }
                Ok(rb.body(body))
            })
            .await?;
        json(resp).await
    }

    /// Uploads a local file, retrying on other nodes: a whole-file PUT is
    /// idempotent, so a retry after an unknown outcome commits the same
    /// content. `on_attempt` is called before each attempt (to reset a
    /// progress bar), `on_bytes` as bytes are read.
    pub async fn put_file(
        &self,
        target: &RemotePath,
        local: &std::path::Path,
        on_attempt: impl Fn() + Send + Sync,
        on_bytes: impl Fn(u64) + Clone + Send + Sync + 'static,
    ) -> Result<WriteResult, ClientError> {
        let resp = self
            .send(Replay::Safe, |c, base| {
                on_attempt();
                let file = std::fs::File::open(local)?;
                let len = file.metadata()?.len();
                let on_bytes = on_bytes.clone();
                let stream =
                    ReaderStream::with_capacity(tokio::fs::File::from_std(file), 256 << 10)
                        .inspect_ok(move |b| on_bytes(b.len() as u64));
                Ok(c.request(Method::PUT, Self::url(base, target, ""))
                    .header(reqwest::header::CONTENT_LENGTH, len)
                    .body(reqwest::Body::wrap_stream(stream)))
            })
            .await?;
        json(resp).await
    }

    pub async fn put_bytes(
        &self,
        target: &RemotePath,
        data: Bytes,
    ) -> Result<WriteResult, ClientError> {
        let resp = self
            .send(Replay::Safe, |c, base| {
                Ok(c.request(Method::PUT, Self::url(base, target, ""))
                    .body(data.clone()))
            })
            .await?;
        json(resp).await
    }

    /// Starts a download; the response body streams.
    pub async fn get(&self, target: &RemotePath) -> Result<Response, ClientError> {
        self.send(Replay::Safe, |c, base| {
            Ok(c.request(Method::GET, Self::url(base, target, "")))
        })
        .await
    }

    pub async fn stat(&self, target: &RemotePath) -> Result<Stat, ClientError> {
        json(
            self.send(Replay::Safe, |c, base| {
                Ok(c.request(Method::GET, Self::url(base, target, "stat")))
            })
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
            self.send(Replay::Safe, |c, base| {
                Ok(c.request(Method::GET, Self::url(base, target, &q)))
            })
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

    /// Creates a directory; only retried if the request surely never
    /// reached a node (a retry could not tell its own success from a
    /// directory that already existed).
    pub async fn mkdir(&self, target: &RemotePath) -> Result<WriteResult, ClientError> {
        json(
            self.send(Replay::NotSent, |c, base| {
                Ok(c.request(Method::POST, Self::url(base, target, "mkdir")))
            })
            .await?,
        )
        .await
    }

    /// Renames; only retried if the request surely never reached a node.
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
            self.send(Replay::NotSent, |c, base| {
                Ok(c.request(Method::POST, Self::url(base, from, &q)))
            })
            .await?,
        )
        .await
    }

    /// Deletes. Retried after an unknown outcome, a 404 means an earlier
    /// attempt did it, so it counts as success then (only then).
    pub async fn delete(&self, target: &RemotePath) -> Result<(), ClientError> {
        let (result, maybe_applied) = self
            .send_tracked(Replay::Safe, |c, base| {
                Ok(c.request(Method::DELETE, Self::url(base, target, "")))
            })
            .await;
        match result {
            Err(e) if e.code() == Some(ErrorCode::NotFound) && maybe_applied => Ok(()),
            other => other.map(|_| ()),
        }
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
