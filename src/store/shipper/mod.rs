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

pub mod config;

use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use base64::prelude::{Engine as _, BASE64_STANDARD};
use chrono::format::{Item, StrftimeItems};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Deserialize;

use crate::http::err_text;
use crate::record::now_ns;
pub use config::ElasticsearchConfig;

/// The row name in `shipper_state`.
const CURSOR_NAME: &str = "elasticsearch";
/// `shipper_failures` keeps this many most recent rows.
const FAILURES_KEPT: i64 = 10_000;
/// How often an idle shipper looks for new records.
const POLL: Duration = Duration::from_millis(100);

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
    /// The last error, empty once shipping works again.
    pub last_error: Mutex<String>,
}

impl ShipperStats {
    fn set_error(&self, e: &str) {
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

fn seed() -> u64 {
    (now_ns() as u64) ^ (u64::from(std::process::id()) << 32) | 1
}

/// The index name pattern, parsed once; strftime on the record's time (UTC).
pub struct IndexName {
    items: Vec<Item<'static>>,
    fixed: Option<String>,
}

impl IndexName {
    /// `pattern` was checked by the config (no invalid escape).
    pub fn new(pattern: &str) -> IndexName {
        let items: Vec<Item<'static>> = StrftimeItems::new(pattern).map(|i| i.to_owned()).collect();
        let fixed = (!pattern.contains('%')).then(|| pattern.to_string());
        IndexName { items, fixed }
    }

    pub fn for_time(&self, time_ns: i64) -> String {
        if let Some(f) = &self.fixed {
            return f.clone();
        }
        let t = chrono::DateTime::from_timestamp(
            time_ns.div_euclid(1_000_000_000),
            time_ns.rem_euclid(1_000_000_000) as u32,
        )
        .unwrap_or_default();
        use std::fmt::Write;
        let mut s = String::new();
        // An invalid escape would make Display fail; the config rejects those.
        let _ = write!(s, "{}", t.format_with_items(self.items.iter()));
        s
    }
}

/// The template's `index_patterns` for an index name pattern: its fixed part then `*`.
pub fn template_patterns(index: &str) -> String {
    match index.find('%') {
        Some(at) => format!("{}*", &index[..at]),
        None => index.to_string(),
    }
}

/// The template's name, derived from the index pattern's fixed part.
pub fn template_name(index: &str) -> String {
    let fixed = index.split('%').next().unwrap_or("");
    let fixed = fixed.trim_end_matches(['-', '_', '.']);
    if fixed == "bianque" || fixed.is_empty() {
        "bianque".into()
    } else {
        format!("bianque-{fixed}")
    }
}

/// The composable index template: the record's fields with their types.
pub fn index_template(index: &str) -> serde_json::Value {
    let kw = serde_json::json!({"type": "keyword"});
    serde_json::json!({
        "index_patterns": [template_patterns(index)],
        "priority": 200,
        "_meta": {"managed_by": "bianque", "version": env!("CARGO_PKG_VERSION")},
        "template": {
            "mappings": {
                "dynamic_templates": [
                    {"tracer_data_ns": {"path_match": "tracer_data.*_ns", "mapping": {"type": "long"}}},
                    {"tracer_data_bytes": {"path_match": "tracer_data.*_bytes", "mapping": {"type": "long"}}},
                    {"tracer_data_percent": {"path_match": "tracer_data.*_percent", "mapping": {"type": "double"}}},
                    {"tracer_data_pid": {"path_match": "tracer_data.*pid", "mapping": {"type": "long"}}},
                    {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}}
                ],
                "properties": {
                    "tracer_id": kw,
                    "tracer_name": kw,
                    "tracer_type": kw,
                    "tracer_time": {"type": "date"},
                    "hostname": kw,
                    "region": kw,
                    "container_id": kw,
                    "container_name": kw,
                    "container_hostname": kw,
                    "container_host_namespace": kw,
                    "container_type": kw,
                    "container_qos": kw,
                    "tracer_data": {"type": "object", "dynamic": true}
                }
            }
        }
    })
}

/// The shipper's own connection to the store.
struct ShipDb {
    conn: Connection,
}

/// One stored record on its way out.
struct Doc {
    seq: i64,
    id: String,
    time_ns: i64,
    body: String,
}

/// A record the server refused for good.
struct Refused {
    seq: i64,
    id: String,
    index: String,
    status: u16,
    error_type: String,
    reason: String,
}

impl ShipDb {
    fn cursor(&self) -> rusqlite::Result<i64> {
        Ok(self
            .conn
            .query_row(
                "SELECT cursor FROM shipper_state WHERE name = ?",
                [CURSOR_NAME],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0))
    }

