//! `GET /v1/events/watch`: the live stream. Server-sent events, one CloudEvents 1.0 JSON
//! document per record (the record, `tracer_data` included, is the event's `data`).
//!
//! The store's writer hands each committed record to a broadcast ring (nothing is kept when no
//! one watches). Per client, a small task takes records from the ring, filters them, formats
//! the CloudEvent and puts it in the client's bounded queue. A client that falls behind — its
//! queue stays full for a second, or it lagged past the ring — is told with an `event: dropped` message (once
//! it reads again) and its stream ends: it never blocks the writer and never grows memory past
//! its queue. The number of clients is capped (429 beyond).

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};

use super::listen::ConnHandle;
use super::{ApiError, AppState};
use crate::record::{Record, TracerType};
use crate::store::Published;

/// Limits of the live stream (`[server]` `stream_*` keys).
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub max_clients: usize,
    /// Events queued per client before it counts as too slow.
    pub client_buffer: usize,
    pub keepalive: Duration,
}

/// Live-stream gauges and counters.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub clients: AtomicUsize,
    /// Clients ever connected (the stream's metrics appear once this is non-zero).
    pub connected_total: AtomicU64,
    pub sent_total: AtomicU64,
    pub dropped_clients_total: AtomicU64,
    pub rejected_total: AtomicU64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    tracer: Option<String>,
    /// Container id or id prefix.
    container: Option<String>,
    /// `container_host_namespace` (the Kubernetes namespace).
    namespace: Option<String>,
}

impl WatchParams {
    fn matches(&self, r: &Record) -> bool {
        if let Some(t) = &self.tracer {
            if &r.tracer_name != t {
                return false;
            }
        }
        if let Some(c) = &self.container {
            if r.container.as_ref().is_none_or(|x| !x.id.starts_with(c)) {
                return false;
            }
        }
        if let Some(ns) = &self.namespace {
            if r.container.as_ref().is_none_or(|x| &x.host_namespace != ns) {
                return false;
            }
        }
        true
    }
}

/// The CloudEvents 1.0 JSON (structured mode) of a stored record.
pub fn cloudevent(p: &Published) -> String {
    let r = &p.record;
    let kind = match r.tracer_type {
        TracerType::Event => "event",
        TracerType::Autotracing => "autotracing",
        TracerType::Incident => "incident",
    };
    let mut head = serde_json::json!({
        "specversion": "1.0",
        "id": r.tracer_id,
        "source": format!("bianque://{}/{}", r.hostname, r.tracer_name),
        "type": format!("io.bianque.{kind}.{}", r.tracer_name),
        "time": r.tracer_time,
        "datacontenttype": "application/json",
    });
    if let (Some(c), Some(obj)) = (&r.container, head.as_object_mut()) {
        obj.insert("subject".into(), c.id.clone().into());
    }
    // Splice the stored body in as `data` without re-serializing the record.
    let mut s = head.to_string();
    s.pop(); // the closing brace
    s.push_str(",\"data\":");
    s.push_str(&p.body);
    s.push('}');
    s
}

/// One queued event: its id and its CloudEvent JSON.
struct Item {
    id: String,
    json: String,
}

/// Releases the client's slot when its connection (or, without one, its stream) ends.
struct Slot(Arc<StreamStats>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How long a client's queue may stay full before the client counts as too slow: a reader
/// that keeps up empties it far sooner, even while a whole store batch arrives (the shared
/// ring buffers the burst meanwhile).
const FULL_QUEUE_GRACE: Duration = Duration::from_secs(1);

pub async fn watch(
    State(app): State<Arc<AppState>>,
    conn: Option<Extension<ConnHandle>>,
    params: Result<Query<WatchParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::bad_request(e.body_text()))?;
    live_stream(
        &app,
        conn.map(|Extension(c)| c),
        move |r| params.matches(r),
        cloudevent,
    )
}

