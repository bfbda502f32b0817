//! The bounded queue between the savers (tracer threads) and the store's writer thread.
//!
//! A record waits here as the row it will be written as (its JSON, serialized by the saver),
//! so what waits in memory is what the caps count. When the queue is full a saver waits for
//! room: a tracer's ring-buffer reader stops draining, the kernel's ring buffer fills and the
//! BPF side counts the records it could not deliver (`…_ringbuf_lost_total`) — losses are
//! counted kernel-side instead of piling up in the agent's memory.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Records waiting for the writer, at most.
pub const QUEUE_MAX_RECORDS: usize = 8192;
/// Bytes (JSON and ids) waiting for the writer, at most.
pub const QUEUE_MAX_BYTES: usize = 8 << 20;

/// One record as it will be inserted.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub time_ns: i64,
    pub tracer: String,
    pub container_id: Option<String>,
    /// The record's JSON, as stored.
    pub body: String,
}

impl Row {
    /// What the row holds in memory, roughly.
    pub fn bytes(&self) -> usize {
        std::mem::size_of::<Row>()
            + self.id.len()
            + self.tracer.len()
            + self.container_id.as_ref().map_or(0, |c| c.len())
            + self.body.len()
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub records: usize,
    pub bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            records: QUEUE_MAX_RECORDS,
            bytes: QUEUE_MAX_BYTES,
        }
    }
}

#[derive(Default)]
struct State {
    rows: VecDeque<Row>,
    bytes: usize,
    closed: bool,
}

pub struct Queue {
    state: Mutex<State>,
    /// Signalled when a row comes or the queue closes.
    not_empty: Condvar,
    /// Signalled when the writer took rows.
    not_full: Condvar,
    limits: Limits,
}

/// Why [`Queue::push`] gave a row back.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Still full after the wait.
    Full,
    /// The store is closing.
    Closed,
}

impl Queue {
    pub fn new(limits: Limits) -> Queue {
        Queue {
            state: Mutex::new(State::default()),
            not_empty: Condvar::new(),
            not_full: Condvar::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `row`, waiting up to `wait` for room; gives it back when there was none.
    pub fn push(&self, row: Row, wait: Duration) -> Result<(), (Row, Refusal)> {
        let size = row.bytes();
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        loop {
            if st.closed {
                return Err((row, Refusal::Closed));
            }
            // An empty queue takes any row, however large.
            let fits = st.rows.len() < self.limits.records
                && (st.rows.is_empty() || st.bytes + size <= self.limits.bytes);
            if fits {
                st.bytes += size;
                st.rows.push_back(row);
                drop(st);
                self.not_empty.notify_one();
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err((row, Refusal::Full));
            }
            st = self
                .not_full
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Moves up to `max` rows of up to `max_bytes` (at least one row) into `out`, waiting up
    /// to `wait` for the first; false once the queue is closed and empty.
    pub fn take(&self, max: usize, max_bytes: usize, wait: Duration, out: &mut Vec<Row>) -> bool {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        while st.rows.is_empty() {
            if st.closed {
                return false;
            }
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            st = self
                .not_empty
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        let mut n = 0;
        let mut freed = 0;
        for row in st.rows.iter().take(max) {
            if n > 0 && freed + row.bytes() > max_bytes {
                break;
            }
            freed += row.bytes();
            n += 1;
        }
        out.extend(st.rows.drain(..n));
        st.bytes -= freed.min(st.bytes);
        if st.rows.is_empty() && st.rows.capacity() > 1024 {
            // A storm's high-water mark is not kept.
            st.rows.shrink_to(1024);
        }
        drop(st);
        self.not_full.notify_all();
        true
    }

    /// No more rows are accepted; the writer takes what is queued and then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.not_empty.notify_all();
        self.not_full.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    pub fn len(&self) -> usize {
        self.lock().rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn row(n: usize) -> Row {
        Row {
            id: format!("{n}"),
            time_ns: n as i64,
            tracer: "t".into(),
            container_id: None,
            body: "x".repeat(100),
        }
    }

    #[test]
    fn a_full_queue_refuses_after_the_wait_and_takes_again_once_drained() {
        let q = Queue::new(Limits {
            records: 3,
            bytes: 1 << 20,
        });
        for i in 0..3 {
            q.push(row(i), Duration::ZERO).unwrap();
        }
        let t0 = Instant::now();
        let (back, why) = q.push(row(3), Duration::from_millis(50)).unwrap_err();
        assert_eq!((back.id.as_str(), why), ("3", Refusal::Full));
        assert!(t0.elapsed() >= Duration::from_millis(50));
        let mut out = Vec::new();
        assert!(q.take(2, usize::MAX, Duration::ZERO, &mut out));
        assert_eq!(out.len(), 2);
        q.push(row(4), Duration::ZERO).unwrap();
        q.close();
        assert_eq!(
            q.push(row(5), Duration::ZERO).unwrap_err().1,
            Refusal::Closed
        );
        out.clear();
        assert!(q.take(10, usize::MAX, Duration::ZERO, &mut out));
        assert_eq!(
            out.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["2", "4"]
        );
        assert!(
            !q.take(10, usize::MAX, Duration::ZERO, &mut out),
            "closed and empty"
        );
    }

    #[test]
    fn the_byte_cap_holds_and_a_waiting_saver_gets_in_when_the_writer_takes() {
        let one = row(0).bytes();
        let q = Arc::new(Queue::new(Limits {
            records: 1000,
            bytes: one * 2,
        }));
        q.push(row(0), Duration::ZERO).unwrap();
        q.push(row(1), Duration::ZERO).unwrap();
        assert_eq!(q.push(row(2), Duration::ZERO).unwrap_err().1, Refusal::Full);
        let saver = {
            let q = q.clone();
            std::thread::spawn(move || q.push(row(3), Duration::from_secs(5)).is_ok())
        };
        std::thread::sleep(Duration::from_millis(50));
        let mut out = Vec::new();
        assert!(q.take(1, usize::MAX, Duration::ZERO, &mut out));
        assert!(saver.join().unwrap(), "the waiting saver got in");
        assert_eq!(q.len(), 2);
    }
}
