//! HTTP API (axum): `/metrics`, health, the tracer table and control, and stored events.
//! Errors are JSON `{"error":{"code","message"}}` with a matching status code.

pub mod config;
pub mod console;
pub mod huatuo;
pub mod listen;
pub mod readers;
pub mod scrape;
pub mod vitals;
pub mod watch;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

pub use config::ServerConfig;

use crate::store::shipper::ShipperStats;
use crate::store::{self, Store};
use crate::tracer::Runner;

pub struct AppState {
    pub runner: Arc<Runner>,
    pub store: Arc<Store>,
    pub scraper: scrape::Scraper,
    pub token: Option<String>,
    pub ready: AtomicBool,
    /// The Elasticsearch shipper's counters, when it is configured.
    pub shipper: Option<Arc<ShipperStats>>,
    pub stream: Arc<watch::StreamStats>,
    pub connections: Arc<listen::ConnStats>,
    /// Read-only connections for `/events` and the other store reads.
    pub readers: readers::ReadPool,
    pub stream_limits: watch::StreamLimits,
    /// `compat = "huatuo"`: HuaTuo's routes too ([`huatuo`]).
    pub compat: crate::config::Compat,
}

pub fn router(state: Arc<AppState>, request_timeout: Duration, max_body_bytes: usize) -> Router {
    // The live stream lives as long as its client: it stays outside the request timeout (which
    // would otherwise only bound the time to the response head, but keep it explicit).
    let streams = Router::new()
        .route("/v1/events/watch", get(watch::watch))
        .merge(huatuo::stream_routes(&state))
        .with_state(state.clone());
    Router::new()
        // gzip when the scraper asks (Prometheus does): ~10x fewer bytes per scrape.
        .route("/metrics", get(metrics).layer(CompressionLayer::new()))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/tracers", get(tracers))
        .route("/tracers/{name}/{action}", post(control))
        .route("/events", get(events))
        .route("/events/{id}", get(event_by_id))
        .route("/events/{id}/flamegraph.svg", get(event_flamegraph))
        .route("/containers", get(containers))
        .route("/containers/{id}", get(container_by_id))
        .route("/shipper", get(shipper))
        .merge(huatuo::routes(&state))
        .fallback(not_found)
        .with_state(state.clone())
        .merge(console::routes(state))
        .layer(RequestBodyLimitLayer::new(max_body_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .merge(streams)
        .layer(axum::middleware::from_fn(limit_uri))
        .layer(axum::middleware::map_response(json_errors))
}

/// 414 for a request target past [`MAX_URI_BYTES`] (hyper itself only refuses far longer ones).
async fn limit_uri(req: Request, next: axum::middleware::Next) -> Response {
    let len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {len} bytes, at most {MAX_URI_BYTES}"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Error answers made by layers and axum itself (405, 408, 413 …) in the JSON error shape.
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if json || !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
        StatusCode::REQUEST_TIMEOUT => (
            "timeout",
            "the request took longer than server.request_timeout_ms",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            "the request body is larger than server.max_body_bytes",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ("unsupported_media_type", "unsupported content type")
        }
        s if s.is_server_error() => ("internal_error", "internal error"),
        _ => ("invalid_request", "invalid request"),
    };
    let (mut parts, _) = resp.into_parts();
    let error = ApiError::new(status, code, message).into_response();
    // Keep headers such as `Allow`; the body and its type are the JSON error's.
    parts.headers.remove(header::CONTENT_LENGTH);
    let (eparts, body) = error.into_parts();
    parts.headers.extend(eparts.headers);
    Response::from_parts(parts, body)
}

/// An API error: status code, machine-readable code, human message.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    fn internal(e: anyhow::Error) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("{e:#}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no such endpoint: {} {}", req.method(), req.uri().path()),
    )
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let body = app.scraper.scrape(&app.runner, &app.store).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `compat = "huatuo"`: 204 with no body where HuaTuo answers so; bianque's own JSON otherwise.
async fn healthz(State(app): State<Arc<AppState>>) -> Response {
    if app.compat.is_huatuo() {
        return StatusCode::NO_CONTENT.into_response();
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn readyz(State(app): State<Arc<AppState>>) -> Response {
    let store = app.store.stats();
    if !store.writable() {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_not_writable",
            format!("the local store cannot write: {}", store.last_error()),
        )
        .into_response()
    } else if app.ready.load(Ordering::Relaxed) {
        if app.compat.is_huatuo() {
            return StatusCode::NO_CONTENT.into_response();
        }
        axum::Json(serde_json::json!({"status": "ready"})).into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "tracers are still starting",
        )
        .into_response()
    }
}

