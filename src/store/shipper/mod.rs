//! The Elasticsearch/OpenSearch shipper: reads records from the local store in `seq` order and
//! sends them with `_bulk`, remembering in the store (`shipper_state`) how far it got.
//!
//! - At least once, never twice in the index: each document's `_id` is the record's
//!   `tracer_id` and the action is `index`, so a resend (after a crash between the `_bulk` answer
//!   and the cursor write) overwrites the same document.
//! - The cursor moves past a batch only once every record in it is either in the index or
//!   recorded in `shipper_failures` with the server's reason (a permanent per-item error such as
//!   a mapping conflict). 429 and 5xx answers, per-item or for the whole request, and
//!   connection errors are retried with capped exponential back-off and jitter, forever: the
//!   store keeps the records meanwhile, and `backlog` shows how many wait.
//! - Several addresses: a failing one hands over to the next.
//! - Memory stays bounded whatever the backlog: one batch (`batch_max_records`,
//!   `batch_max_bytes`) is read at a time.
//!
//! It runs on its own thread with a single-threaded async runtime, so that shipping never
//! competes with the HTTP server, and its SQLite reads and writes use their own connection.

mod bulk;
pub mod config;
mod db;
mod document;
mod index;
mod worker;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use base64::prelude::{Engine as _, BASE64_STANDARD};
use rusqlite::Connection;

use crate::record::now_ns;
pub use bulk::{parse_bulk_response, ItemOutcome};
pub use config::ElasticsearchConfig;
pub use index::{index_template, template_name, template_patterns, IndexName};

use db::ShipDb;
use worker::Worker;

/// Counters and gauges exported in `/metrics` and `GET /shipper`.
#[derive(Debug, Default)]
pub struct ShipperStats {
    /// Records the server accepted.
    pub shipped: AtomicU64,
    /// Records sent again after a retryable error (per item or for the whole request).
    pub retried: AtomicU64,
    /// Records the server refused for good (recorded in `shipper_failures`).
    pub failed: AtomicU64,
    /// Records in the store not yet shipped.
    pub backlog: AtomicU64,
    /// The `seq` of the last record handled.
    pub cursor: AtomicI64,
    /// Records that retention deleted before they could be shipped.
    pub expired: AtomicU64,
    /// 2xx answers to `_bulk` that were not bulk answers (no `items`, wrong count, no status).
    pub malformed: AtomicU64,
    /// The last error, empty once shipping works again.
    pub last_error: Mutex<String>,
}

impl ShipperStats {
    pub(super) fn set_error(&self, e: &str) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A running shipper; [`Shipper::stop`] (or drop) ends it.
pub struct Shipper {
    stats: Arc<ShipperStats>,
    stop: tokio::sync::watch::Sender<bool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Shipper {
    /// Starts shipping the store at `db_path` (a store opened by [`crate::store::Store::open`]).
    /// Fails only on local problems (an unreadable CA file, the store); an unreachable server
    /// is retried in the background.
    pub fn start(cfg: &ElasticsearchConfig, db_path: &Path) -> Result<Shipper> {
        let client = build_client(cfg)?;
        let conn = Connection::open(db_path)
            .with_context(|| format!("shipper: cannot open store {}", db_path.display()))?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.execute_batch("PRAGMA cache_size = -1024;")?;
        let db = ShipDb { conn };
        let cursor = db.cursor().context("shipper: reading the cursor")?;
        let stats = Arc::new(ShipperStats::default());
        stats.cursor.store(cursor, Ordering::Relaxed);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let mut worker = Worker {
            cfg: cfg.clone(),
            index: IndexName::new(&cfg.index),
            client,
            db,
            stats: stats.clone(),
            stop: stop_rx,
            address: 0,
            failures_in_a_row: 0,
            rng: seed(),
        };
        let thread = std::thread::Builder::new()
            .name("es-shipper".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "shipper: cannot start its runtime");
                        return;
                    }
                };
                rt.block_on(worker.run());
            })
            .context("cannot start the shipper thread")?;
        tracing::info!(
            addresses = ?cfg.addresses,
            index = %cfg.index,
            cursor,
            "elasticsearch shipper started"
        );
        Ok(Shipper {
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    pub fn stats(&self) -> &Arc<ShipperStats> {
        &self.stats
    }

    /// Asks the shipper to stop; an unanswered request is abandoned (the batch is sent again
    /// on the next start, with the same `_id`s).
    pub fn request_stop(&self) {
        let _ = self.stop.send(true);
    }

    /// Stops and waits up to `timeout` for the thread to end.
    pub fn stop(&self, timeout: Duration) {
        self.request_stop();
        let handle = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let end = Instant::now() + timeout;
            while !h.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if h.is_finished() {
                let _ = h.join();
            } else {
                tracing::warn!("shipper did not stop in time; leaving it");
            }
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

fn build_client(cfg: &ElasticsearchConfig) -> Result<reqwest::Client> {
    use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION};
    let mut headers = HeaderMap::new();
    if let Some(key) = &cfg.api_key {
        let mut v = HeaderValue::from_str(&format!("ApiKey {key}"))
            .map_err(|_| anyhow!("storage.elasticsearch.api_key: not a valid header value"))?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    if let Some(user) = &cfg.username {
        use std::io::Write;
        let mut raw = Vec::new();
        let _ = write!(raw, "{user}:{}", cfg.password.as_deref().unwrap_or(""));
        let mut v = HeaderValue::from_str(&format!("Basic {}", BASE64_STANDARD.encode(&raw)))
            .map_err(|_| anyhow!("storage.elasticsearch.username: not a valid header value"))?;
        v.set_sensitive(true);
        headers.insert(AUTHORIZATION, v);
    }
    let mut builder = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms))
        .timeout(Duration::from_millis(cfg.request_timeout_ms))
        .pool_max_idle_per_host(2)
        .user_agent(concat!("bianque/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &cfg.ca_file {
        let certs = crate::http::ca_bundle("storage.elasticsearch.ca_file", path)?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    builder.build().context("shipper: building the HTTP client")
}

pub(super) fn seed() -> u64 {
    (now_ns() as u64) ^ (u64::from(std::process::id()) << 32) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_ca_file_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("bianque-ca-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for path in [garbage, dir.join("missing.pem")] {
            let cfg = ElasticsearchConfig {
                addresses: vec!["https://127.0.0.1:1".into()],
                ca_file: Some(path.clone()),
                ..Default::default()
            };
            let err = format!("{:#}", build_client(&cfg).unwrap_err());
            assert!(err.contains("storage.elasticsearch.ca_file"), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