    /// `(min seq, max seq)` of the records stored, `(0, 0)` when empty.
    fn seq_range(&self) -> rusqlite::Result<(i64, i64)> {
        // Two subqueries: SQLite answers a lone MIN or MAX from the index end, but a query
        // with both scans the whole table.
        self.conn.query_row(
            "SELECT COALESCE((SELECT MIN(seq) FROM records), 0), COALESCE((SELECT MAX(seq) FROM records), 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Records after `cursor`, oldest first, up to `max_records` and about `max_bytes`.
    fn page(&self, cursor: i64, max_records: usize, max_bytes: u64) -> rusqlite::Result<Vec<Doc>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, id, time_ns, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?",
        )?;
        let mut rows = stmt.query(params![cursor, max_records as i64])?;
        let mut docs = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = rows.next()? {
            let doc = Doc {
                seq: r.get(0)?,
                id: r.get(1)?,
                time_ns: r.get(2)?,
                body: r.get(3)?,
            };
            bytes += doc.body.len() as u64 + doc.id.len() as u64 + 64;
            docs.push(doc);
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(docs)
    }

    /// Moves the cursor and records the refused records, in one transaction.
    fn commit(&mut self, cursor: i64, refused: &[Refused]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        if !refused.is_empty() {
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO shipper_failures (time_ns, seq, record_id, idx, status, error_type, reason) VALUES (?, ?, ?, ?, ?, ?, ?)",
                )?;
                let now = now_ns();
                for f in refused {
                    stmt.execute(params![
                        now,
                        f.seq,
                        f.id,
                        f.index,
                        f.status,
                        f.error_type,
                        f.reason
                    ])?;
                }
            }
            tx.execute(
                "DELETE FROM shipper_failures WHERE id <= (SELECT MAX(id) FROM shipper_failures) - ?",
                [FAILURES_KEPT],
            )?;
        }
        tx.execute(
            "INSERT INTO shipper_state (name, cursor, updated_ns) VALUES (?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET cursor = excluded.cursor, updated_ns = excluded.updated_ns",
            params![CURSOR_NAME, cursor, now_ns()],
        )?;
        tx.commit()
    }
}

#[derive(Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    items: Vec<std::collections::HashMap<String, BulkItem>>,
}

#[derive(Deserialize)]
struct BulkItem {
    #[serde(default)]
    status: u16,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// How one item of a `_bulk` answer came out.
#[derive(Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    Ok,
    Retry,
    Refused {
        status: u16,
        error_type: String,
        reason: String,
    },
}

/// Per-item outcomes of a `_bulk` answer with `n` actions; None when the answer does not
/// describe exactly `n` items (then the whole request is retried).
pub fn parse_bulk_response(body: &[u8], n: usize) -> Option<Vec<ItemOutcome>> {
    let resp: BulkResponse = serde_json::from_slice(body).ok()?;
    if !resp.errors && resp.items.is_empty() {
        return Some((0..n).map(|_| ItemOutcome::Ok).collect());
    }
    if resp.items.len() != n {
        return None;
    }
    Some(
        resp.items
            .into_iter()
            .map(|m| {
                let Some(item) = m.into_values().next() else {
                    return ItemOutcome::Retry;
                };
                match item.status {
                    200..=299 => ItemOutcome::Ok,
                    429 | 500..=599 => ItemOutcome::Retry,
                    status => {
                        let err = item.error.unwrap_or_default();
                        let text = |k: &str| {
                            err.get(k)
                                .and_then(|v| v.as_str())
                                .unwrap_or_default()
                                .to_string()
                        };
                        let mut reason = text("reason");
                        if let Some(cause) = err
                            .get("caused_by")
                            .and_then(|c| c.get("reason"))
                            .and_then(|r| r.as_str())
                        {
                            reason = format!("{reason}: {cause}");
                        }
                        if reason.is_empty() {
                            reason = err.to_string();
                        }
                        ItemOutcome::Refused {
                            status,
                            error_type: text("type"),
                            reason,
                        }
                    }
                }
            })
            .collect(),
    )
}

