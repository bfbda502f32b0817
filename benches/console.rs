//! `cargo bench --bench console` (as root; needs chromium and chromium-driver): the console's
//! budgets, each printed as a ratio against its budget and, where timing matters, against a
//! baseline measured in the same run:
//! - the page and its assets, uncompressed, against 300 KB;
//! - first render in a real headless Chromium on loopback (navigation start to the first view
//!   on screen), against 200 ms, and against loading the agent's bare `/healthz` JSON;
//! - the in-memory vitals history, full (an hour of samples), against 2 MB;
//! - `/metrics` scrape latency while a console is served (every second the page and every call
//!   the overview makes, and a live tail open), against scrapes without it, alternating.
//!
//! Asserts nothing about timings; prints the numbers.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{agent_command, free_port, http, median};
use fantoccini::ClientBuilder;
use serde_json::json;

const RENDERS: usize = 15;
const ROUNDS: usize = 8;
const PHASE: Duration = Duration::from_secs(3);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_ms(addr: &str, path: &str) -> f64 {
    let t = Instant::now();
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    t.elapsed().as_secs_f64() * 1000.0
}

/// What one console user costs the agent: every second, the page, its assets and the calls the
/// overview makes (its /metrics scrape for losses every 30 s, as the page keeps it); a live tail
/// stays open the whole time.
fn console_user(addr: String, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut tail = TcpStream::connect(&addr).expect("connect");
        tail.write_all(format!("GET /v1/events/watch HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
            .unwrap();
        let mut loads = 0;
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            for p in [
                "/",
                "/console/app.js",
                "/console/app.css",
                "/version",
                "/tracers",
                "/console/activity?since=1h&bucket_secs=60",
                "/console/vitals",
                "/incidents?open=true&limit=20",
            ] {
                let _ = http(&addr, "GET", p, &[]);
            }
            // The page scrapes /metrics for its loss counters at most every 30 s.
            if loads % 30 == 0 {
                let _ = http(&addr, "GET", "/metrics", &[]);
            }
            loads += 1;
            while t.elapsed() < Duration::from_secs(1) && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        drop(tail);
        loads
    })
}

fn main() {
    let dir = std::env::temp_dir().join(format!("bq-bench-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _agent = Proc(
        agent_command(&addr, &dir.join("data"), None, &["cpusys", "cpuidle"])
            .spawn()
            .expect("start bianque"),
    );
    let start = Instant::now();
    while http(&addr, "GET", "/readyz", &[]).0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "agent not ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));

    // 1. Size.
    let mut total = 0;
    for (path, _, _) in bianque::server::console::ASSETS {
        let (code, body) = http(&addr, "GET", path, &[]);
        assert_eq!(code, 200, "{path}");
        println!("asset {path:<18} {:>7} bytes", body.len());
        total += body.len();
    }
    println!(
        "page + assets: {total} bytes uncompressed; budget 307200: ratio {:.3}",
        total as f64 / 307_200.0
    );

    // 2. First render in a real browser.
    let port = free_port();
    let _driver = Proc(
        Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver"),
    );
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {"binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1000"]},
    });
    let client = rt
        .block_on(
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps.as_object().unwrap().clone())
                .connect(&format!("http://127.0.0.1:{port}")),
        )
        .expect("a Chromium session");
    let mut renders = Vec::new();
    let mut baselines = Vec::new();
    for i in 0..RENDERS {
        rt.block_on(client.goto(&format!("http://{addr}/healthz?n={i}")))
            .unwrap();
        let b = rt
            .block_on(client.execute(
                "return performance.getEntriesByType('navigation')[0].loadEventEnd;",
                vec![],
            ))
            .unwrap();
        baselines.push(b.as_f64().unwrap_or(f64::NAN));
        rt.block_on(client.goto(&format!("http://{addr}/?n={i}#/")))
            .unwrap();
        let t = Instant::now();
        loop {
            let v = rt
                .block_on(client.execute(
                    "const m = performance.getEntriesByName('bianque-first-render')[0]; return m ? m.startTime : null;",
                    vec![],
                ))
                .unwrap();
            if let Some(ms) = v.as_f64() {
                renders.push(ms);
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "the console did not render"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let _ = rt.block_on(client.close());
    let (r, b) = (median(renders.clone()), median(baselines));
    println!(
        "first render (overview, {RENDERS} loads): median {r:.1} ms, max {:.1} ms; budget 200 ms: ratio {:.3}; \
         vs loading /healthz ({b:.1} ms): ratio {:.2}",
        renders.iter().cloned().fold(0.0, f64::max),
        r / 200.0,
        r / b
    );

    // 3. History: a full hour of samples.
    let vitals = bianque::server::vitals::Vitals::new(bianque::host::HostRoot::new("/"));
    for i in 0..bianque::server::vitals::CAPACITY + 5 {
        vitals.sample(i as i64 * 5000, Some(i as u64));
    }
    let samples = vitals.samples();
    let cap = bianque::server::vitals::Vitals::capacity_bytes();
    println!(
        "vitals history: {} samples held in {cap} bytes ({} bytes as JSON); budget 2097152: ratio {:.4}",
        samples.len(),
        serde_json::to_string(&samples).unwrap().len(),
        cap as f64 / 2_097_152.0
    );

    // 4. /metrics while the console is served, alternating phases.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let mut loads = 0;
    for round in 0..ROUNDS {
        for serve in [round % 2 == 0, round % 2 != 0] {
            let stop = Arc::new(AtomicBool::new(false));
            let user = serve.then(|| console_user(addr.clone(), stop.clone()));
            let t = Instant::now();
            while t.elapsed() < PHASE {
                let ms = get_ms(&addr, "/metrics");
                if serve {
                    with.push(ms)
                } else {
                    without.push(ms)
                }
            }
            stop.store(true, Ordering::Relaxed);
            if let Some(u) = user {
                loads += u.join().unwrap_or(0);
            }
        }
    }
    let (w, wo) = (median(with.clone()), median(without.clone()));
    println!(
        "/metrics scrape: median {wo:.2} ms alone ({} scrapes), {w:.2} ms while a console is served \
         ({} scrapes, {loads} console loads): ratio {:.3} (budget 1.05)",
        without.len(),
        with.len(),
        w / wo
    );
    let _ = std::fs::remove_dir_all(&dir);
}
