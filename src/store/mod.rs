//! The local store: SQLite in the data dir, the source of truth for records.
//!
//! Tracers hand records to [`Store::save`], which only queues them; one writer thread inserts
//! them in batched transactions and enforces retention in small chunks between batches, so a
//! burst never blocks a ring-buffer reader. Readers (HTTP, CLI) use their own connection; WAL
//! mode lets them read while the writer writes.

pub mod shipper;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::Deserialize;

use crate::config::{check_range, ConfigResult};

use crate::record::{format_time_ns, now_ns, Record};

pub const DB_FILE: &str = "bianque.db";
const BATCH_MAX: usize = 4096;
const RETENTION_CHUNK: i64 = 5000;
const RETENTION_EVERY: Duration = Duration::from_secs(30);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    time_ns INTEGER NOT NULL,
    tracer TEXT NOT NULL,
    container_id TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS records_time ON records(time_ns);
CREATE INDEX IF NOT EXISTS records_tracer_time ON records(tracer, time_ns);
CREATE INDEX IF NOT EXISTS records_container_time ON records(container_id, time_ns);
CREATE TABLE IF NOT EXISTS shipper_state (
    name TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shipper_failures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    record_id TEXT NOT NULL,
    idx TEXT NOT NULL,
    status INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    reason TEXT NOT NULL
);
";

/// Records on the live stream are kept in a ring of this many; a subscriber further behind is
/// told it lagged.
pub const FANOUT_CAPACITY: usize = 1024;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/bianque";

/// `[store]`: where the local store lives and how long it keeps records.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Records older than this are deleted.
    pub retention_max_age_hours: u64,
    /// The store is trimmed, oldest first, to stay under this size.
    pub retention_max_size_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            retention_max_age_hours: 7 * 24,
            retention_max_size_bytes: 1 << 30,
        }
    }
}

impl StoreConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        check_range(
            "store.retention_max_age_hours",
            self.retention_max_age_hours,
            1,
            24 * 3650,
        )?;
        check_range(
            "store.retention_max_size_bytes",
            self.retention_max_size_bytes,
            1 << 20,
            1 << 44,
        )
    }
}

/// A record as written, handed to live-stream subscribers after its transaction committed.
#[derive(Debug)]
pub struct Published {
    pub record: Record,
    /// The record's JSON, as stored.
    pub body: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub max_size_bytes: u64,
}

/// Counters the store exports in `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub queued: AtomicU64,
    pub written: AtomicU64,
    pub write_errors: AtomicU64,
    pub retention_deleted: AtomicU64,
    pub size_bytes: AtomicU64,
}

/// Filters for reading records back, newest first.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub tracer: Option<String>,
    pub container: Option<String>,
    pub since_ns: Option<i64>,
    pub until_ns: Option<i64>,
    /// `(path, value)`: `tracer_data.<path>` equals `value` (numbers and booleans compare by
    /// their JSON text, `true`/`false` too).
    pub data: Vec<(String, String)>,
    /// Resume after this point (a [`Page::next`] token).
    pub cursor: Option<String>,
    pub limit: usize,
}

/// One page of records, newest first, and the token for the next (older) page if there is one.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub rows: Vec<String>,
    pub next: Option<String>,
}

/// Why a [`Query`] got no page: the caller's mistake (a bad cursor or field path) or the store's.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("`{0}` is not a cursor from a previous page")]
    InvalidCursor(String),
    #[error("`{0}` is not a field path (letters, digits, _ and dots)")]
    InvalidField(String),
    #[error(transparent)]
    Storage(#[from] rusqlite::Error),
}

/// A page cursor: the `(time_ns, seq)` of the last record returned.
fn encode_cursor(time_ns: i64, seq: i64) -> String {
    format!("{time_ns:x}-{seq:x}")
}

fn decode_cursor(token: &str) -> Option<(i64, i64)> {
    let (t, s) = token.split_once('-')?;
    Some((
        i64::from_str_radix(t, 16).ok()?,
        i64::from_str_radix(s, 16).ok()?,
    ))
}

