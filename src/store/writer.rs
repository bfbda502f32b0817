//! The store's writer thread: group commits sized to its own rate, retention on write (size)
//! and every 30 s (age), and a full disk or a failing write survived: the batch is retried,
//! room is made, errors are logged at a bounded rate and readiness says the store cannot
//! write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, ErrorCode};

use super::ledger::Ledger;
use super::queue::{Queue, Row};
use super::{Published, Retention, StoreStats};
use crate::record::{now_ns, Record};

/// A commit should take about this long: long enough to amortize the commit, short enough
/// that the queue keeps moving.
const COMMIT_TARGET: Duration = Duration::from_millis(200);
pub const BATCH_MIN: usize = 256;
/// The largest group commit; with the queue's cap, the most `kill -9` can lose.
pub const BATCH_MAX: usize = 4096;
const RETENTION_CHUNK: i64 = 5000;
/// Records deleted per step when the disk is full.
const FULL_DISK_CHUNK: i64 = 500;
const RETENTION_EVERY: Duration = Duration::from_secs(30);
/// A retention pass that left the store over its size limit is repeated at most this often.
const SIZE_RETENTION_EVERY: Duration = Duration::from_secs(1);
/// A batch that cannot be written is retried this long, then given up (and counted).
const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
/// A failing store logs at most one error line this often (with how many it held back).
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);
/// Space kept in a file next to the database, freed when the disk is full so that retention
/// (whose deletes are written to the WAL first) can run.
pub const RESERVE_FILE: &str = "bianque.reserve";
const RESERVE_BYTES: i64 = 1 << 20;

pub(super) struct Writer {
    pub conn: Connection,
    pub path: PathBuf,
    pub stats: Arc<StoreStats>,
    pub ledger: Arc<Ledger>,
    pub retention: Retention,
    pub fanout: tokio::sync::broadcast::Sender<Arc<Published>>,
    pub batch_max: usize,
    pub last_retention: Instant,
    /// Whether the last retention pass got the store under its size limit.
    pub last_pass_fit: bool,
    /// Bytes of one group commit at most (a WAL's worth for the size limit).
    pub batch_bytes: usize,
    pub errors: ErrorLog,
}

/// One error line per [`ERROR_LOG_EVERY`], saying how many were held back.
#[derive(Default)]
pub(super) struct ErrorLog {
    last: Option<Instant>,
    held_back: u64,
}

impl ErrorLog {
    /// Some(held back since the last line) when a line may be written now.
    fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < ERROR_LOG_EVERY) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

fn is_full(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(ErrorCode::DiskFull))
}

impl Writer {
    pub fn run(mut self, queue: &Queue) {
        self.ensure_reserve();
        self.retention_pass(false);
        let mut batch = Vec::with_capacity(BATCH_MIN);
        loop {
            // Sleeps until a row comes, the queue closes or a retention pass is due (no idle
            // tick): every RETENTION_EVERY, every SIZE_RETENTION_EVERY while a pass could not
            // get the store under its size limit.
            let due = if self.last_pass_fit {
                RETENTION_EVERY
            } else {
                SIZE_RETENTION_EVERY
            };
            let wait = due
                .saturating_sub(self.last_retention.elapsed())
                .max(Duration::from_millis(10));
            if !queue.take(self.batch_max, self.batch_bytes, wait, &mut batch) {
                break;
            }
            if !batch.is_empty() {
                self.write_until_done(&mut batch, queue);
            }
            // Over the limit: trim now (down to 90%, so this is rare); a pass that could not
            // get under it (a reader holding the WAL) is not repeated at once.
            let over = self.file_bytes() > self.retention.max_size_bytes
                && (self.last_pass_fit || self.last_retention.elapsed() >= SIZE_RETENTION_EVERY);
            if self.disk_low() {
                // Little room left on the disk: free pages inside the file before new records
                // need them, so the file does not have to grow.
                self.retention_pass(true);
            } else if self.last_retention.elapsed() >= RETENTION_EVERY {
                self.retention_pass(false);
                self.ensure_reserve();
            } else if over {
                self.retention_pass(false);
            }
        }
        tracing::debug!("store writer flushed and stopped");
    }