/// Why a whole `_bulk` request did not get per-item answers.
enum SendError {
    /// Try again later (connection error, timeout, 429, 5xx, or a 4xx that a fix on the
    /// server side may cure: auth, missing permissions).
    Retry(String),
    /// 413: the body is too large for the server.
    TooLarge,
    /// Shutting down.
    Stopped,
}

struct Worker {
    cfg: ElasticsearchConfig,
    index: IndexName,
    client: reqwest::Client,
    db: ShipDb,
    stats: Arc<ShipperStats>,
    stop: tokio::sync::watch::Receiver<bool>,
    /// The address in use; moves on to the next one after a failure.
    address: usize,
    failures_in_a_row: u32,
    rng: u64,
}

impl Worker {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d`, or less when asked to stop; false when stopping.
    async fn sleep(&mut self, d: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.stop.changed() => {}
        }
        !self.stopping()
    }

    /// Capped exponential back-off with jitter: half the step fixed, half random.
    fn backoff(&mut self) -> Duration {
        let exp = self.failures_in_a_row.min(20);
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let step = self
            .cfg
            .retry_initial_backoff_ms
            .saturating_mul(1u64 << exp)
            .min(self.cfg.retry_max_backoff_ms);
        // xorshift64
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let half = step / 2;
        Duration::from_millis(half + self.rng % (step - half + 1))
    }

    fn failed(&mut self, what: &str, err: &str) {
        if self.failures_in_a_row == 0 || self.failures_in_a_row.is_power_of_two() {
            tracing::warn!(
                address = %self.cfg.addresses[self.address],
                error = %err,
                attempts = self.failures_in_a_row + 1,
                "shipper: {what} failed; will retry"
            );
        }
        self.stats.set_error(err);
        self.refresh_backlog();
        // Fail over to the next address.
        self.address = (self.address + 1) % self.cfg.addresses.len();
    }

    /// Updates the backlog gauge while a batch waits for the server.
    fn refresh_backlog(&self) {
        if let Ok((_, max)) = self.db.seq_range() {
            let cursor = self.stats.cursor.load(Ordering::Relaxed);
            self.stats
                .backlog
                .store((max - cursor).max(0) as u64, Ordering::Relaxed);
        }
    }

    fn succeeded(&mut self) {
        if self.failures_in_a_row > 0 {
            tracing::info!(address = %self.cfg.addresses[self.address], "shipper: server reachable again");
        }
        self.failures_in_a_row = 0;
        self.stats.set_error("");
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}{path}",
            self.cfg.addresses[self.address].trim_end_matches('/')
        )
    }

    async fn run(&mut self) {
        if self.cfg.install_template && !self.install_template().await {
            return;
        }
        let mut first_pending: Option<Instant> = None;
        let flush = Duration::from_millis(self.cfg.flush_interval_ms);
        loop {
            if self.stopping() {
                break;
            }
            let cursor = self.stats.cursor.load(Ordering::Relaxed);
            let (min, max) = match self.db.seq_range() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "shipper: reading the store failed");
                    if !self.sleep(Duration::from_secs(1)).await {
                        break;
                    }
                    continue;
                }
            };
            let mut cursor = cursor;
            if min > cursor + 1 {
                // Retention deleted records before they were shipped.
                let lost = (min - 1 - cursor) as u64;
                if cursor > 0 {
                    self.stats.expired.fetch_add(lost, Ordering::Relaxed);
                    tracing::warn!(
                        records = lost,
                        "shipper: retention removed records that were not shipped yet"
                    );
                }
                cursor = min - 1;
                self.stats.cursor.store(cursor, Ordering::Relaxed);
            }
            let pending = (max - cursor).max(0) as u64;
            self.stats.backlog.store(pending, Ordering::Relaxed);
            if pending == 0 {
                first_pending = None;
                if !self.sleep(POLL).await {
                    break;
                }
                continue;
            }
            let since = *first_pending.get_or_insert_with(Instant::now);
            if pending < self.cfg.batch_max_records as u64 && since.elapsed() < flush {
                let wait = (flush - since.elapsed()).min(POLL);
                if !self.sleep(wait).await {
                    break;
                }
                continue;
            }
            let docs =
                match self
                    .db
                    .page(cursor, self.cfg.batch_max_records, self.cfg.batch_max_bytes)
                {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "shipper: reading the store failed");
                        if !self.sleep(Duration::from_secs(1)).await {
                            break;
                        }
                        continue;
                    }
                };
            let Some(last_seq) = docs.last().map(|d| d.seq) else {
                // Deleted between the two reads; look again.
                continue;
            };
            let refused = match self.ship(&docs).await {
                Some(r) => r,
                None => break,
            };
            if let Err(e) = self.db.commit(last_seq, &refused) {
                // The batch is in the index; it is sent again (same _ids) after this.
                tracing::error!(error = %e, "shipper: saving the cursor failed");
                if !self.sleep(Duration::from_secs(1)).await {
                    break;
                }
                continue;
            }
            let refused_n = refused.len() as u64;
            self.stats
                .shipped
                .fetch_add(docs.len() as u64 - refused_n, Ordering::Relaxed);
            self.stats.failed.fetch_add(refused_n, Ordering::Relaxed);
            self.stats.cursor.store(last_seq, Ordering::Relaxed);
            self.stats
                .backlog
                .store((max - last_seq).max(0) as u64, Ordering::Relaxed);
            for f in &refused {
                tracing::warn!(
                    tracer_id = %f.id,
                    index = %f.index,
                    status = f.status,
                    error_type = %f.error_type,
                    reason = %f.reason,
                    "shipper: the server refused a record"
                );
            }
            // What is left of a backlog goes at once; new records wait for a full batch or
            // the flush interval.
            first_pending = (max > last_seq).then(|| Instant::now() - flush);
        }
        tracing::debug!("shipper stopped");
    }

    /// Installs the index template, retrying while the server is unreachable. False when
    /// stopping.
    async fn install_template(&mut self) -> bool {
        let name = template_name(&self.cfg.index);
        let body = index_template(&self.cfg.index).to_string();
        loop {
            if self.stopping() {
                return false;
            }
            let url = self.url(&format!("/_index_template/{name}"));
            let res = self
                .client
                .put(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            match res {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(template = %name, "shipper: index template installed");
                    self.succeeded();
                    return true;
                }
                Ok(r) if retryable_status(r.status().as_u16()) => {
                    let msg = format!("installing the index template: HTTP {}", r.status());
                    self.failed("installing the index template", &msg);
                }
                Ok(r) => {
                    // Refused for good (an old server, no permission): ship without it.
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    tracing::error!(
                        template = %name,
                        %status,
                        answer = %truncate(&text, 500),
                        "shipper: the index template was refused; shipping without it"
                    );
                    self.stats
                        .set_error(&format!("index template refused: HTTP {status}"));
                    return true;
                }
                Err(e) => {
                    let msg = err_text(e);
                    self.failed("installing the index template", &msg);
                }
            }
            let d = self.backoff();
            if !self.sleep(d).await {
                return false;
            }
        }
    }

    /// Ships `docs` until each is in the index or refused for good; returns the refused ones,
    /// or None when stopping.
    async fn ship(&mut self, docs: &[Doc]) -> Option<Vec<Refused>> {
        let indices: Vec<String> = docs
            .iter()
            .map(|d| self.index.for_time(d.time_ns))
            .collect();
        let mut refused = Vec::new();
        let mut pending: Vec<usize> = (0..docs.len()).collect();
        // Halved on 413 (body too large for the server).
        let mut chunk = docs.len().max(1);
        while !pending.is_empty() {
            let take = chunk.min(pending.len());
            let part: Vec<usize> = pending[..take].to_vec();
            let body = bulk_body(part.iter().map(|&i| (&indices[i], &docs[i])));
            match self.send_bulk(body, part.len()).await {
                Ok(outcomes) => {
                    self.succeeded();
                    let mut retry = Vec::new();
                    for (&i, outcome) in part.iter().zip(outcomes) {
                        match outcome {
                            ItemOutcome::Ok => {}
                            ItemOutcome::Retry => retry.push(i),
                            ItemOutcome::Refused {
                                status,
                                error_type,
                                reason,
                            } => refused.push(Refused {
                                seq: docs[i].seq,
                                id: docs[i].id.clone(),
                                index: indices[i].clone(),
                                status,
                                error_type,
                                reason,
                            }),
                        }
                    }
                    pending.drain(..take);
                    if !retry.is_empty() {
                        self.stats
                            .retried
                            .fetch_add(retry.len() as u64, Ordering::Relaxed);
                        let msg = format!("{} records got a retryable per-item error", retry.len());
                        self.failed("part of a bulk request", &msg);
                        let d = self.backoff();
                        if !self.sleep(d).await {
                            return None;
                        }
                        // Retried records go first, keeping the order.
                        retry.append(&mut pending);
                        pending = retry;
                    }
                }
                Err(SendError::TooLarge) if take > 1 => {
                    chunk = take / 2;
                    tracing::warn!(
                        records = chunk,
                        "shipper: 413 from the server; smaller requests"
                    );
                }
                Err(SendError::TooLarge) => {
                    let i = part[0];
                    refused.push(Refused {
                        seq: docs[i].seq,
                        id: docs[i].id.clone(),
                        index: indices[i].clone(),
                        status: 413,
                        error_type: "request_entity_too_large".into(),
                        reason: format!(
                            "a single record of {} bytes is too large for the server",
                            docs[i].body.len()
                        ),
                    });
                    pending.drain(..1);
                }
                Err(SendError::Retry(msg)) => {
                    self.stats
                        .retried
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    self.failed("a bulk request", &msg);
                    let d = self.backoff();
                    if !self.sleep(d).await {
                        return None;
                    }
                }
                Err(SendError::Stopped) => return None,
            }
        }
        Some(refused)
    }

    async fn send_bulk(&mut self, body: Vec<u8>, n: usize) -> Result<Vec<ItemOutcome>, SendError> {
        let body = if self.cfg.gzip {
            gzip(&body).map_err(|e| SendError::Retry(format!("gzip: {e}")))?
        } else {
            body
        };
        let mut req = self
            .client
            .post(self.url("/_bulk"))
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson");
        if self.cfg.gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        let send = req.body(body).send();
        let mut stop = self.stop.clone();
        let res = tokio::select! {
            r = send => r,
            _ = stop.changed() => return Err(SendError::Stopped),
        };
        let resp = res.map_err(|e| SendError::Retry(err_text(e)))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SendError::Retry(err_text(e)))?;
        match status {
            200..=299 => parse_bulk_response(&bytes, n).ok_or_else(|| {
                SendError::Retry(format!(
                    "an answer that does not describe {n} items: {}",
                    truncate(&String::from_utf8_lossy(&bytes), 300)
                ))
            }),
            413 => Err(SendError::TooLarge),
            _ => {
                let text = String::from_utf8_lossy(&bytes);
                if !retryable_status(status) {
                    tracing::error!(
                        status,
                        answer = %truncate(&text, 500),
                        "shipper: the server refused a whole bulk request; the records stay in the store and are retried"
                    );
                }
                Err(SendError::Retry(format!(
                    "HTTP {status}: {}",
                    truncate(&text, 300)
                )))
            }
        }
    }
}

fn retryable_status(status: u16) -> bool {
    status == 429 || (500..=599).contains(&status)
}

/// NDJSON `_bulk` body: an `index` action with `_index` and `_id` per record, then the record.
fn bulk_body<'a>(docs: impl Iterator<Item = (&'a String, &'a Doc)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (index, d) in docs {
        let action = serde_json::json!({"index": {"_index": index, "_id": d.id}});
        // Serializing a json! value of strings cannot fail.
        let _ = serde_json::to_writer(&mut out, &action);
        out.push(b'\n');
        out.extend_from_slice(d.body.as_bytes());
        out.push(b'\n');
    }
    out
}

fn gzip(data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(data.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    enc.write_all(data)?;
    enc.finish()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_follow_the_record_time() {
        let t = 1_700_000_000_123_456_789; // 2023-11-14T22:13:20Z
        assert_eq!(
            IndexName::new("bianque-%Y.%m.%d").for_time(t),
            "bianque-2023.11.14"
        );
        assert_eq!(IndexName::new("huatuo_bamai").for_time(t), "huatuo_bamai");
        assert_eq!(template_patterns("bianque-%Y.%m.%d"), "bianque-*");
        assert_eq!(template_patterns("huatuo_bamai"), "huatuo_bamai");
        assert_eq!(template_name("bianque-%Y.%m.%d"), "bianque");
        assert_eq!(template_name("huatuo_bamai"), "bianque-huatuo_bamai");
        let tpl = index_template("bianque-%Y.%m.%d");
        assert_eq!(tpl["index_patterns"][0], "bianque-*");
        assert_eq!(
            tpl["template"]["mappings"]["properties"]["tracer_time"]["type"],
            "date"
        );
    }

    #[test]
    fn bulk_answers_are_parsed_per_item() {
        let ok = br#"{"took":1,"errors":false,"items":[{"index":{"status":201}},{"index":{"status":200}}]}"#;
        assert_eq!(
            parse_bulk_response(ok, 2),
            Some(vec![ItemOutcome::Ok, ItemOutcome::Ok])
        );
        let mixed = br#"{"errors":true,"items":[
            {"index":{"_id":"a","status":201}},
            {"index":{"_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"queue full"}}},
            {"index":{"_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [x] of type [long]","caused_by":{"type":"illegal_argument_exception","reason":"For input string: \"lots\""}}}},
            {"index":{"_id":"d","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}}
        ]}"#;
        let out = parse_bulk_response(mixed, 4).unwrap();
        assert_eq!(out[0], ItemOutcome::Ok);
        assert_eq!(out[1], ItemOutcome::Retry);
        assert_eq!(out[3], ItemOutcome::Retry);
        match &out[2] {
            ItemOutcome::Refused {
                status,
                error_type,
                reason,
            } => {
                assert_eq!(*status, 400);
                assert_eq!(error_type, "mapper_parsing_exception");
                assert!(
                    reason.contains("of type [long]") && reason.contains("lots"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        // A count mismatch or garbage means the whole request is retried.
        assert_eq!(parse_bulk_response(mixed, 3), None);
        assert_eq!(parse_bulk_response(b"<html>", 1), None);
    }

    #[test]
    fn bulk_body_is_ndjson_with_ids() {
        let docs = [
            Doc {
                seq: 1,
                id: "aa".into(),
                time_ns: 0,
                body: "{\"x\":1}".into(),
            },
            Doc {
                seq: 2,
                id: "bb".into(),
                time_ns: 0,
                body: "{\"x\":2}".into(),
            },
        ];
        let idx = "i".to_string();
        let body = String::from_utf8(bulk_body(docs.iter().map(|d| (&idx, d)))).unwrap();
        assert_eq!(
            body,
            "{\"index\":{\"_index\":\"i\",\"_id\":\"aa\"}}\n{\"x\":1}\n{\"index\":{\"_index\":\"i\",\"_id\":\"bb\"}}\n{\"x\":2}\n"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = ElasticsearchConfig {
            addresses: vec!["http://127.0.0.1:1".into()],
            retry_initial_backoff_ms: 100,
            retry_max_backoff_ms: 1000,
            ..Default::default()
        };
        let conn = Connection::open_in_memory().unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let mut w = Worker {
            index: IndexName::new(&cfg.index),
            client: reqwest::Client::new(),
            cfg,
            db: ShipDb { conn },
            stats: Arc::default(),
            stop: rx,
            address: 0,
            failures_in_a_row: 0,
            rng: seed(),
        };
        let d: Vec<u64> = (0..8).map(|_| w.backoff().as_millis() as u64).collect();
        assert!((50..=100).contains(&d[0]), "{d:?}");
        assert!((100..=200).contains(&d[1]), "{d:?}");
        for x in &d[4..] {
            assert!((500..=1000).contains(x), "capped: {d:?}");
        }
    }

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
