//! The store under real faults: a packet-drop storm with no rate limit, `kill -9` mid-storm,
//! a full disk, a truncated database, a SIGTERM with a full queue, and Elasticsearch answers
//! that are not bulk answers. Run as root, one test at a time under the kernel-test lock.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// What `kill -9` can lose at most (README): the queue's cap plus one group commit.
const KILL9_WINDOW: f64 =
    (bianque::store::queue::QUEUE_MAX_RECORDS + bianque::store::BATCH_MAX) as f64;

/// `--disable` for every tracer but dropwatch: the store sees only the storm's records.
fn only_dropwatch() -> Vec<&'static str> {
    let mut args = Vec::new();
    for spec in bianque::tracer::registry() {
        if spec.name != "dropwatch" {
            args.push("--disable");
            args.push(spec.name);
        }
    }
    args
}

fn storm_config(port: u16, extra: &str) -> String {
    format!("[events.dropwatch]\nmax_events_per_second = 0\nports = [{port}]\n{extra}")
}

/// UDP floods to a closed port from `threads` threads until dropped.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(port: u16, threads: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|i| {
                let stop = stop.clone();
                std::thread::Builder::new()
                    .name(format!("flood{i}"))
                    .spawn(move || {
                        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
                        while !stop.load(Ordering::Relaxed) {
                            for _ in 0..256 {
                                let _ = s.send_to(b"x", ("127.0.0.1", port));
                            }
                        }
                    })
                    .expect("spawn a flood thread")
            })
            .collect();
        Flood { stop, threads }
    }

    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sum of a family's samples (all label sets).
fn family_sum(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn value(text: &str, series: &str) -> f64 {
    metric_value(text, series).unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Every drop the kernel counted is stored, refused by the store, suppressed, lost in the ring
/// buffer, filtered, or not recorded on purpose (normal teardown, the agent's own traffic — the
/// test's scrapes close connections): (counted, accounted) from one scrape.
fn drop_accounting(text: &str) -> (f64, f64) {
    let counted = family_sum(text, "bianque_dropwatch_events_total");
    let accounted = value(text, "bianque_store_records_written_total")
        + value(text, "bianque_store_refused_total")
        + value(text, "bianque_store_write_errors_total")
        + value(text, "bianque_dropwatch_suppressed_total")
        + value(text, "bianque_dropwatch_ringbuf_lost_total")
        + value(text, "bianque_dropwatch_filtered_total")
        + family_sum(text, "bianque_dropwatch_not_recorded_total");
    (counted, accounted)
}

/// The README's cap for what a no-limit storm adds to the agent's RSS (over its idle RSS: the
/// test runs the debug build, whose resident text alone is ~35 MB).
const STORM_RSS_GROWTH_CAP_KB: u64 = 32 * 1024;

#[test]
fn a_60s_storm_without_a_limit_stays_under_the_memory_cap_and_every_drop_is_accounted() {
    let port = closed_udp_port();
    let config = storm_config(port, "[store]\nretention_max_size_bytes = 67108864\n");
    let agent = Agent::start(&config, &only_dropwatch());
    let idle_kb = agent.rss_kb();
    let mut flood = Flood::start(port, 2);
    let t0 = Instant::now();
    let mut peak_kb = 0;
    while t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(500));
        peak_kb = peak_kb.max(agent.rss_kb());
    }
    flood.stop();
    let text = agent.metrics();
    let written = value(&text, "bianque_store_records_written_total");
    let lost = value(&text, "bianque_dropwatch_ringbuf_lost_total");
    eprintln!(
        "storm 60 s: RSS idle {idle_kb} kB, peak {peak_kb} kB; written {written}, ring-buffer lost {lost}, queue {}",
        value(&text, "bianque_store_queue_length")
    );
    assert!(
        peak_kb.saturating_sub(idle_kb) < STORM_RSS_GROWTH_CAP_KB,
        "RSS grew from {idle_kb} to {peak_kb} kB (cap {STORM_RSS_GROWTH_CAP_KB} kB of growth); log:\n{}",
        agent.log()
    );
    assert!(written > 100_000.0, "the writer kept writing: {written}");
    assert!(lost > 0.0, "back-pressure reached the kernel's ring buffer");
    // Once the queue drained, every counted drop is accounted for, exactly.
    let mut last = (0.0, 0.0);
    let balanced = wait_until(Duration::from_secs(20), || {
        last = drop_accounting(&agent.metrics());
        last.0 == last.1 && last.0 > 0.0
    });
    assert!(
        balanced,
        "counted {} drops, accounted {}; /metrics:\n{}",
        last.0,
        last.1,
        agent.metrics()
    );
    assert_eq!(
        value(&agent.metrics(), "bianque_store_refused_total"),
        0.0,
        "a writer that keeps up makes savers wait, it does not refuse"
    );
    let after_kb = agent.rss_kb();
    assert!(
        after_kb.saturating_sub(idle_kb) < STORM_RSS_GROWTH_CAP_KB,
        "after the storm: {after_kb} kB (idle {idle_kb} kB)"
    );
}