async fn version(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "target": std::env::consts::ARCH,
    });
    if app.compat.is_huatuo() {
        body["data"] = huatuo::version_data();
    }
    axum::Json(body)
}

#[derive(Serialize)]
pub struct TracerInfo {
    pub name: &'static str,
    pub mode: &'static str,
    pub status: &'static str,
    pub reason: String,
    pub hits: u64,
    pub restarts: u64,
    pub description: &'static str,
}

pub fn tracer_table(runner: &Runner) -> Vec<TracerInfo> {
    runner
        .entries()
        .iter()
        .map(|e| {
            let (status, reason) = e.state.status();
            TracerInfo {
                name: e.spec.name,
                mode: e.spec.mode.as_str(),
                status: status.as_str(),
                reason,
                hits: e.state.hits(),
                restarts: e.state.restarts(),
                description: e.spec.description,
            }
        })
        .collect()
}

async fn tracers(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let mut body = serde_json::json!({"tracers": tracer_table(&app.runner)});
    if app.compat.is_huatuo() {
        body["data"] = huatuo::tracers_data(&app.runner);
    }
    axum::Json(body)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn token_matches(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for (i, b) in expected.iter().enumerate() {
        diff |= (given.get(i).copied().unwrap_or(0) ^ b) as usize;
    }
    diff == 0
}

async fn control(
    State(app): State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let Some(expected) = app.token.as_deref() else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "tracer control is off: no server.token configured",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !token_matches(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        ));
    }
    if app.runner.find(&name).is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("unknown tracer {name}"),
        ));
    }
    let runner = app.runner.clone();
    let tracer = name.clone();
    let result = match action.as_str() {
        "start" => tokio::task::spawn_blocking(move || runner.start(&tracer)).await,
        "stop" => tokio::task::spawn_blocking(move || runner.stop(&tracer)).await,
        other => {
            return Err(ApiError::bad_request(format!(
                "unknown action {other}: use start or stop"
            )))
        }
    };
    match result {
        Ok(Ok(())) => Ok(axum::Json(
            serde_json::json!({"tracer": name, "action": action}),
        )),
        Ok(Err(msg)) => Err(ApiError::new(StatusCode::CONFLICT, "conflict", msg)),
        Err(e) => Err(ApiError::internal(e.into())),
    }
}

pub const EVENTS_DEFAULT_LIMIT: usize = 100;
pub const EVENTS_MAX_LIMIT: usize = 10_000;
/// `data.<field>` matches per query at most: each is a term of one SQL expression, and SQLite
/// refuses an expression tree past a depth of 1000.
pub const EVENTS_MAX_DATA_MATCHES: usize = 32;
/// Request targets (path and query) longer than this get 414.
pub const MAX_URI_BYTES: usize = 8192;

/// `/events` query: `tracer`, `since`, `until`, `container`, `limit`, `cursor`, and any number
/// of `data.<field>=<value>` matches inside `tracer_data`.
pub fn events_query(pairs: Vec<(String, String)>) -> Result<store::Query, ApiError> {
    let now = crate::record::now_ns();
    let time = |key: &str, v: &str| -> Result<Option<i64>, ApiError> {
        crate::record::parse_time_arg(v, now)
            .map(Some)
            .map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
    };
    let mut q = store::Query {
        limit: EVENTS_DEFAULT_LIMIT,
        ..Default::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "tracer" => q.tracer = Some(value),
            "container" => q.container = Some(value),
            "since" => q.since_ns = time("since", &value)?,
            "until" => q.until_ns = time("until", &value)?,
            "cursor" => q.cursor = Some(value),
            "limit" => {
                let limit: usize = value.parse().map_err(|_| {
                    ApiError::bad_request(format!("limit: `{value}` is not a number"))
                })?;
                if limit == 0 || limit > EVENTS_MAX_LIMIT {
                    return Err(ApiError::bad_request(format!(
                        "limit: {limit} is out of range, allowed 1..={EVENTS_MAX_LIMIT}"
                    )));
                }
                q.limit = limit;
            }
            other => match other.strip_prefix("data.") {
                Some(path) if store::valid_data_path(path) => {
                    if q.data.len() == EVENTS_MAX_DATA_MATCHES {
                        return Err(ApiError::bad_request(format!(
                            "too many data.<field> parameters: at most {EVENTS_MAX_DATA_MATCHES}"
                        )));
                    }
                    q.data.push((path.to_string(), value));
                }
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "unknown parameter `{other}`: expected tracer, since, until, container, limit, cursor or data.<field>"
                    )))
                }
            },
        }
    }
    Ok(q)
}

