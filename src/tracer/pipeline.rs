//! The record path: tracer → pipeline → store.
//!
//! A record whose container is known only by its id (no metadata yet: an OOM kill milliseconds
//! after `podman run`) is held on the pipeline's own thread until the metadata sources name the
//! container, at most [`LATE_METADATA_WAIT`]; every other record goes to the sink at once. The
//! tracer's thread never waits: holding is a bounded queue (full → saved at once, by id), and
//! ids that waited in vain are not held again. [`Pipeline::stop`] saves what is still held, so
//! the agent stops tracers, then the pipeline, then closes the store.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::container::{is_container_id, ContainerRegistry};
use crate::record::Record;

/// A record whose container is known only by its id waits this long at most for its name.
pub const LATE_METADATA_WAIT: Duration = Duration::from_secs(3);
/// While records wait for a name, metadata is asked again this often.
const LATE_RETRY: Duration = Duration::from_millis(150);
/// Records waiting for a name at most (more are saved at once, by id only).
const LATE_QUEUE: usize = 1024;
/// Ids given up on are remembered; past this many, those older than `GIVEN_UP_KEPT` go.
const GIVEN_UP_MAX: usize = 4096;
const GIVEN_UP_KEPT: Duration = Duration::from_secs(600);

/// Where records end up (the store, in the agent).
pub type RecordSink = Arc<dyn Fn(Record) + Send + Sync>;

/// A record held for its container's name, and since when.
struct Held {
    /// Boxed: the queue's slots are allocated (and touched) up front, 1024 of them.
    record: Box<Record>,
    since: Instant,
}

/// What the pipeline's thread and the savers share.
struct Shared {
    containers: Arc<ContainerRegistry>,
    sink: RecordSink,
    /// Container ids whose name did not come within `LATE_METADATA_WAIT`.
    given_up: Mutex<HashMap<String, Instant>>,
}