/// Holds the store's write lock from another connection (an operator's `sqlite3` session, a
/// backup): the writer waits on it and retries, and the queue fills up behind it.
fn hold_write_lock(agent: &Agent) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(agent.data_dir().join(bianque::store::DB_FILE))
        .expect("open the store");
    conn.execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    conn
}

/// Starts a storm and stalls the writer until the queue is full; returns the flood.
fn storm_with_a_full_queue(agent: &Agent, port: u16) -> (Flood, rusqlite::Connection) {
    let flood = Flood::start(port, 2);
    assert!(wait_until(Duration::from_secs(10), || value(
        &agent.metrics(),
        "bianque_store_records_written_total"
    ) > 1000.0));
    let lock = hold_write_lock(agent);
    let full = bianque::store::queue::QUEUE_MAX_RECORDS as f64;
    assert!(
        wait_until(Duration::from_secs(30), || value(
            &agent.metrics(),
            "bianque_store_queue_length"
        ) >= full),
        "the queue did not fill: {}; log:\n{}",
        value(&agent.metrics(), "bianque_store_queue_length"),
        agent.log()
    );
    (flood, lock)
}

#[test]
fn kill9_mid_storm_loses_at_most_the_window_and_the_loss_is_reported_after_restart() {
    let port = closed_udp_port();
    let config = storm_config(port, "");
    let agent = Agent::start(&config, &only_dropwatch());
    let (mut flood, lock) = storm_with_a_full_queue(&agent, port);
    let text = agent.metrics();
    let accepted = value(&text, "bianque_store_records_accepted_total");
    let queued = value(&text, "bianque_store_queue_length");
    assert!(
        wait_until(Duration::from_secs(5), || agent.get("/readyz").0 == 503),
        "a stuck writer makes the agent not ready: {:?}",
        agent.get("/readyz")
    );
    let dir = agent.kill9();
    flood.stop();
    drop(lock);
    eprintln!("kill -9 with a full queue: accepted {accepted}, queued {queued}");

    let agent = Agent::start_in(dir, &config, &only_dropwatch());
    let text = agent.metrics();
    let lost = value(&text, "bianque_store_lost_at_start_records");
    eprintln!("reported lost after the restart: {lost} (window {KILL9_WINDOW})");
    assert!(
        lost >= queued.min(KILL9_WINDOW) && lost <= KILL9_WINDOW,
        "lost {lost}, queued {queued} (window {KILL9_WINDOW}); log:\n{}",
        agent.log()
    );
    assert!(
        agent.log().contains("accepted records it never wrote"),
        "{}",
        agent.log()
    );
    let notes = agent.events("tracer=store&limit=10");
    let note = notes
        .iter()
        .find(|n| n["tracer_data"]["event"] == "records_lost")
        .unwrap_or_else(|| panic!("no records_lost record: {notes:?}"));
    assert_eq!(note["tracer_data"]["lost_records"].as_f64(), Some(lost));
    // What was accepted before the kill is stored or reported lost.
    let store = bianque::store::Store::open_read_only(&agent.data_dir()).expect("the store");
    let stored = store
        .query(&bianque::store::Query {
            tracer: Some("dropwatch".into()),
            limit: 10_000_000,
            ..Default::default()
        })
        .expect("query")
        .len() as f64;
    assert!(
        stored + lost >= accepted,
        "stored {stored} + lost {lost} < accepted {accepted} before the kill"
    );
}