    /// Writes `batch`, retrying (and making room on a full disk) until it is in or
    /// [`GIVE_UP_AFTER`] passed (three tries once the store is closing); counts what it gave up.
    fn write_until_done(&mut self, batch: &mut Vec<Row>, queue: &Queue) {
        let n = batch.len() as u64;
        let started = Instant::now();
        let mut attempts = 0u32;
        loop {
            let t0 = Instant::now();
            self.stats.writing(true);
            let result = self.insert(batch);
            self.stats.writing(false);
            match result {
                Ok(inserted) => {
                    self.committed(batch, inserted, t0.elapsed());
                    break;
                }
                Err(e) => {
                    attempts += 1;
                    let full = is_full(&e);
                    self.stats.set_unwritable(&e.to_string());
                    self.stats.write_retries.fetch_add(n, Ordering::Relaxed);
                    if let Some(held_back) = self.errors.allow() {
                        tracing::error!(error = %e, records = n, attempts, held_back, "store write failed; retrying");
                    }
                    if full {
                        self.make_room();
                    }
                    let closing = queue.is_closed();
                    if started.elapsed() >= GIVE_UP_AFTER || (closing && attempts >= 3) {
                        self.stats.write_errors.fetch_add(n, Ordering::Relaxed);
                        self.ledger.add_given_up(n);
                        tracing::error!(error = %e, records = n, "store write failed for good; these records are lost (counted in …_store_write_errors_total)");
                        break;
                    }
                    let backoff = Duration::from_millis(50u64 << attempts.min(4));
                    std::thread::sleep(backoff);
                }
            }
        }
        self.stats.queued.fetch_sub(
            n.min(self.stats.queued.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        batch.clear();
    }

    /// Inserts `batch` in one transaction with the commit count; the bodies newly inserted
    /// (None for a duplicate id).
    fn insert(&mut self, batch: &[Row]) -> rusqlite::Result<Vec<bool>> {
        let tx = self.conn.transaction()?;
        let mut inserted = Vec::with_capacity(batch.len());
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO records (id, time_ns, tracer, container_id, body) VALUES (?, ?, ?, ?, ?)",
            )?;
            for r in batch {
                let changed = stmt.execute(params![
                    r.id,
                    r.time_ns,
                    r.tracer,
                    r.container_id.as_deref(),
                    r.body
                ])?;
                inserted.push(changed > 0);
            }
            tx.prepare_cached(
                "INSERT INTO store_state (key, value) VALUES ('committed', ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            )?
            .execute([batch.len() as i64])?;
        }
        tx.commit()?;
        Ok(inserted)
    }

    fn committed(&mut self, batch: &mut Vec<Row>, inserted: Vec<bool>, took: Duration) {
        let n = batch.len();
        self.stats.written.fetch_add(n as u64, Ordering::Relaxed);
        self.update_sizes();
        if self.stats.set_writable() {
            tracing::info!("store writes again");
        }
        // Size the next group commit to this one's rate.
        let per_sec = n as f64 / took.as_secs_f64().max(1e-6);
        self.batch_max =
            ((per_sec * COMMIT_TARGET.as_secs_f64()) as usize).clamp(BATCH_MIN, BATCH_MAX);
        // Live-stream subscribers get each newly inserted record after the commit.
        if self.fanout.receiver_count() > 0 {
            for (row, new) in batch.drain(..).zip(inserted) {
                if !new {
                    continue;
                }
                match serde_json::from_str::<Record>(&row.body) {
                    Ok(record) => {
                        // Err only when every subscriber left meanwhile.
                        let _ = self.fanout.send(Arc::new(Published {
                            record,
                            body: row.body,
                        }));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "stored record not re-read for the stream")
                    }
                }
            }
        }
    }

    /// The disk is full: frees the reserve, deletes a chunk of the most numerous tracer's
    /// oldest records even under the size limit, and hands the pages back.
    fn make_room(&mut self) {
        let reserve = self.reserve_path();
        if std::fs::remove_file(&reserve).is_ok() {
            tracing::warn!("disk full: released the store's reserve to run retention");
        }
        // The WAL first: its frames go into the file (the reserve pays for any growth) and it
        // is emptied, so the deletes have room.
        if let Err(e) = self.checkpoint("TRUNCATE") {
            tracing::debug!(error = %e, "checkpoint on a full disk failed");
        }
        self.retention_pass(true);
    }

    /// The disk has less room than two group commits and the file fewer free pages than one.
    fn disk_low(&self) -> bool {
        let commit = self.batch_bytes as u64;
        available_bytes(&self.path).is_some_and(|a| a < 2 * commit + RESERVE_BYTES as u64)
            && self.stats.free_bytes.load(Ordering::Relaxed) < 2 * commit
    }

    fn reserve_path(&self) -> PathBuf {
        self.path.with_file_name(RESERVE_FILE)
    }

