//! The console at `GET /`: one page, its script and style embedded in the binary (nothing is
//! fetched from the network; an air-gapped host works), and the few JSON endpoints only it
//! needs: `/incidents`, `/incidents/{id}`, `/console/vitals`, `/console/activity` and
//! `/events/{id}/flame`. Everything else the page reads is the public API.
//!
//! The page is read-only; starting or stopping a tracer asks for the server token and calls
//! `POST /tracers/{name}/{action}` with it. Every value from a record is put in the page as
//! text (never as markup), and a Content-Security-Policy forbids inline script and any origin
//! but this one.

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::vitals::{self, Vitals};
use super::{ApiError, AppState};
use crate::incidents::{self, IncidentQuery, Options};
use crate::record::{now_ns, parse_time_arg};

const INDEX_HTML: &str = include_str!("../../assets/console/index.html");
const APP_JS: &str = include_str!("../../assets/console/app.js");
const APP_CSS: &str = include_str!("../../assets/console/app.css");

/// No inline script or style, nothing from another origin, no framing, no forms posting away.
pub const CSP: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's assets, by path, with their content types (the budget benchmark sums them).
pub const ASSETS: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", INDEX_HTML),
    ("/console/app.js", "text/javascript; charset=utf-8", APP_JS),
    ("/console/app.css", "text/css; charset=utf-8", APP_CSS),
];

struct Console {
    app: Arc<AppState>,
    vitals: Arc<Vitals>,
}

/// The console's routes. Inside a Tokio runtime this also starts the vitals sampler, which
/// stops when the routes are dropped.
pub fn routes(app: Arc<AppState>) -> Router {
    let vitals = Arc::new(Vitals::new(app.runner.services().host.clone()));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(sample_vitals(Arc::downgrade(&vitals), app.clone()));
    }
    let state = Arc::new(Console { app, vitals });
    let mut r = Router::new();
    for (path, _, _) in ASSETS {
        r = r.route(path, get(asset));
    }
    r.route("/incidents", get(list_incidents))
        .route("/incidents/{id}", get(incident_by_id))
        .route("/console/vitals", get(vitals_json))
        .route("/console/activity", get(activity))
        .route("/events/{id}/flame", get(flame))
        .with_state(state)
}

async fn sample_vitals(vitals: Weak<Vitals>, app: Arc<AppState>) {
    let mut tick = tokio::time::interval(vitals::SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let Some(v) = vitals.upgrade() else { return };
        let drops = app.runner.find("dropwatch").map(|e| e.state.hits());
        let _ = tokio::task::spawn_blocking(move || v.sample(now_ns() / 1_000_000, drops)).await;
    }
}

async fn asset(uri: axum::http::Uri) -> Response {
    let Some((_, kind, body)) = ASSETS.iter().find(|(p, _, _)| *p == uri.path()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = (*body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn blocking_err(e: tokio::task::JoinError) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        e.to_string(),
    )
}

fn storage_err(e: anyhow::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        format!("{e:#}"),
    )
}

/// `/incidents` query: `since` (default 24h), `until`, `container` (a container id or prefix, a
/// cgroup path, `host`), `open` (true: only open ones), `limit` (default 100).
fn incidents_query(pairs: Vec<(String, String)>, now: i64) -> Result<IncidentQuery, ApiError> {
    let time = |key: &str, v: &str| {
        parse_time_arg(v, now).map_err(|e| ApiError::bad_request(format!("{key}: {e}")))
    };
    let mut q = IncidentQuery {
        since_ns: Some(now - 24 * 3600 * 1_000_000_000),
        limit: 100,
        ..Default::default()
    };
    for (key, value) in pairs {
        match key.as_str() {
            "since" => q.since_ns = Some(time("since", &value)?),
            "until" => q.until_ns = Some(time("until", &value)?),
            "container" => q.target = Some(value),
            "open" => {
                q.open_only = match value.as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => {
                        return Err(ApiError::bad_request(format!(
                            "open: `{value}` is not true or false"
                        )))
                    }
                }
            }
            "limit" => {
                q.limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "limit: `{value}` is not a number in 1..=1000"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: expected since, until, container, open or limit"
                )))
            }
        }
    }
    Ok(q)
}

async fn list_incidents(
    State(c): State<Arc<Console>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = now_ns();
    let q = incidents_query(pairs, now)?;
    let store = c.app.store.clone();
    let list =
        tokio::task::spawn_blocking(move || incidents::load(&store, &q, &Options::default(), now))
            .await
            .map_err(blocking_err)?
            .map_err(storage_err)?;
    Ok(axum::Json(serde_json::json!({ "incidents": list })).into_response())
}

async fn incident_by_id(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = c.app.store.clone();
    let lookup = id.clone();
    let found = tokio::task::spawn_blocking(move || {
        incidents::find(&store, &lookup, &Options::default(), now_ns())
    })
    .await
    .map_err(blocking_err)?
    .map_err(storage_err)?;
    match found {
        Some(i) => Ok(axum::Json(i).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no incident with id {id}"),
        )),
    }
}

