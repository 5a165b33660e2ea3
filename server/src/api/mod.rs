//! The HTTP API: object routes under `/v1/{share}/{path}`, plus health,
//! metrics and the OpenAPI description. One router among the several the
//! server will carry (native protocol, S3 subset).

pub(crate) mod auth;
mod cluster;
mod conditional;
mod download;
pub mod error;
pub mod listener;
mod ops;
pub mod range;
mod target;
mod upload;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use cairn_proto::ErrorCode;
use cairn_proto::api::{EntryKind, Health};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::auth::{Need, authorize};
use self::error::{ApiError, ApiResult};
use self::target::{Query, Target};
use crate::chunks::{ChunkStore, Pins};
use crate::clock::Clock;
use crate::cluster::liveness::Liveness;
use crate::cluster::service::PeerService;
use crate::consensus::{Committer, NodeInfo};
use crate::meta::MetaStore;
use crate::metrics::{MethodLabel, Metrics, RequestLabels};

/// Limits the HTTP layer enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub upload_bytes_max: u64,
    pub inline_bytes_max: u64,
    pub body_idle_timeout: Duration,
}

/// Everything a request handler needs.
pub struct AppState {
    pub node_id: u64,
    pub meta: Arc<MetaStore>,
    pub committer: Committer,
    pub chunks: Arc<dyn ChunkStore>,
    pub pins: Arc<Pins>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub limits: Limits,
    /// Chunk-sized buffers all uploads together may hold.
    pub chunk_buffers: Arc<Semaphore>,
    /// Chunk-sized buffers all downloads together may hold; a permit lives
    /// as long as the bytes it covers, until hyper has sent them.
    pub read_buffers: Arc<Semaphore>,
    /// Bytes of unflushed native-protocol writes all handles may hold.
    pub write_buffers: Arc<Semaphore>,
    /// How many bytes `write_buffers` started with.
    pub write_buffer_bytes: usize,
    /// Bytes the running hashes of native uploads hold past their flushes.
    pub hash_ahead: Arc<Semaphore>,
    /// Verified chunks recently read in part (native reads, HTTP ranges).
    pub chunk_cache: Arc<crate::chunks::ChunkCache>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// This node's answers to peers (its own status, for `cluster status`).
    pub peers: Arc<PeerService>,
    /// What this node knows of the others.
    pub liveness: Arc<Liveness>,
    /// How peers and clients reach this node.
    pub me: NodeInfo,
    /// Bearer token for membership changes; none configured, none allowed.
    pub admin_token: Option<String>,
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/cluster/status", get(cluster::status))
        .route("/cluster/nodes", axum::routing::post(cluster::add))
        .route(
            "/cluster/nodes/{id}",
            axum::routing::delete(cluster::remove),
        )
        .route(
            "/cluster/nodes/{id}/drain",
            axum::routing::post(cluster::drain),
        )
        .route("/v1/{share}", any(object))
        .route("/v1/{share}/", any(object))
        .route("/v1/{share}/{*path}", any(object))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let status = if state.shutdown.is_cancelled() {
        "shutting_down"
    } else {
        "ok"
    };
    let code = if state.shutdown.is_cancelled() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = Health {
        status: status.into(),
        node_id: state.node_id,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    // The disk is read at the scrape, not kept up to date in between.
    if let (Ok(total), Ok(room)) = (state.chunks.total_bytes(), state.chunks.free_bytes()) {
        state.metrics.disk(total, room);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such route; objects live under /v1/{share}/{path}",
    )
}

/// Every object request: parse, authorize, dispatch, count.
async fn object(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let request_id = rand::random::<u32>();
    let span = tracing::info_span!("http", node = state.node_id, req = %format_args!("{request_id:08x}"), %method, path = %req.uri().path());
    let method_label = method_label(&method);
    let resp = dispatch(&state, req)
        .instrument(span)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    let m = &state.metrics;
    m.http_requests
        .get_or_create(&RequestLabels {
            method: method_label.to_owned(),
            status: resp.status().as_u16(),
        })
        .inc();
    m.http_seconds
        .get_or_create(&MethodLabel {
            method: method_label.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// A metrics label from a fixed set: clients choose the method, and each
/// label value is a time series kept forever.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

async fn dispatch(state: &AppState, req: Request) -> ApiResult<Response> {
    let (parts, body) = req.into_parts();
    let target = Target::parse(parts.uri.path())?;
    let query = Query::parse(parts.uri.query())?;
    let headers = &parts.headers;
    let method = parts.method;
    let need = if method == Method::GET || method == Method::HEAD {
        Need::Read
    } else {
        Need::Write
    };
    authorize(&state.meta, &state.committer, headers, &target.share, need).await?;
    if need == Need::Write && state.shutdown.is_cancelled() {
        return Err(ApiError::new(
            ErrorCode::Unavailable,
            "the server is shutting down",
        ));
    }
    match method {
        Method::GET => read(state, &target, &query, headers, false).await,
        Method::HEAD => read(state, &target, &query, headers, true).await,
        Method::PUT => upload::put(state, &target, headers, body).await,
        Method::DELETE => ops::delete(state, &target, headers).await,
        Method::POST => post(state, &target, &query, body).await,
        other => Err(ApiError::bad_request(format!(
            "method {other} is not supported here"
        ))),
    }
}

async fn read(
    state: &AppState,
    target: &Target,
    query: &Query,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult<Response> {
    // Linearizable: whatever was acknowledged anywhere before this request
    // arrived is visible here.
    state.committer.read_barrier().await?;
    let (id, inode) = state.meta.snapshot().resolve(&target.share, &target.path)?;
    if query.stat {
        return Ok(axum::Json(ops::stat_of(target.path.file_name(), id, &inode)).into_response());
    }
    if query.list || inode.kind == EntryKind::Directory {
        return ops::list(state, target, query, id, &inode);
    }
    if target.trailing_slash {
        return Err(ApiError::new(
            ErrorCode::NotDirectory,
            format!("{} is a file", target.path),
        ));
    }
    download::get_file(state, &inode, headers, head).await
}

async fn post(state: &AppState, target: &Target, query: &Query, body: Body) -> ApiResult<Response> {
    // The operations are in the query; a body would be ignored, so refuse it.
    let body = axum::body::to_bytes(body, 4096)
        .await
        .map_err(|_| ApiError::bad_request("POST takes no body"))?;
    if !body.is_empty() {
        return Err(ApiError::bad_request("POST takes no body"));
    }
    match (query.mkdir, &query.rename) {
        (true, None) => ops::mkdir(state, target).await,
        (false, Some(to)) => ops::rename(state, target, to, !query.noreplace).await,
        _ => Err(ApiError::bad_request(
            "POST needs exactly one of ?mkdir or ?rename=NEWPATH",
        )),
    }
}
