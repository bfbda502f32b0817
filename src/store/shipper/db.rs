//! The shipper's own connection to the store: the records after its cursor, and the cursor
//! and permanent failures written back in one transaction.

use rusqlite::{params, Connection, OptionalExtension};

use crate::record::now_ns;

/// The row name in `shipper_state`.
const CURSOR_NAME: &str = "elasticsearch";
/// `shipper_failures` keeps this many most recent rows.
const FAILURES_KEPT: i64 = 10_000;

/// The shipper's own connection to the store.
pub(super) struct ShipDb {
    pub(super) conn: Connection,
}

/// One stored record on its way out.
pub(super) struct Doc {
    pub(super) seq: i64,
    pub(super) id: String,
    pub(super) time_ns: i64,
    pub(super) body: String,
}

/// A record the server refused for good.
pub(super) struct Refused {
    pub(super) seq: i64,
    pub(super) id: String,
    pub(super) index: String,
    pub(super) status: u16,
    pub(super) error_type: String,
    pub(super) reason: String,
}

impl ShipDb {
    pub(super) fn cursor(&self) -> rusqlite::Result<i64> {
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
    pub(super) fn seq_range(&self) -> rusqlite::Result<(i64, i64)> {
        // Two subqueries: SQLite answers a lone MIN or MAX from the index end, but a query
        // with both scans the whole table.
        self.conn.query_row(
            "SELECT COALESCE((SELECT MIN(seq) FROM records), 0), COALESCE((SELECT MAX(seq) FROM records), 0)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
    }

    /// Records after `cursor`, oldest first, up to `max_records` and about `max_bytes`.
    pub(super) fn page(
        &self,
        cursor: i64,
        max_records: usize,
        max_bytes: u64,
    ) -> rusqlite::Result<Vec<Doc>> {
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
    pub(super) fn commit(&mut self, cursor: i64, refused: &[Refused]) -> rusqlite::Result<()> {
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
