//! The shipping loop on the shipper's thread: reads a batch after the cursor, sends it until
//! every record is in the index or refused for good, moves the cursor, backs off and fails
//! over between addresses while the server does not answer.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::bulk::{
    bulk_body, gzip, parse_bulk_response, retry_after, retryable_status, truncate, ItemOutcome,
    SendError,
};
use super::db::{Doc, Refused, ShipDb};
use super::document;
use super::index::{index_template, template_name, IndexName};
use super::{ElasticsearchConfig, ShipperStats};
use crate::http::err_text;

/// A `Retry-After` longer than this is cut to it.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);
/// How often an idle shipper looks for new records.
const POLL: Duration = Duration::from_millis(100);

pub(super) struct Worker {
    pub(super) cfg: ElasticsearchConfig,
    pub(super) index: IndexName,
    pub(super) client: reqwest::Client,
    pub(super) db: ShipDb,
    pub(super) stats: Arc<ShipperStats>,
    pub(super) stop: tokio::sync::watch::Receiver<bool>,
    /// The address in use; moves on to the next one after a failure.
    pub(super) address: usize,
    pub(super) failures_in_a_row: u32,
    pub(super) rng: u64,
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

    pub(super) async fn run(&mut self) {
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
                    Ok(d) => document::shape(d, self.cfg.compat),
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
        let body = index_template(&self.cfg.index, self.cfg.compat).to_string();
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
                Err(SendError::RetryAfter(msg, wait)) => {
                    self.stats
                        .retried
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    self.failed("a bulk request", &msg);
                    // The server's wait, never shorter than our own back-off.
                    let d = self.backoff().max(wait.min(MAX_RETRY_AFTER));
                    if !self.sleep(d).await {
                        return None;
                    }
                }
                Err(SendError::Malformed(why)) => {
                    // Nothing is known to be indexed: the records stay and are sent again.
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .retried
                        .fetch_add(part.len() as u64, Ordering::Relaxed);
                    let msg = format!("the server's answer is not a bulk answer: {why}");
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
        let wait = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry_after(v, chrono::Utc::now()));
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| SendError::Retry(err_text(e)))?;
        match status {
            200..=299 => parse_bulk_response(&bytes, n).map_err(SendError::Malformed),
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
                let msg = format!("HTTP {status}: {}", truncate(&text, 300));
                match wait {
                    Some(w) if retryable_status(status) => Err(SendError::RetryAfter(
                        format!("{msg} (Retry-After {}s)", w.as_secs()),
                        w,
                    )),
                    _ => Err(SendError::Retry(msg)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::shipper::seed;
    use rusqlite::Connection;

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
}