#[test]
fn sigterm_with_a_full_queue_drains_within_2s_and_loses_nothing() {
    let port = closed_udp_port();
    let config = storm_config(port, "");
    let mut agent = Agent::start(&config, &only_dropwatch());
    let (mut flood, lock) = storm_with_a_full_queue(&agent, port);
    let queued = value(&agent.metrics(), "bianque_store_queue_length");
    // The lock goes and SIGTERM comes at once: the whole queue is written on the way out.
    drop(lock);
    let t0 = Instant::now();
    let status = agent.terminate(Duration::from_secs(10));
    let took = t0.elapsed();
    flood.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}; log:\n{}",
        agent.log()
    );
    eprintln!("SIGTERM with {queued} records queued: exited in {took:?}");
    if std::env::var_os("SHOW_LOG").is_some() {
        eprintln!("{}", agent.log());
    }
    assert!(
        took < Duration::from_secs(2),
        "took {took:?}; log:\n{}",
        agent.log()
    );
    assert!(
        !agent.log().contains("failed for good"),
        "nothing given up:\n{}",
        agent.log()
    );
    let dir = std::mem::replace(&mut agent.dir, TempDir(std::path::PathBuf::new()));
    drop(agent);
    let agent = Agent::start_in(dir, &config, &only_dropwatch());
    assert_eq!(
        value(&agent.metrics(), "bianque_store_lost_at_start_records"),
        0.0,
        "log:\n{}",
        agent.log()
    );
    assert!(agent.events("tracer=store&limit=10").is_empty());
}

/// A tmpfs of `size_mib` mounted at `at`; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        sh(&format!(
            "mount -t tmpfs -o size={size_mib}m,mode=0700 bianque-test {}",
            at.display()
        ));
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        sh_quiet(&format!("umount -l {}", self.0.display()));
    }
}

#[test]
fn a_full_disk_makes_the_store_not_ready_with_few_errors_and_it_recovers_once_space_returns() {
    let dir = TempDir::new("fulldisk");
    // The agent's data dir is a 20 MiB file system.
    let fs = Tmpfs::mount(&dir.path().join("data"), 20);
    let port = closed_udp_port();
    let config = storm_config(port, "[store]\nretention_max_size_bytes = 8388608\n");
    let agent = Agent::start_in(dir, &config, &only_dropwatch());
    let mut flood = Flood::start(port, 1);
    assert!(wait_until(Duration::from_secs(10), || value(
        &agent.metrics(),
        "bianque_store_records_written_total"
    ) > 10_000.0));
    // Fill the file system to the brim.
    let filler = fs.0.join("filler");
    sh_quiet(&format!(
        "dd if=/dev/zero of={} bs=64k 2>/dev/null",
        filler.display()
    ));
    // The store says so: not ready, retries counted, errors logged at a bounded rate.
    assert!(
        wait_until(Duration::from_secs(15), || agent.get("/readyz").0 == 503),
        "{:?}; log:\n{}",
        agent.get("/readyz"),
        agent.log()
    );
    std::thread::sleep(Duration::from_secs(10));
    let text = agent.metrics();
    assert!(
        value(&text, "bianque_store_write_retries_total") > 0.0,
        "{text}"
    );
    assert_eq!(value(&text, "bianque_store_writable"), 0.0);
    let errors = agent.log().lines().filter(|l| l.contains("ERROR")).count();
    assert!(errors <= 5, "{errors} ERROR lines:\n{}", agent.log());
    // Space comes back: the store writes again by itself, without a restart.
    let _ = std::fs::remove_file(&filler);
    let before = value(&agent.metrics(), "bianque_store_records_written_total");
    assert!(
        wait_until(Duration::from_secs(20), || value(
            &agent.metrics(),
            "bianque_store_records_written_total"
        ) > before + 5000.0
            && agent.get("/readyz").0 == 200),
        "/metrics:\n{}\nlog:\n{}",
        agent.metrics(),
        agent.log()
    );
    flood.stop();
    drop(agent);
}

