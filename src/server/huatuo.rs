//! HuaTuo's HTTP routes under `compat = "huatuo"`, as aliases of bianque's own handlers: what a
//! HuaTuo client sends gets HuaTuo's answer (method, path, status code, JSON shape).
//!
//! - `PUT /tracers/{name}/start|stop` → bianque's tracer control (same bearer-token rule);
//!   `204` on success.
//! - `GET /containers/json[?container_id=]` → bianque's container list as `{"data":[…]}`.
//! - `POST /v1/events/watch` with `{"filters":{…}}` (regular expressions on `tracer_name`,
//!   `hostname`, `region`, `container_hostname`, `container_host_namespace`, `container_qos`) →
//!   bianque's live stream, each event HuaTuo's CloudEvent (`tech.huatuo.kernel.event`).
//! - `GET /tracers` and `GET /version` keep bianque's fields and add HuaTuo's `data` envelope
//!   ([`tracers_data`], [`version_data`]), so both kinds of client read the same answer.
//!
//! Errors are the same `{"error":{"code","message"}}` both use.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::record::huatuo as doc;
use crate::record::{Record, TracerType};
use crate::store::Published;
use crate::tracer::Runner;

/// HuaTuo's routes that answer outside the request timeout (the live stream); empty without
/// the switch.
pub fn stream_routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    if !state.compat.is_huatuo() {
        return Router::new();
    }
    Router::new().route("/v1/events/watch", post(watch))
}

/// HuaTuo's other routes; empty without the switch.
pub fn routes(state: &Arc<AppState>) -> Router<Arc<AppState>> {
    if !state.compat.is_huatuo() {
        return Router::new();
    }
    Router::new()
        .route("/tracers/{name}/{action}", put(control))
        .route("/containers/json", get(containers))
}