/// The live stream of the records `matches` keeps, each sent as `format` makes it; shared by
/// this route and HuaTuo's (`server::huatuo`).
pub(super) fn live_stream(
    app: &AppState,
    conn: Option<ConnHandle>,
    matches: impl Fn(&Record) -> bool + Send + 'static,
    format: fn(&Published) -> String,
) -> Result<Response, ApiError> {
    let stats = app.stream.clone();
    let limits = app.stream_limits;
    // Take a slot, or 429.
    let taken = stats
        .clients
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limits.max_clients).then_some(n + 1)
        });
    if taken.is_err() {
        stats.rejected_total.fetch_add(1, Ordering::Relaxed);
        // The accept loop closes the connection of a 429: a refused client holds none.
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_clients",
            format!(
                "the live stream has its maximum of {} clients",
                limits.max_clients
            ),
        ));
    }
    stats.connected_total.fetch_add(1, Ordering::Relaxed);
    // The slot is the client's TCP connection: freed when that closes, not when the stream
    // ends (a dropped client that reads nothing keeps its connection until the write timeout
    // cuts it, and holds its slot until then).
    let slot = Slot(stats.clone());
    let slot = match &conn {
        Some(conn) => {
            conn.hold(slot);
            None
        }
        None => Some(slot),
    };
    let mut ring = app.store.subscribe();
    let (tx, rx) = mpsc::channel::<Item>(limits.client_buffer.max(1));
    // Why the client was dropped, told after what was queued before.
    let dropped: Arc<Mutex<Option<String>>> = Arc::default();
    let task_dropped = dropped.clone();
    let task_stats = stats.clone();
    tokio::spawn(async move {
        // Ends when the client goes away (the queue's receiver is dropped) or is dropped.
        let drop_client = |why: String| {
            task_stats
                .dropped_clients_total
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(reason = %why, "live stream: dropping a slow client");
            *task_dropped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
            // The connection closes after the notice, which frees the slot.
            if let Some(conn) = &conn {
                conn.close_when_done();
            }
        };
        loop {
            let got = tokio::select! {
                r = ring.recv() => r,
                _ = tx.closed() => return,
            };
            let p = match got {
                Ok(p) => p,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    drop_client(format!("the client fell {n} records behind"));
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !matches(&p.record) {
                continue;
            }
            let room = match tokio::time::timeout(FULL_QUEUE_GRACE, tx.reserve()).await {
                Ok(Ok(room)) => room,
                Ok(Err(_)) => return, // the client went away
                Err(_) => {
                    drop_client(format!(
                        "the client did not keep up: {} events waited unread for {} ms",
                        limits.client_buffer,
                        FULL_QUEUE_GRACE.as_millis()
                    ));
                    return;
                }
            };
            room.send(Item {
                id: p.record.tracer_id.clone(),
                json: format(&p),
            });
        }
    });
    let sent = stats.clone();
    let stream = futures_util::stream::unfold((rx, false), move |(mut rx, done)| {
        let sent = sent.clone();
        let dropped = dropped.clone();
        // Without a connection to hold it, the slot lives as long as the stream.
        let _slot = &slot;
        async move {
            if done {
                return None;
            }
            match rx.recv().await {
                Some(Item { id, json }) => {
                    sent.sent_total.fetch_add(1, Ordering::Relaxed);
                    Some((
                        Ok::<_, Infallible>(Event::default().id(id).data(json)),
                        (rx, false),
                    ))
                }
                // The task ended: the client is told why if it was dropped.
                None => {
                    let why = dropped.lock().unwrap_or_else(|e| e.into_inner()).take()?;
                    let body =
                        serde_json::json!({"error": {"code": "slow_client", "message": why}});
                    Some((
                        Ok(Event::default().event("dropped").data(body.to_string())),
                        (rx, true),
                    ))
                }
            }
        }
    });
    Ok(Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(limits.keepalive)
                .text("keep-alive"),
        )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ContainerFields;

    fn published(container: Option<ContainerFields>) -> Published {
        let record = Record::new(
            "dropwatch",
            TracerType::Event,
            1_700_000_000_000_000_000,
            "h1",
            "r1",
            container,
            serde_json::json!({"dport": 53}),
        );
        let body = serde_json::to_string(&record).unwrap();
        Published { record, body }
    }

    #[test]
    fn cloudevent_wraps_the_record() {
        let p = published(Some(ContainerFields {
            id: "abc123".into(),
            ..Default::default()
        }));
        let v: serde_json::Value = serde_json::from_str(&cloudevent(&p)).unwrap();
        assert_eq!(v["specversion"], "1.0");
        assert_eq!(v["id"], p.record.tracer_id.as_str());
        assert_eq!(v["type"], "io.bianque.event.dropwatch");
        assert_eq!(v["source"], "bianque://h1/dropwatch");
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000000Z");
        assert_eq!(v["subject"], "abc123");
        assert_eq!(v["data"]["tracer_data"]["dport"], 53);
        assert_eq!(v["data"]["container_id"], "abc123");
        let host = published(None);
        let v: serde_json::Value = serde_json::from_str(&cloudevent(&host)).unwrap();
        assert!(v.get("subject").is_none());
    }

    #[test]
    fn filters_by_tracer_container_prefix_and_namespace() {
        let params = |t: Option<&str>, c: Option<&str>, n: Option<&str>| WatchParams {
            tracer: t.map(String::from),
            container: c.map(String::from),
            namespace: n.map(String::from),
        };
        let in_pod = published(Some(ContainerFields {
            id: "abc123".into(),
            host_namespace: "prod".into(),
            ..Default::default()
        }));
        let host = published(None);
        assert!(params(None, None, None).matches(&host.record));
        assert!(params(Some("dropwatch"), None, None).matches(&host.record));
        assert!(!params(Some("oom"), None, None).matches(&host.record));
        assert!(params(None, Some("abc"), None).matches(&in_pod.record));
        assert!(!params(None, Some("abd"), None).matches(&in_pod.record));
        assert!(!params(None, Some("abc"), None).matches(&host.record));
        assert!(params(None, None, Some("prod")).matches(&in_pod.record));
        assert!(!params(None, None, Some("dev")).matches(&in_pod.record));
        assert!(!params(None, None, Some("prod")).matches(&host.record));
    }
}