async fn vitals_json(State(c): State<Arc<Console>>) -> Response {
    axum::Json(serde_json::json!({
        "interval_secs": vitals::SAMPLE_EVERY.as_secs(),
        "capacity": vitals::CAPACITY,
        "capacity_bytes": Vitals::capacity_bytes(),
        "samples": c.vitals.samples(),
    }))
    .into_response()
}

/// `/console/activity?since=1h&bucket_secs=60`: records per tracer per bucket.
async fn activity(
    State(c): State<Arc<Console>>,
    params: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(pairs) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = now_ns();
    let mut since = now - 3600 * 1_000_000_000;
    let mut bucket = Duration::from_secs(60);
    for (k, v) in pairs {
        match k.as_str() {
            "since" => {
                since = parse_time_arg(&v, now)
                    .map_err(|e| ApiError::bad_request(format!("since: {e}")))?
            }
            "bucket_secs" => {
                bucket = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=86_400).contains(n))
                    .map(Duration::from_secs)
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "bucket_secs: `{v}` is not a number in 1..=86400"
                        ))
                    })?
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown parameter `{other}`: expected since or bucket_secs"
                )))
            }
        }
    }
    let store = c.app.store.clone();
    let bucket_ns = bucket.as_nanos() as i64;
    let rows = tokio::task::spawn_blocking(move || store.counts_by_tracer(since, bucket_ns))
        .await
        .map_err(blocking_err)?
        .map_err(storage_err)?;
    let series: Vec<serde_json::Value> = rows
        .into_iter()
        .map(|(tracer, t, n)| serde_json::json!({"tracer": tracer, "t": t / 1_000_000, "count": n}))
        .collect();
    Ok(axum::Json(serde_json::json!({
        "since": since / 1_000_000,
        "now": now / 1_000_000,
        "bucket_secs": bucket.as_secs(),
        "series": series,
    }))
    .into_response())
}

/// A record's CPU profile as tidied folded stacks for the page to draw.
async fn flame(
    State(c): State<Arc<Console>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = c.app.store.clone();
    let lookup = id.clone();
    let row = tokio::task::spawn_blocking(move || store.get(&lookup))
        .await
        .map_err(blocking_err)?
        .map_err(storage_err)?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no event with id {id}"),
            )
        })?;
    let record: serde_json::Value =
        serde_json::from_str(&row).map_err(|e| storage_err(e.into()))?;
    let folded = crate::profiler::folded_of_record(&record)
        .filter(|f| !f.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no_profile",
                format!("event {id} holds no CPU profile"),
            )
        })?;
    let tidy = crate::profiler::tidy_folded(&folded, crate::profiler::FLAME_MAX_DEPTH);
    Ok(axum::Json(serde_json::json!({
        "title": crate::profiler::flamegraph_title(&record),
        "note": tidy.note(),
        "folded": tidy.folded,
        "capped_stacks": tidy.capped_stacks,
        "unsymbolized_frames": tidy.unsymbolized_frames,
        "max_depth": tidy.max_depth,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incident_queries_say_what_is_wrong() {
        let now = 10_000 * 1_000_000_000;
        let q = |s: &[(&str, &str)]| {
            incidents_query(
                s.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
                now,
            )
        };
        let d = q(&[]).ok().unwrap();
        assert_eq!(d.since_ns, Some(now - 24 * 3600 * 1_000_000_000));
        let x = q(&[("container", "abc"), ("open", "true"), ("limit", "5")])
            .ok()
            .unwrap();
        assert!(x.open_only);
        assert_eq!(x.target.as_deref(), Some("abc"));
        assert_eq!(x.limit, 5);
        assert!(q(&[("limit", "0")]).is_err());
        assert!(q(&[("open", "maybe")]).is_err());
        assert!(q(&[("tracer", "oom")]).is_err());
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_fits_the_budget() {
        let html = INDEX_HTML.to_ascii_lowercase();
        // Every <script> has a src; no handler attributes; no style attributes or blocks.
        for part in html.split("<script").skip(1) {
            assert!(
                part.trim_start().starts_with("src="),
                "inline script: {part}"
            );
        }
        assert!(
            !html.contains(" on") || !regex::Regex::new(r"\son[a-z]+=").unwrap().is_match(&html)
        );
        assert!(!html.contains("<style") && !html.contains("style="));
        // The script builds the page from text nodes only.
        assert!(!APP_JS.contains("innerHTML") && !APP_JS.contains("outerHTML"));
        assert!(!APP_JS.contains("insertAdjacentHTML") && !APP_JS.contains("document.write"));
        assert!(!APP_JS.contains("eval("));
        let total: usize = ASSETS.iter().map(|(_, _, b)| b.len()).sum();
        assert!(total <= 300 * 1024, "{total} bytes");
    }
}