/// `PUT /tracers/{name}/start|stop`: bianque's control, answered `204` as HuaTuo does. `name`
/// is HuaTuo's (`net_rx_latency`; `sched_tick` is softirq) or bianque's.
async fn control(
    state: State<Arc<AppState>>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let name = doc::bianque_tracer_name(&name).to_string();
    super::control(state, Path((name, action)), headers).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// HuaTuo's tracer flags: 1 exports metrics, 2 runs a tracing loop.
const FLAG_METRIC: u32 = 1;
const FLAG_TRACING: u32 = 2;

/// HuaTuo's `GET /tracers` `data`: `{name: {name, running, hit, restart_interval, flag}}` by
/// HuaTuo's names;
/// `hit` counts the tracer's runs (its first start and its restarts), as HuaTuo's does.
pub fn tracers_data(runner: &Runner) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for e in runner.entries() {
        let (status, _) = e.state.status();
        let running = status.as_str() == "active";
        let flag = match e.spec.mode.as_str() {
            "metric" => FLAG_METRIC,
            // Event tracers also export their counters.
            "event" => FLAG_METRIC | FLAG_TRACING,
            _ => FLAG_TRACING,
        };
        let name = doc::tracer_name(e.spec.name, &serde_json::Value::Null);
        out.insert(
            name.to_string(),
            serde_json::json!({
                "name": name,
                "running": running,
                "hit": e.state.restarts() + u64::from(running),
                "restart_interval": e.restart_interval.as_secs(),
                "flag": flag,
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// HuaTuo's `GET /version` `data` (kubectl's version.Info fields).
pub fn version_data() -> serde_json::Value {
    serde_json::json!({
        "name": env!("CARGO_PKG_NAME"),
        "version": env!("CARGO_PKG_VERSION"),
        "git_commit": option_env!("BIANQUE_GIT_COMMIT").unwrap_or("(devel)"),
        "git_tree_state": "unknown",
        "build_time": option_env!("BIANQUE_BUILD_TIME").unwrap_or("(devel)"),
        "go_version": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainersParams {
    #[serde(default)]
    container_id: String,
}

/// `GET /containers/json[?container_id=<64 hex>]`: `{"data":[…]}`, HuaTuo's field names next
/// to bianque's (`type` `daemonSet`, `started_at` = when the agent first saw it).
async fn containers(
    State(app): State<Arc<AppState>>,
    params: Result<Query<ContainersParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let id = p.container_id;
    if !id.is_empty() && (id.len() != 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric())) {
        return Err(ApiError::bad_request(format!(
            "container_id: `{id}` is not a 64-character container id"
        )));
    }
    let list: Vec<serde_json::Value> = app
        .runner
        .services()
        .containers
        .list()
        .into_iter()
        .filter(|c| id.is_empty() || c.id == id)
        .filter_map(|c| {
            let mut v = serde_json::to_value(&c).ok()?;
            let obj = v.as_object_mut()?;
            if c.kind == "daemonset" {
                obj.insert("type".into(), "daemonSet".into());
            }
            obj.insert("started_at".into(), c.first_seen.clone().into());
            obj.insert(
                "labels".into(),
                serde_json::json!({"namespace": c.namespace, "pod": c.pod, "runtime": c.runtime}),
            );
            Some(v)
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "data": list })).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct WatchRequest {
    #[serde(default)]
    filters: WatchFilters,
}

/// HuaTuo's watch filters: each a regular expression (unanchored, as Go's `MatchString`) on one
/// field of HuaTuo's document; all given ones must match.
#[derive(Debug, Default, Deserialize)]
struct WatchFilters {
    #[serde(default)]
    tracer_name: String,
    #[serde(default)]
    hostname: String,
    #[serde(default)]
    container_hostname: String,
    #[serde(default)]
    container_host_namespace: String,
    #[serde(default)]
    container_qos: String,
    #[serde(default)]
    region: String,
}

type FieldOf = fn(&Record) -> &str;

fn container_field(r: &Record, f: fn(&crate::record::ContainerFields) -> &str) -> &str {
    r.container.as_ref().map_or("", f)
}

impl WatchFilters {
    fn compile(&self) -> Result<Vec<(regex::Regex, FieldOf)>, ApiError> {
        let fields: [(&str, &str, FieldOf); 6] = [
            ("tracer_name", &self.tracer_name, |r| {
                doc::tracer_name(&r.tracer_name, &r.tracer_data)
            }),
            ("hostname", &self.hostname, |r| &r.hostname),
            ("container_hostname", &self.container_hostname, |r| {
                container_field(r, |c| &c.hostname)
            }),
            (
                "container_host_namespace",
                &self.container_host_namespace,
                |r| container_field(r, |c| &c.host_namespace),
            ),
            ("container_qos", &self.container_qos, |r| {
                container_field(r, |c| &c.qos)
            }),
            ("region", &self.region, |r| &r.region),
        ];
        let mut out = Vec::new();
        for (name, pattern, field) in fields {
            if pattern.is_empty() {
                continue;
            }
            let re = regex::Regex::new(pattern).map_err(|e| {
                ApiError::bad_request(format!("filters.{name}: invalid pattern: {e}"))
            })?;
            out.push((re, field));
        }
        Ok(out)
    }
}

/// `POST /v1/events/watch`: bianque's live stream filtered and formatted as HuaTuo's.
async fn watch(
    State(app): State<Arc<AppState>>,
    conn: Option<axum::extract::Extension<super::listen::ConnHandle>>,
    body: Result<axum::Json<WatchRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let axum::Json(req) = body.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filters = req.filters.compile()?;
    let matches = move |r: &Record| filters.iter().all(|(re, field)| re.is_match(field(r)));
    super::watch::live_stream(&app, conn.map(|c| c.0), matches, watch_event).map_err(|e| {
        if e.status == StatusCode::TOO_MANY_REQUESTS {
            ApiError::new(e.status, "rate_limited", e.message)
        } else {
            e
        }
    })
}

/// HuaTuo's CloudEvent for a record (no `tracer_data`, as HuaTuo's).
fn watch_event(p: &Published) -> String {
    let r = &p.record;
    let name = doc::tracer_name(&r.tracer_name, &r.tracer_data);
    let mut data = serde_json::json!({
        "hostname": r.hostname,
        "region": r.region,
        "observed_timestamp": doc::format_time(r.time_ns),
        "tracer_name": name,
        "tracer_id": r.tracer_id,
        "tracer_run_type": match r.tracer_type {
            TracerType::Event => "event",
            TracerType::Autotracing => "autotracing",
            TracerType::Incident => "incident",
        },
    });
    if let (Some(c), Some(obj)) = (&r.container, data.as_object_mut()) {
        let kind = if c.kind == "daemonset" {
            "daemonSet"
        } else {
            &c.kind
        };
        obj.insert("container_id".into(), c.id.clone().into());
        for (k, v) in [
            ("container_hostname", c.hostname.as_str()),
            ("container_host_namespace", &c.host_namespace),
            ("container_type", kind),
            ("container_qos", &c.qos),
        ] {
            if !v.is_empty() {
                obj.insert(k.into(), v.into());
            }
        }
    }
    serde_json::json!({
        "specversion": "1.0",
        "id": r.tracer_id,
        "source": format!("/huatuo/{}/{}", r.hostname, name),
        "type": "tech.huatuo.kernel.event",
        "datacontenttype": "application/json",
        "time": crate::record::format_time_ns(r.time_ns),
        "data": data,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ContainerFields;

    fn record(name: &str, data: serde_json::Value) -> Record {
        Record::new(
            name,
            TracerType::Event,
            1_700_000_000_000_000_000,
            "node-1",
            "eu",
            Some(ContainerFields {
                id: "c1".into(),
                hostname: "pod-a".into(),
                host_namespace: "prod".into(),
                kind: "daemonset".into(),
                qos: "burstable".into(),
                ..Default::default()
            }),
            data,
        )
    }

    #[test]
    fn filters_are_regexes_on_huatuo_fields() {
        let tick = record("softirq", serde_json::json!({"event": "tick_gap"}));
        let run = |f: WatchFilters| {
            let Ok(c) = f.compile() else {
                panic!("the filters compile")
            };
            c.iter().all(|(re, field)| re.is_match(field(&tick)))
        };
        assert!(run(WatchFilters::default()));
        assert!(run(WatchFilters {
            tracer_name: "^sched_tick$".into(),
            ..Default::default()
        }));
        assert!(!run(WatchFilters {
            tracer_name: "^softirq$".into(),
            ..Default::default()
        }));
        assert!(run(WatchFilters {
            hostname: "node".into(),
            region: "^eu$".into(),
            container_host_namespace: "pro".into(),
            container_qos: "burst".into(),
            container_hostname: "pod-.".into(),
            ..Default::default()
        }));
        assert!(!run(WatchFilters {
            region: "^us$".into(),
            ..Default::default()
        }));
        let bad = WatchFilters {
            hostname: "(".into(),
            ..Default::default()
        };
        let err = bad.compile().err().unwrap();
        assert_eq!(err.status, StatusCode::BAD_REQUEST);
        assert!(err.message.contains("filters.hostname"), "{}", err.message);
    }

    #[test]
    fn watch_event_is_huatuos_cloudevent() {
        let r = record("netrecvlat", serde_json::json!({"latency_ns": 1}));
        let body = serde_json::to_string(&r).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&watch_event(&Published { record: r, body })).unwrap();
        assert_eq!(v["type"], "tech.huatuo.kernel.event");
        assert_eq!(v["source"], "/huatuo/node-1/net_rx_latency");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(v["data"]["tracer_name"], "net_rx_latency");
        assert_eq!(v["data"]["tracer_run_type"], "event");
        assert_eq!(v["data"]["container_type"], "daemonSet");
        assert_eq!(v["data"]["container_hostname"], "pod-a");
        assert!(v["data"].get("tracer_data").is_none());
    }
}