    /// Keeps [`RESERVE_BYTES`] allocated next to the database (if the disk has them).
    fn ensure_reserve(&self) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() as i64 == RESERVE_BYTES) {
            return;
        }
        // Taken back only once the disk has room again, not from the store's own pages.
        if available_bytes(&path).is_some_and(|a| a < 4 * RESERVE_BYTES as u64) {
            return;
        }
        let Ok(file) = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
        else {
            return;
        };
        // SAFETY: posix_fallocate on an fd we own for its lifetime; no memory is passed.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, RESERVE_BYTES) };
        if rc != 0 {
            drop(file);
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Retention, logging a failure (at a bounded rate).
    fn retention_pass(&mut self, forced: bool) {
        if let Err(e) = self.enforce_retention(forced) {
            if let Some(held_back) = self.errors.allow() {
                tracing::warn!(error = %e, held_back, "store retention failed");
            }
        }
        self.last_retention = Instant::now();
    }

    /// Deletes records past the age limit, then, while over the size limit (or once when
    /// `forced`), the oldest records of the tracer with the most records — a flood of one
    /// kind goes before the rare ones — in chunks; then frees the pages for real.
    fn enforce_retention(&mut self, forced: bool) -> rusqlite::Result<()> {
        let cutoff = now_ns() - self.retention.max_age.as_nanos() as i64;
        let mut deleted = 0u64;
        loop {
            let n = self.conn.execute(
                "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE time_ns < ? ORDER BY time_ns LIMIT ?)",
                params![cutoff, RETENTION_CHUNK],
            )?;
            deleted += n as u64;
            if (n as i64) < RETENTION_CHUNK {
                break;
            }
        }
        let limit = self.retention.max_size_bytes;
        if forced || self.file_bytes() > limit {
            // Live records are trimmed below the limit, leaving room for the WAL.
            let wal = self.wal_bytes();
            let target = (limit / 10 * 9).saturating_sub(wal).max(limit / 2);
            let mut counts = self.tracer_counts()?;
            let mut forced_left = forced;
            loop {
                let live = self.live_bytes()?;
                if live <= target && !forced_left {
                    break;
                }
                forced_left = false;
                let total: u64 = counts.values().sum();
                let Some((tracer, &count)) = counts.iter().max_by_key(|(_, c)| **c) else {
                    break;
                };
                if count == 0 {
                    break;
                }
                let avg = (live / total.max(1)).max(1);
                let excess = live.saturating_sub(target).div_ceil(avg) as i64;
                // On a full disk the delete itself must fit in the WAL: small steps.
                let chunk = if forced {
                    (self.batch_max as i64).max(FULL_DISK_CHUNK)
                } else {
                    RETENTION_CHUNK
                };
                let n = self.conn.execute(
                    "DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE tracer = ? ORDER BY time_ns, seq LIMIT ?)",
                    params![tracer, excess.clamp(1, chunk).min(count as i64).max(if forced { chunk } else { 1 })],
                )? as u64;
                let tracer = tracer.clone();
                deleted += n;
                if n == 0 {
                    counts.remove(&tracer);
                } else if let Some(c) = counts.get_mut(&tracer) {
                    *c = c.saturating_sub(n);
                }
            }
        }
        if deleted > 0 {
            self.stats
                .retention_deleted
                .fetch_add(deleted, Ordering::Relaxed);
            tracing::info!(deleted, "store retention removed records");
            if forced {
                // The disk is full: the freed pages stay in the file for the next records
                // (handing them back would let the WAL or others take them).
                self.checkpoint("PASSIVE")?;
            } else {
                self.free_pages()?;
            }
        }
        self.update_sizes();
        self.last_pass_fit = self.file_bytes() <= limit;
        Ok(())
    }

    /// Records per tracer.
    fn tracer_counts(&self) -> rusqlite::Result<HashMap<String, u64>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT tracer, COUNT(*) FROM records GROUP BY tracer")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (t, c) = row?;
            out.insert(t, c.max(0) as u64);
        }
        Ok(out)
    }

    /// Every free page back to the file system: `incremental_vacuum` frees one page per step,
    /// so it is stepped to the end; then the WAL is checkpointed (which shrinks the file) and
    /// truncated.
    fn free_pages(&mut self) -> rusqlite::Result<()> {
        {
            let mut stmt = self.conn.prepare("PRAGMA incremental_vacuum")?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        // A reader holding an old snapshot may keep part of the WAL; the rest goes.
        self.checkpoint("TRUNCATE")
    }

    fn checkpoint(&self, mode: &str) -> rusqlite::Result<()> {
        let mut stmt = self
            .conn
            .prepare(&format!("PRAGMA wal_checkpoint({mode})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        Ok(())
    }

    fn pragma(&self, name: &str) -> rusqlite::Result<u64> {
        self.conn
            .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
    }

    /// Bytes of the pages that hold records.
    fn live_bytes(&self) -> rusqlite::Result<u64> {
        let pages = self.pragma("page_count")?;
        let free = self.pragma("freelist_count")?;
        Ok(pages.saturating_sub(free) * self.pragma("page_size")?)
    }

    fn wal_bytes(&self) -> u64 {
        let mut wal = self.path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    /// The database file and its WAL on disk.
    fn file_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0) + self.wal_bytes()
    }

    fn update_sizes(&self) {
        self.stats
            .size_bytes
            .store(self.file_bytes(), Ordering::Relaxed);
        if let (Ok(free), Ok(size)) = (self.pragma("freelist_count"), self.pragma("page_size")) {
            self.stats.free_bytes.store(free * size, Ordering::Relaxed);
        }
    }
}

/// Bytes an unprivileged writer may still allocate on the file system holding `path`.
fn available_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let dir = path.parent()?;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c is a NUL-terminated path; st is written by statvfs before it is read.
    let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so it filled st.
    let st = unsafe { st.assume_init() };
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}