async fn events(
    State(app): State<Arc<AppState>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = events_query(pairs)?;
    let reads = app.clone();
    let page = tokio::task::spawn_blocking(move || reads.readers.with(|s| s.query_page(&q)))
        .await
        .map_err(|e| ApiError::internal(e.into()))?
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            store::QueryError::InvalidCursor(_) | store::QueryError::InvalidField(_) => {
                ApiError::bad_request(e.to_string())
            }
            store::QueryError::Storage(_) => ApiError::internal(e.into()),
        })?;
    // The store keeps each record's JSON; join them without re-parsing.
    let mut body = String::with_capacity(page.rows.iter().map(|r| r.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"events\":[");
    for (i, r) in page.rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(r);
    }
    body.push(']');
    if let Some(next) = &page.next {
        body.push_str(",\"next\":");
        body.push_str(&serde_json::Value::from(next.as_str()).to_string());
    }
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// `GET /shipper`: the shipper's state and its most recent permanent failures.
async fn shipper(State(app): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let Some(stats) = app.shipper.clone() else {
        return Ok(axum::Json(serde_json::json!({"enabled": false})).into_response());
    };
    let reads = app.clone();
    let failures =
        tokio::task::spawn_blocking(move || reads.readers.with(|s| s.ship_failures(100)))
            .await
            .map_err(|e| ApiError::internal(e.into()))?
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    Ok(axum::Json(serde_json::json!({
        "enabled": true,
        "cursor": stats.cursor.load(Ordering::Relaxed),
        "backlog": n(&stats.backlog),
        "shipped": n(&stats.shipped),
        "retried": n(&stats.retried),
        "failed": n(&stats.failed),
        "expired": n(&stats.expired),
        "last_error": stats.last_error(),
        "failures": failures,
    }))
    .into_response())
}

async fn event_by_id(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let reads = app.clone();
    let lookup = id.clone();
    let row = tokio::task::spawn_blocking(move || reads.readers.with(|s| s.get(&lookup)))
        .await
        .map_err(|e| ApiError::internal(e.into()))?
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    match row {
        Some(body) => Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no event with id {id}"),
        )),
    }
}

/// The CPU flame graph (SVG) of a stored autotracing record that holds a profile.
async fn event_flamegraph(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let reads = app.clone();
    let lookup = id.clone();
    let row = tokio::task::spawn_blocking(move || reads.readers.with(|s| s.get(&lookup)))
        .await
        .map_err(|e| ApiError::internal(e.into()))?
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no event with id {id}"),
            )
        })?;
    let record: serde_json::Value =
        serde_json::from_str(&row).map_err(|e| ApiError::internal(e.into()))?;
    let folded = crate::profiler::folded_of_record(&record)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_profile",
                format!("event {id} holds no CPU profile"),
            )
        })?;
    let title = crate::profiler::flamegraph_title(&record);
    let svg = tokio::task::spawn_blocking(move || crate::profiler::flamegraph_svg(&title, &folded))
        .await
        .map_err(|e| ApiError::internal(e.into()))?
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

async fn containers(State(app): State<Arc<AppState>>) -> impl IntoResponse {
    let list = app.runner.services().containers.list();
    axum::Json(serde_json::json!({ "containers": list }))
}

async fn container_by_id(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app.runner.services().containers.get(&id) {
        Some(c) => Ok(axum::Json(c).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no container with id {id}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        assert!(token_matches(b"abcdefghijklmnop", b"abcdefghijklmnop"));
        assert!(!token_matches(b"abcdefghijklmnoq", b"abcdefghijklmnop"));
        assert!(!token_matches(b"abc", b"abcdefghijklmnop"));
        assert!(!token_matches(b"abcdefghijklmnopq", b"abcdefghijklmnop"));
        assert!(!token_matches(b"", b"abcdefghijklmnop"));
    }
}