#[test]
fn a_truncated_store_is_quarantined_and_the_agent_runs_and_stores() {
    let port = closed_udp_port();
    let config = storm_config(port, "");
    let mut agent = Agent::start(&config, &only_dropwatch());
    // Enough records for a file of many pages.
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..4000 {
        let _ = s.send_to(b"x", ("127.0.0.1", port));
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    assert!(wait_until(Duration::from_secs(10), || value(
        &agent.metrics(),
        "bianque_store_records_written_total"
    ) >= 3000.0));
    assert!(agent.terminate(Duration::from_secs(10)).is_some());
    let db = agent.data_dir().join(bianque::store::DB_FILE);
    let len = std::fs::metadata(&db).expect("the store").len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .and_then(|f| f.set_len(len / 3))
        .expect("truncate the store");
    let dir = std::mem::replace(&mut agent.dir, TempDir(std::path::PathBuf::new()));
    drop(agent);

    let agent = Agent::start_in(dir, &config, &only_dropwatch());
    assert_eq!(
        value(&agent.metrics(), "bianque_store_quarantined_total"),
        1.0
    );
    assert!(
        agent.log().contains("the store is corrupt"),
        "{}",
        agent.log()
    );
    let notes = agent.events("tracer=store&limit=10");
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!(notes[0]["tracer_data"]["event"], "store_quarantined");
    let moved = notes[0]["tracer_data"]["quarantined_path"]
        .as_str()
        .unwrap_or("");
    assert!(std::path::Path::new(moved).exists(), "{moved}");
    let _ = s.send_to(b"x", ("127.0.0.1", port));
    assert!(
        wait_until(Duration::from_secs(5), || !agent
            .events(&format!("tracer=dropwatch&data.dport={port}&limit=10"))
            .is_empty()),
        "the fresh store stores; log:\n{}",
        agent.log()
    );
    assert_eq!(agent.get("/readyz").0, 200);
}

/// The requests a fake server saw: when, and the request line.
type Requests = Arc<Mutex<Vec<(Instant, String)>>>;

/// A loopback HTTP server answering each request with `answer(path)` = (status line, extra
/// headers, body); records (time, method and path) of every request.
fn fake_es(
    answer: impl Fn(&str) -> (&'static str, &'static str, &'static str) + Send + 'static,
) -> (String, Requests) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", listener.local_addr().expect("addr"));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            // One request per connection loop iteration (keep-alive).
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut len = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let request = line.trim().to_string();
                let path = request.split(' ').nth(1).unwrap_or("").to_string();
                log.lock().expect("log").push((Instant::now(), request));
                let (status, headers, text) = answer(&path);
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{text}",
                    text.len()
                );
            }
        }
    });
    (addr, seen)
}

fn bulk_requests(seen: &Mutex<Vec<(Instant, String)>>) -> Vec<Instant> {
    seen.lock()
        .expect("log")
        .iter()
        .filter(|(_, r)| r.starts_with("POST /_bulk"))
        .map(|(t, _)| *t)
        .collect()
}

fn shipper_config(addr: &str, port: u16) -> String {
    format!(
        "[events.dropwatch]\nports = [{port}]\n[storage.elasticsearch]\naddresses = [\"{addr}\"]\nflush_interval_ms = 100\nretry_initial_backoff_ms = 50\nretry_max_backoff_ms = 300\n"
    )
}

#[test]
fn an_acknowledged_answer_without_items_ships_nothing_and_says_why() {
    let (addr, seen) = fake_es(|_| ("200 OK", "", r#"{"acknowledged":true}"#));
    let port = closed_udp_port();
    let agent = Agent::start(&shipper_config(&addr, port), &only_dropwatch());
    send_udp_from_thread("acked", &format!("127.0.0.1:{port}"), 20);
    assert!(
        wait_until(Duration::from_secs(15), || bulk_requests(&seen).len() >= 3),
        "bulk requests: {:?}; log:\n{}",
        seen.lock().map(|s| s.len()),
        agent.log()
    );
    let text = agent.metrics();
    assert_eq!(value(&text, "bianque_shipper_shipped_total"), 0.0, "{text}");
    assert!(value(&text, "bianque_shipper_malformed_answers_total") >= 1.0);
    assert!(value(&text, "bianque_shipper_backlog") >= 20.0, "{text}");
    let (_, status) = agent.get("/shipper");
    assert!(status.contains("not a bulk answer"), "{status}");
    assert!(agent.log().contains("not a bulk answer"), "{}", agent.log());
}

#[test]
fn retry_after_is_honoured() {
    let (addr, seen) = fake_es(|path| {
        if path.starts_with("/_bulk") {
            (
                "429 Too Many Requests",
                "Retry-After: 2\r\n",
                r#"{"error":"busy"}"#,
            )
        } else {
            ("200 OK", "", r#"{"acknowledged":true}"#)
        }
    });
    let port = closed_udp_port();
    let agent = Agent::start(&shipper_config(&addr, port), &only_dropwatch());
    send_udp_from_thread("retryafter", &format!("127.0.0.1:{port}"), 5);
    assert!(
        wait_until(Duration::from_secs(20), || bulk_requests(&seen).len() >= 3),
        "log:\n{}",
        agent.log()
    );
    let times = bulk_requests(&seen);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        // The back-off alone is at most 300 ms.
        assert!(
            gap >= Duration::from_millis(1900),
            "{gap:?} between bulk requests"
        );
    }
    assert_eq!(
        value(&agent.metrics(), "bianque_shipper_shipped_total"),
        0.0
    );
}