/// A `tracer_data` field path: letters, digits, `_`, dots between names.
pub fn valid_data_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|part| {
            !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// One recorded permanent shipping failure.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShipFailure {
    pub time: String,
    pub seq: i64,
    pub tracer_id: String,
    pub index: String,
    pub status: i64,
    pub error_type: String,
    pub reason: String,
}

pub struct Store {
    tx: Mutex<Option<Sender<Record>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    reader: Mutex<Connection>,
    stats: Arc<StoreStats>,
    path: PathBuf,
    fanout: tokio::sync::broadcast::Sender<Arc<Published>>,
}

impl Store {
    /// Creates the data dir and database if needed and starts the writer thread.
    pub fn open(data_dir: &Path, retention: Retention) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        let path = data_dir.join(DB_FILE);
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open store {}", path.display()))?;
        init_writer_connection(&conn)
            .with_context(|| format!("cannot write to store {}", path.display()))?;
        let reader = open_reader_connection(&path)?;
        let stats = Arc::new(StoreStats::default());
        let (tx, rx) = mpsc::channel();
        let writer_stats = stats.clone();
        let (fanout, _) = tokio::sync::broadcast::channel(FANOUT_CAPACITY);
        let writer_fanout = fanout.clone();
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                Writer {
                    conn,
                    stats: writer_stats,
                    retention,
                    last_retention: None,
                    fanout: writer_fanout,
                }
                .run(rx)
            })
            .context("cannot start the store writer thread")?;
        Ok(Store {
            tx: Mutex::new(Some(tx)),
            writer: Mutex::new(Some(writer)),
            reader: Mutex::new(reader),
            stats,
            path,
            fanout,
        })
    }

    /// Opens an existing store read-only (the `bianque events` command).
    pub fn open_read_only(data_dir: &Path) -> Result<Store> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(anyhow!(
                "no store at {} (is --data-dir right?)",
                path.display()
            ));
        }
        let reader = open_reader_connection(&path)?;
        Ok(Store {
            tx: Mutex::new(None),
            writer: Mutex::new(None),
            reader: Mutex::new(reader),
            stats: Arc::new(StoreStats::default()),
            path,
            fanout: tokio::sync::broadcast::channel(1).0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Records written from now on, as they commit (the live stream).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Published>> {
        self.fanout.subscribe()
    }

    /// Queues a record for writing; never blocks on disk.
    pub fn save(&self, record: Record) {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(tx) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
                if tx.send(record).is_err() {
                    self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            None => {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Stops accepting records, writes everything queued, and waits for the writer.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        if let Some(handle) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }

    /// Records' JSON bodies, newest first.
    pub fn query(&self, q: &Query) -> Result<Vec<String>, QueryError> {
        Ok(self.query_page(q)?.rows)
    }

    /// A page of records' JSON bodies, newest first, with the cursor of the next page.
    pub fn query_page(&self, q: &Query) -> Result<Page, QueryError> {
        let mut sql = String::from("SELECT body, time_ns, seq FROM records WHERE 1=1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if let Some(t) = &q.tracer {
            sql.push_str(" AND tracer = ?");
            args.push(t.clone().into());
        }
        if let Some(c) = &q.container {
            // A prefix of the id is enough, as with docker/podman.
            sql.push_str(" AND container_id >= ? AND container_id < ?");
            args.push(c.clone().into());
            args.push(format!("{c}\u{10FFFF}").into());
        }
        if let Some(s) = q.since_ns {
            sql.push_str(" AND time_ns >= ?");
            args.push(s.into());
        }
        if let Some(u) = q.until_ns {
            sql.push_str(" AND time_ns < ?");
            args.push(u.into());
        }
        for (path, value) in &q.data {
            if !valid_data_path(path) {
                return Err(QueryError::InvalidField(path.clone()));
            }
            // Compare as text so that `dport=53` and `drop_reason=NO_SOCKET` both work;
            // JSON booleans come back from SQLite as 1/0.
            sql.push_str(" AND CAST(json_extract(body, ?) AS TEXT) = ?");
            args.push(format!("$.tracer_data.{path}").into());
            let v = match value.as_str() {
                "true" => "1".to_string(),
                "false" => "0".to_string(),
                other => other.to_string(),
            };
            args.push(v.into());
        }
        if let Some(token) = &q.cursor {
            let (t, seq) =
                decode_cursor(token).ok_or_else(|| QueryError::InvalidCursor(token.clone()))?;
            sql.push_str(" AND (time_ns < ? OR (time_ns = ? AND seq < ?))");
            args.push(t.into());
            args.push(t.into());
            args.push(seq.into());
        }
        sql.push_str(" ORDER BY time_ns DESC, seq DESC LIMIT ?");
        let limit = q.limit.max(1);
        args.push((limit as i64 + 1).into());
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut page = Page::default();
        let mut last = None;
        for row in rows {
            let (body, time_ns, seq) = row?;
            if page.rows.len() == limit {
                page.next = last.map(|(t, s)| encode_cursor(t, s));
                break;
            }
            page.rows.push(body);
            last = Some((time_ns, seq));
        }
        Ok(page)
    }

    /// The most recent permanent shipping failures, newest first.
    pub fn ship_failures(&self, limit: usize) -> Result<Vec<ShipFailure>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached(
            "SELECT time_ns, seq, record_id, idx, status, error_type, reason FROM shipper_failures ORDER BY id DESC LIMIT ?",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(ShipFailure {
                time: format_time_ns(r.get(0)?),
                seq: r.get(1)?,
                tracer_id: r.get(2)?,
                index: r.get(3)?,
                status: r.get(4)?,
                error_type: r.get(5)?,
                reason: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One record's JSON body by `tracer_id`.
    pub fn get(&self, id: &str) -> Result<Option<String>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT body FROM records WHERE id = ?")?;
        let body = stmt
            .query_row([id], |row| row.get::<_, String>(0))
            .optional()?;
        Ok(body)
    }

    pub fn count(&self) -> Result<u64> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        Ok(conn.query_row("SELECT COUNT(*) FROM records", [], |r| r.get::<_, i64>(0))? as u64)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn init_writer_connection(conn: &Connection) -> rusqlite::Result<()> {
    // auto_vacuum must be set before the first table exists to take effect.
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // A small page cache: records are appended (the right edges of the table and its indexes)
    // and read rarely, by other connections; memory is the budget.
    conn.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA cache_size = -256;",
    )?;
    conn.execute_batch(SCHEMA)
}

fn open_reader_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open store {} for reading", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA cache_size = -1024;")?;
    Ok(conn)
}

struct Writer {
    conn: Connection,
    stats: Arc<StoreStats>,
    retention: Retention,
    last_retention: Option<Instant>,
    fanout: tokio::sync::broadcast::Sender<Arc<Published>>,
}

impl Writer {
    fn run(mut self, rx: Receiver<Record>) {
        if let Err(e) = self.enforce_retention() {
            tracing::warn!(error = %e, "store retention failed");
        }
        self.last_retention = Some(Instant::now());
        let mut batch = Vec::with_capacity(BATCH_MAX);
        loop {
            // Sleeps until a record comes or retention is due (no idle tick).
            let wait = self.last_retention.map_or(Duration::ZERO, |t| {
                RETENTION_EVERY.saturating_sub(t.elapsed())
            });
            match rx.recv_timeout(wait) {
                Ok(first) => {
                    batch.push(first);
                    while batch.len() < BATCH_MAX {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    self.write_batch(&mut batch);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self
                .last_retention
                .is_some_and(|t| t.elapsed() >= RETENTION_EVERY)
            {
                if let Err(e) = self.enforce_retention() {
                    tracing::warn!(error = %e, "store retention failed");
                }
                self.last_retention = Some(Instant::now());
            }
        }
        tracing::debug!("store writer flushed and stopped");
    }

    fn write_batch(&mut self, batch: &mut Vec<Record>) {
        let n = batch.len() as u64;
        // Live-stream subscribers get each newly inserted record after the commit; without
        // subscribers nothing is kept.
        let publish = self.fanout.receiver_count() > 0;
        let mut inserted: Vec<Option<String>> = Vec::new();
        let result = (|| -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO records (id, time_ns, tracer, container_id, body) VALUES (?, ?, ?, ?, ?)",
                )?;
                for r in batch.iter() {
                    let body = serde_json::to_string(r).unwrap_or_else(|_| "{}".to_string());
                    let changed = stmt.execute(params![
                        r.tracer_id,
                        r.time_ns,
                        r.tracer_name,
                        r.container.as_ref().map(|c| c.id.as_str()),
                        body
                    ])?;
                    if publish {
                        inserted.push((changed > 0).then_some(body));
                    }
                }
            }
            tx.commit()
        })();
        match result {
            Ok(()) => {
                self.stats.written.fetch_add(n, Ordering::Relaxed);
                if publish {
                    for (record, body) in batch.drain(..).zip(inserted) {
                        if let Some(body) = body {
                            // Err only when every subscriber left meanwhile.
                            let _ = self.fanout.send(Arc::new(Published { record, body }));
                        }
                    }
                }
            }
            Err(e) => {
                self.stats.write_errors.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, records = n, "store write failed");
            }
        }
        self.stats.queued.fetch_sub(
            n.min(self.stats.queued.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        batch.clear();
    }

    /// Deletes records past the age limit, then the oldest ones while over the size limit, in
    /// chunks so that no single statement holds the write lock for long.
    fn enforce_retention(&mut self) -> rusqlite::Result<()> {
        let cutoff = now_ns() - self.retention.max_age.as_nanos() as i64;
        let mut deleted = 0u64;
        loop {
            let n = self.conn.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE time_ns < ? ORDER BY seq LIMIT ?)",
                params![cutoff, RETENTION_CHUNK],
            )?;
            deleted += n as u64;
            if (n as i64) < RETENTION_CHUNK {
                break;
            }
        }
        loop {
            let used = self.used_bytes()?;
            if used <= self.retention.max_size_bytes {
                break;
            }
            // Delete about as many records as the excess holds, judged by the average size.
            let count: i64 = self
                .conn
                .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))?;
            if count == 0 {
                break;
            }
            let avg = (used / count as u64).max(1);
            let excess = (used - self.retention.max_size_bytes).div_ceil(avg) as i64;
            let n = self.conn.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records ORDER BY seq LIMIT ?)",
                params![excess.clamp(1, RETENTION_CHUNK)],
            )?;
            deleted += n as u64;
            if n == 0 {
                break;
            }
        }
        if deleted > 0 {
            self.conn.execute_batch("PRAGMA incremental_vacuum;")?;
            self.stats
                .retention_deleted
                .fetch_add(deleted, Ordering::Relaxed);
            tracing::info!(deleted, "store retention removed old records");
        }
        self.stats
            .size_bytes
            .store(self.used_bytes()?, Ordering::Relaxed);
        Ok(())
    }

    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(((pages - free).max(0) * size) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ContainerFields, TracerType};
    use serde_json::json;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("bianque-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn retention() -> Retention {
        Retention {
            max_age: Duration::from_secs(3600),
            max_size_bytes: 1 << 30,
        }
    }

    fn rec(tracer: &str, t: i64, container: Option<&str>) -> Record {
        Record::new(
            tracer,
            TracerType::Event,
            t,
            "h",
            "r",
            container.map(|c| ContainerFields {
                id: c.into(),
                ..Default::default()
            }),
            json!({"t": t}),
        )
    }

    #[test]
    fn save_close_query_roundtrip() {
        let dir = tmpdir("roundtrip");
        let store = Store::open(&dir, retention()).unwrap();
        let now = now_ns();
        store.save(rec("a", now - 3, None));
        store.save(rec("b", now - 2, Some("c0ffee")));
        store.save(rec("a", now - 1, None));
        store.close();
        let all = store
            .query(&Query {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 3);
        let first: serde_json::Value = serde_json::from_str(&all[0]).unwrap();
        assert_eq!(first["tracer_data"]["t"], now - 1, "newest first");
        let a = store
            .query(&Query {
                tracer: Some("a".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a.len(), 2);
        let c = store
            .query(&Query {
                container: Some("c0f".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(c.len(), 1);
        let since = store
            .query(&Query {
                since_ns: Some(now - 2),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(since.len(), 2);
        let id = serde_json::from_str::<serde_json::Value>(&c[0]).unwrap()["tracer_id"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(store.get(&id).unwrap().is_some());
        assert!(store.get("nope").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn data_matches_and_cursor_pages() {
        let dir = tmpdir("pages");
        let store = Store::open(&dir, retention()).unwrap();
        let now = now_ns();
        for i in 0..7i64 {
            let mut r = rec("p", now + i, None);
            r.tracer_data = json!({"i": i, "even": i % 2 == 0, "kind": if i < 3 {"a"} else {"b"}, "n": {"x": i}});
            store.save(r);
        }
        store.close();
        let q = |data: &[(&str, &str)], limit: usize, cursor: Option<String>| Query {
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            limit,
            cursor,
            ..Default::default()
        };
        assert_eq!(
            store.query(&q(&[("kind", "a")], 10, None)).unwrap().len(),
            3
        );
        assert_eq!(store.query(&q(&[("i", "4")], 10, None)).unwrap().len(), 1);
        assert_eq!(
            store
                .query(&q(&[("even", "true")], 10, None))
                .unwrap()
                .len(),
            4
        );
        assert_eq!(store.query(&q(&[("n.x", "6")], 10, None)).unwrap().len(), 1);
        assert_eq!(
            store
                .query(&q(&[("kind", "b"), ("even", "false")], 10, None))
                .unwrap()
                .len(),
            2
        );
        assert!(matches!(
            store.query(&q(&[("bad-path", "1")], 10, None)),
            Err(QueryError::InvalidField(f)) if f == "bad-path"
        ));
        // Pages of 3: 3 + 3 + 1, newest first, each record once.
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let page = store.query_page(&q(&[], 3, cursor)).unwrap();
            for r in &page.rows {
                let v: serde_json::Value = serde_json::from_str(r).unwrap();
                seen.push(v["tracer_data"]["i"].as_i64().unwrap());
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, vec![6, 5, 4, 3, 2, 1, 0]);
        assert!(matches!(
            store.query_page(&q(&[], 3, Some("nope".into()))),
            Err(QueryError::InvalidCursor(c)) if c == "nope"
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn burst_of_100k_is_queued_without_blocking_and_all_written() {
        let dir = tmpdir("burst");
        let store = Store::open(&dir, retention()).unwrap();
        let now = now_ns();
        // save() is a channel send: the burst is queued in memory while one writer thread
        // inserts in batched transactions; nothing is lost.
        for i in 0..100_000 {
            store.save(rec("burst", now + i, None));
        }
        store.close();
        assert_eq!(store.count().unwrap(), 100_000);
        assert_eq!(store.stats().write_errors.load(Ordering::Relaxed), 0);
        assert_eq!(store.stats().written.load(Ordering::Relaxed), 100_000);
        assert_eq!(store.stats().queued.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn retention_removes_old_records() {
        let dir = tmpdir("retention");
        let store = Store::open(
            &dir,
            Retention {
                max_age: Duration::from_secs(60),
                max_size_bytes: 1 << 30,
            },
        )
        .unwrap();
        let now = now_ns();
        store.save(rec("old", now - 3_600_000_000_000, None));
        store.save(rec("new", now, None));
        store.close();
        // Reopen: the writer enforces retention when it starts.
        drop(store);
        let store = Store::open(
            &dir,
            Retention {
                max_age: Duration::from_secs(60),
                max_size_bytes: 1 << 30,
            },
        )
        .unwrap();
        store.close();
        let all = store
            .query(&Query {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.len(), 1);
        assert!(all[0].contains("\"new\""));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn size_limit_trims_oldest() {
        let dir = tmpdir("size");
        let store = Store::open(
            &dir,
            Retention {
                max_age: Duration::from_secs(3600),
                max_size_bytes: 1 << 20,
            },
        )
        .unwrap();
        let now = now_ns();
        let pad = "x".repeat(1000);
        for i in 0..4000 {
            let mut r = rec("big", now + i, None);
            r.tracer_data = json!({"pad": pad, "i": i});
            store.save(r);
        }
        store.close();
        drop(store);
        let store = Store::open(
            &dir,
            Retention {
                max_age: Duration::from_secs(3600),
                max_size_bytes: 1 << 20,
            },
        )
        .unwrap();
        store.close();
        let n = store.count().unwrap();
        assert!(n < 4000 && n > 0, "kept {n}");
        let newest = store
            .query(&Query {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert!(newest[0].contains("\"i\":3999"), "newest kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