pub struct Pipeline {
    shared: Arc<Shared>,
    /// Held records go to the thread; None while it does not run (records are saved at once).
    tx: Mutex<Option<SyncSender<Held>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Pipeline {
    /// A pipeline that saves every record at once until [`Pipeline::start`].
    pub fn new(containers: Arc<ContainerRegistry>, sink: RecordSink) -> Pipeline {
        Pipeline {
            shared: Arc::new(Shared {
                containers,
                sink,
                given_up: Mutex::new(HashMap::new()),
            }),
            tx: Mutex::new(None),
            thread: Mutex::new(None),
        }
    }

    /// Starts the thread that holds records for their container's name.
    pub fn start(&self) -> std::io::Result<()> {
        let mut tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if tx.is_some() {
            return Ok(());
        }
        let (sender, rx) = std::sync::mpsc::sync_channel(LATE_QUEUE);
        let shared = self.shared.clone();
        let handle = std::thread::Builder::new()
            .name("records".into())
            .spawn(move || shared.hold_until_named(rx))?;
        *tx = Some(sender);
        *self.thread.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(())
    }

    /// Saves a record: at once, or, when its container has an id but no name yet, once the
    /// name comes (see the module doc). Never waits.
    pub fn save(&self, record: Record) {
        if let Some(now) = self.hold(record) {
            (self.shared.sink)(now);
        }
    }

    /// Queues a record for its container's name; gives it back when it is to be saved now.
    fn hold(&self, record: Record) -> Option<Record> {
        let waits = record.container.as_ref().is_some_and(|c| {
            c.name.is_empty() && is_container_id(&c.id) && !self.shared.gave_up_on(&c.id)
        });
        if !waits {
            return Some(record);
        }
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = guard.as_ref() else {
            return Some(record);
        };
        let held = Held {
            record: Box::new(record),
            since: Instant::now(),
        };
        match tx.try_send(held) {
            Ok(()) => None,
            Err(TrySendError::Full(h) | TrySendError::Disconnected(h)) => Some(*h.record),
        }
    }

    /// Saves the records still held, as they are, and ends the thread; later records are
    /// saved at once.
    pub fn stop(&self) {
        // Dropping the only sender ends the thread once it has taken every queued record.
        drop(self.tx.lock().unwrap_or_else(|e| e.into_inner()).take());
        let handle = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Shared {
    fn gave_up_on(&self, id: &str) -> bool {
        self.given_up
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(id)
    }

    /// The pipeline's thread: takes held records, asks the metadata sources again every
    /// `LATE_RETRY` while some wait, and saves each once named or after `LATE_METADATA_WAIT`.
    fn hold_until_named(&self, rx: Receiver<Held>) {
        let mut pending = Vec::new();
        loop {
            let next = if pending.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(LATE_RETRY)
            };
            match next {
                Ok(h) => pending.push(h),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            pending.extend(rx.try_iter());
            self.containers.refresh_metadata_older_than(LATE_RETRY);
            self.resolve(&mut pending, false);
        }
        self.resolve(&mut pending, true);
    }

    /// Saves the held records whose container got a name (all of them when `last`), keeps
    /// the others.
    fn resolve(&self, pending: &mut Vec<Held>, last: bool) {
        let mut keep = Vec::new();
        for mut h in pending.drain(..) {
            let id = h
                .record
                .container
                .as_ref()
                .map(|c| c.id.clone())
                .unwrap_or_default();
            if let Some(fields) = self.containers.named_fields(&id) {
                tracing::debug!(container_id = %id, name = %fields.name, waited_ms = h.since.elapsed().as_millis() as u64, "held record named");
                h.record.container = Some(fields);
                (self.sink)(*h.record);
            } else if last || h.since.elapsed() >= LATE_METADATA_WAIT {
                let mut given_up = self.given_up.lock().unwrap_or_else(|e| e.into_inner());
                if given_up.len() >= GIVEN_UP_MAX {
                    given_up.retain(|_, t| t.elapsed() < GIVEN_UP_KEPT);
                }
                given_up.insert(id.clone(), Instant::now());
                drop(given_up);
                tracing::debug!(container_id = %id, "no metadata names the container; record saved by id");
                (self.sink)(*h.record);
            } else {
                keep.push(h);
            }
        }
        *pending = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::ContainersConfig;
    use crate::host::HostRoot;
    use crate::record::ContainerFields;
    use std::path::{Path, PathBuf};

    /// An engine API on a unix socket that lists nothing until `named_after`, then one
    /// container; every answer takes `delay` (podman holding its lock while `podman run` runs).
    fn slow_engine(
        sock: &Path,
        id: &'static str,
        named_after: Duration,
        delay: Duration,
    ) -> std::thread::JoinHandle<()> {
        use std::io::{Read, Write};
        let listener = std::os::unix::net::UnixListener::bind(sock).unwrap();
        listener.set_nonblocking(true).unwrap();
        let start = Instant::now();
        std::thread::spawn(move || {
            while start.elapsed() < Duration::from_secs(10) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                std::thread::sleep(delay);
                let body = if start.elapsed() >= named_after {
                    format!(r#"[{{"Id":"{id}","Names":["/late-name"],"Labels":null}}]"#)
                } else {
                    "[]".to_string()
                };
                let _ = conn.write_all(
                    format!(
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                );
            }
        })
    }

    fn unnamed_record(id: &str) -> Record {
        Record::new(
            "test",
            crate::record::TracerType::Event,
            crate::record::now_ns(),
            "h",
            "r",
            Some(ContainerFields {
                id: id.to_string(),
                ..Default::default()
            }),
            serde_json::json!({}),
        )
    }

    /// A registry whose only metadata source is the engine socket `sock` under `root`.
    fn registry_on(root: &Path) -> Arc<ContainerRegistry> {
        Arc::new(ContainerRegistry::new(
            HostRoot::new(root),
            ContainersConfig {
                engine_sockets: vec![PathBuf::from("/engine.sock")],
                kubelet_read_only_address: String::new(),
                kubelet_url: String::new(),
                containerd_state_dirs: vec![],
                ..Default::default()
            },
        ))
    }

    /// A temp root with an empty mountinfo (no memory hierarchy: names only come from the
    /// engine answer).
    fn fake_root(tag: &str) -> PathBuf {
        let root = std::env::temp_dir().join(format!("bianque-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("proc/self")).unwrap();
        std::fs::write(root.join("proc/self/mountinfo"), "").unwrap();
        root
    }

    type Saved = std::sync::mpsc::Receiver<(Instant, Record)>;

    fn channel_sink() -> (RecordSink, Saved) {
        let (tx, rx) = std::sync::mpsc::channel();
        let tx = Mutex::new(tx);
        let sink: RecordSink = Arc::new(move |r| {
            let _ = tx.lock().unwrap().send((Instant::now(), r));
        });
        (sink, rx)
    }

    #[test]
    fn a_full_queue_saves_at_once_and_stop_saves_every_held_record() {
        const ID: &str = "1212121212121212121212121212121212121212121212121212121212121212";
        let root = fake_root("late-full");
        // Each answer takes 500 ms: the pipeline's thread is busy asking while the queue fills.
        let server = slow_engine(
            &root.join("engine.sock"),
            ID,
            Duration::from_secs(60),
            Duration::from_millis(500),
        );
        let (sink, rx) = channel_sink();
        let pipeline = Pipeline::new(registry_on(&root), sink);
        pipeline.start().unwrap();
        pipeline.save(unnamed_record(ID));
        std::thread::sleep(Duration::from_millis(100));
        let t0 = Instant::now();
        let burst = LATE_QUEUE + 100;
        for _ in 0..burst {
            pipeline.save(unnamed_record(ID));
        }
        assert!(
            t0.elapsed() < Duration::from_millis(300),
            "{:?}",
            t0.elapsed()
        );
        let at_once = rx.try_iter().count();
        assert!(
            (burst - LATE_QUEUE..=burst - LATE_QUEUE + 1).contains(&at_once),
            "{at_once} of {burst} saved at once"
        );
        pipeline.stop();
        let at_stop = rx.try_iter().count();
        assert_eq!(at_once + at_stop, burst + 1);
        drop(server);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_record_of_a_container_not_yet_named_waits_for_its_name() {
        const ID: &str = "abababababababababababababababababababababababababababababababab";
        const NEVER: &str = "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd";
        let root = fake_root("late");
        let server = slow_engine(
            &root.join("engine.sock"),
            ID,
            Duration::from_millis(600),
            Duration::from_millis(100),
        );
        let reg = registry_on(&root);
        let (sink, rx) = channel_sink();
        let pipeline = Pipeline::new(reg, sink);
        pipeline.start().unwrap();
        let t0 = Instant::now();
        for id in [ID, NEVER] {
            pipeline.save(unnamed_record(id));
        }
        // The caller never waits on the (slow) API.
        assert!(
            t0.elapsed() < Duration::from_millis(50),
            "{:?}",
            t0.elapsed()
        );
        // A named record or a non-runtime id is saved at once, on the caller's thread.
        let mut named = unnamed_record(ID);
        named.container.as_mut().unwrap().name = "x".into();
        pipeline.save(named);
        assert_eq!(rx.try_recv().unwrap().1.container.unwrap().name, "x");
        pipeline.save(unnamed_record("bqc1"));
        assert_eq!(rx.try_recv().unwrap().1.container.unwrap().id, "bqc1");

        let (at, first) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let c = first.container.unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), (ID, "late-name"));
        assert!(at - t0 >= Duration::from_millis(600), "{:?}", at - t0);
        // The other one is never named: saved by id only after the wait, and not held again.
        let (at, second) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        let c = second.container.unwrap();
        assert_eq!((c.id.as_str(), c.name.as_str()), (NEVER, ""));
        assert!(at - t0 >= LATE_METADATA_WAIT, "{:?}", at - t0);
        pipeline.save(unnamed_record(NEVER));
        assert_eq!(rx.try_recv().unwrap().1.container.unwrap().id, NEVER);

        // Held at shutdown: saved before stop returns; after it, records are saved at once.
        const THIRD: &str = "efefefefefefefefefefefefefefefefefefefefefefefefefefefefefefefef";
        pipeline.save(unnamed_record(THIRD));
        assert!(rx.try_recv().is_err(), "held");
        pipeline.stop();
        let (_, third) = rx.try_recv().expect("held record saved at stop");
        assert_eq!(third.container.unwrap().id, THIRD);
        const FOURTH: &str = "0101010101010101010101010101010101010101010101010101010101010101";
        pipeline.save(unnamed_record(FOURTH));
        assert_eq!(rx.try_recv().unwrap().1.container.unwrap().id, FOURTH);
        drop(server);
        let _ = std::fs::remove_dir_all(&root);
    }
}
