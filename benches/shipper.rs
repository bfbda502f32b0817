//! Shipper cost, measured side by side in one run (the machines are shared and noisy).
//! Run: `cargo bench --bench shipper` (or `make bench`); needs osmem-server (`make test-deps`).
//!
//! 1. Throughput to a real OpenSearch-API server (osmem-server): the shipper draining a store of
//!    N records vs a plain bulk client (reqwest, the same documents already in memory, the same
//!    batch size and gzip) sending them to a fresh server; ratio shipper / peer, target ≥ 0.8.
//! 2. Memory while a backlog of 1 M records drains: a real agent (`bianque run`, all tracers
//!    off) ships a store filled through the library API to a bulk sink in this process (osmem
//!    keeps every document in memory, ~15 KB each, so 1 M would need ~15 GB); peak RSS of the
//!    agent, target ≤ 50 MB. The sink answers like Elasticsearch, one item per action.
//!
//! `BENCH_RECORDS` (default 10000) and `BENCH_BACKLOG` (default 1000000) change the sizes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bianque::record::{now_ns, ContainerFields, Record, TracerType};
use bianque::store::shipper::ElasticsearchConfig;
use bianque::store::shipper::{index_template, Shipper};
use bianque::store::{Retention, Store};

mod common;

use common::{free_port, BIN};
const BATCH: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn osmem_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OSMEM_BIN") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-deps/osmem");
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output()
        .expect("osmem-server venv: run `make test-deps`");
    assert!(
        out.status.success(),
        "osmem-server missing: run `make test-deps`"
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A fresh osmem-server, killed on drop.
struct Osmem {
    child: Child,
    url: String,
}

impl Osmem {
    fn start() -> Osmem {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(osmem_bin())
            .args(["--addr", &addr, "--no-stdin-watch", "--no-ja"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn osmem-server");
        let url = format!("http://{addr}");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "osmem did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Osmem { child, url }
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A record shaped like a dropwatch record (~600 bytes of JSON).
fn record(i: u64, t: i64) -> Record {
    let container = (i % 3 == 0).then(|| ContainerFields {
        id: format!("{:064x}", i % 17),
        name: format!("web-{}", i % 17),
        kind: "docker".into(),
        ..Default::default()
    });
    Record::new(
        "dropwatch",
        TracerType::Event,
        t,
        "bench-host",
        "bench",
        container,
        serde_json::json!({
            "drop_reason": "NO_SOCKET", "protocol": "udp", "saddr": "127.0.0.1",
            "sport": 40000 + (i % 20000), "daddr": "127.0.0.1", "dport": 53,
            "comm": "bench-sender", "pid": 4242, "tid": 4242, "cpu": i % 2,
            "drop_location": "__udp4_lib_rcv+0x4bc", "netdev_name": "lo", "netdev_ifindex": 1,
            "net_namespace_inum": 4026531833u64, "memory_cgroup_path": "/system.slice/bench.service",
            "packet_len_bytes": 29, "l3_protocol": "ipv4", "drop_reason_code": 3, "seq": i
        }),
    )
}

/// Fills a store in `dir` with `n` records through the library, in chunks (bounded memory).
fn fill_store(dir: &Path, n: u64) {
    let store = Store::open(
        dir,
        Retention {
            max_age: Duration::from_secs(24 * 3600),
            max_size_bytes: 1 << 40,
        },
    )
    .expect("open store");
    let t0 = now_ns() - n as i64 * 1000;
    let chunk = 20_000u64;
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        for j in i..end {
            store.save(record(j, t0 + j as i64 * 1000));
        }
        while store.stats().written.load(Ordering::Relaxed) < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        i = end;
    }
    store.close();
}

fn es_config(url: &str) -> ElasticsearchConfig {
    ElasticsearchConfig {
        addresses: vec![url.to_string()],
        batch_max_records: BATCH,
        flush_interval_ms: 50,
        ..Default::default()
    }
}

/// The shipper draining the store at `dir`: records/s.
fn ship_with_shipper(dir: &Path, url: &str, n: u64) -> f64 {
    let t0 = Instant::now();
    let shipper =
        Shipper::start(&es_config(url), &dir.join(bianque::store::DB_FILE)).expect("start shipper");
    while shipper.stats().shipped.load(Ordering::Relaxed)
        + shipper.stats().failed.load(Ordering::Relaxed)
        < n
    {
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "shipper too slow: {:?}",
            shipper.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = t0.elapsed();
    assert_eq!(shipper.stats().failed.load(Ordering::Relaxed), 0);
    shipper.stop(Duration::from_secs(2));
    n as f64 / took.as_secs_f64()
}

/// A plain bulk client: the same documents (already in memory), batches of the same size,
/// gzip, `index` actions with `_id`; the template installed first. Records/s.
fn ship_with_plain_client(docs: &[(String, String)], url: &str) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::new();
        let t0 = Instant::now();
        let tpl = index_template("peer-%Y.%m.%d", bianque::config::Compat::Bianque);
        let r = client
            .put(format!("{url}/_index_template/peer"))
            .header("Content-Type", "application/json")
            .body(tpl.to_string())
            .send()
            .await
            .expect("template");
        assert!(r.status().is_success());
        let day = chrono::Utc::now().format("peer-%Y.%m.%d").to_string();
        for chunk in docs.chunks(BATCH) {
            let mut body = Vec::new();
            for (id, doc) in chunk {
                body.extend_from_slice(
                    format!("{{\"index\":{{\"_index\":\"{day}\",\"_id\":\"{id}\"}}}}\n").as_bytes(),
                );
                body.extend_from_slice(doc.as_bytes());
                body.push(b'\n');
            }
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            enc.write_all(&body).expect("gzip");
            let gz = enc.finish().expect("gzip");
            let resp = client
                .post(format!("{url}/_bulk"))
                .header("Content-Type", "application/x-ndjson")
                .header("Content-Encoding", "gzip")
                .body(gz)
                .send()
                .await
                .expect("bulk");
            assert!(resp.status().is_success());
            let bytes = resp.bytes().await.expect("bulk answer");
            let v: serde_json::Value = serde_json::from_slice(&bytes).expect("bulk json");
            assert_eq!(v["errors"], false, "peer bulk errors");
        }
        docs.len() as f64 / t0.elapsed().as_secs_f64()
    })
}

/// A `_bulk` sink that answers like Elasticsearch (one created item per action).
fn start_sink() -> (String, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let port = free_port();
    let count = received.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use axum::routing::{get, post, put};
            let app = axum::Router::new()
                .route("/", get(|| async { "{}" }))
                .route(
                    "/_index_template/{name}",
                    put(|| async { "{\"acknowledged\":true}" }),
                )
                .route(
                    "/_bulk",
                    post(move |body: axum::body::Bytes| {
                        let count = count.clone();
                        async move {
                            use std::io::Read;
                            let mut text = Vec::new();
                            let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut text);
                            let n = text.iter().filter(|&&b| b == b'\n').count() / 2;
                            count.fetch_add(n as u64, Ordering::Relaxed);
                            let mut out = String::from("{\"took\":1,\"errors\":false,\"items\":[");
                            for i in 0..n {
                                if i > 0 {
                                    out.push(',');
                                }
                                out.push_str("{\"index\":{\"status\":201,\"result\":\"created\"}}");
                            }
                            out.push_str("]}");
                            ([("content-type", "application/json")], out)
                        }
                    }),
                )
                .layer(axum::extract::DefaultBodyLimit::disable());
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind sink");
            let _ = axum::serve(l, app).await;
        });
    });
    (format!("http://127.0.0.1:{port}"), received)
}

fn proc_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let n = env_usize("BENCH_RECORDS", 10_000) as u64;
    let backlog = env_usize("BENCH_BACKLOG", 1_000_000) as u64;
    let base = std::env::temp_dir().join(format!("bianque-bench-shipper-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);

    // 1. Throughput against osmem.
    let dir = base.join("small");
    fill_store(&dir, n);
    let docs: Vec<(String, String)> = {
        let store = Store::open_read_only(&dir).expect("store");
        let rows = store
            .query(&bianque::store::Query {
                limit: n as usize,
                ..Default::default()
            })
            .expect("read");
        rows.into_iter()
            .rev()
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(&b).expect("json");
                (v["tracer_id"].as_str().unwrap_or_default().to_string(), b)
            })
            .collect()
    };
    let mut ratios = Vec::new();
    for round in 0..2 {
        // Alternate the order; each side gets a fresh server.
        let (peer, ours) = if round % 2 == 0 {
            let os = Osmem::start();
            let peer = ship_with_plain_client(&docs, &os.url);
            drop(os);
            let os = Osmem::start();
            // A fresh cursor each round.
            reset_cursor(&dir);
            let ours = ship_with_shipper(&dir, &os.url, n);
            (peer, ours)
        } else {
            let os = Osmem::start();
            reset_cursor(&dir);
            let ours = ship_with_shipper(&dir, &os.url, n);
            drop(os);
            let os = Osmem::start();
            let peer = ship_with_plain_client(&docs, &os.url);
            (peer, ours)
        };
        println!(
            "round {round}: {n} records to osmem-server: shipper {ours:.0}/s, plain bulk client {peer:.0}/s, ratio {:.2}",
            ours / peer
        );
        ratios.push(ours / peer);
    }
    let ratio = ratios.iter().sum::<f64>() / ratios.len() as f64;
    println!(
        "shipping throughput ratio (shipper / plain bulk client, same documents): {ratio:.2} (target >= 0.8) {}",
        if ratio >= 0.8 { "PASS" } else { "FAIL" }
    );

    // 2. RSS while a backlog drains, in a real agent process.
    let big = base.join("big");
    let t0 = Instant::now();
    fill_store(&big, backlog);
    println!(
        "filled a store with {backlog} records in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let (sink, received) = start_sink();
    let cfg = base.join("agent.toml");
    std::fs::write(
        &cfg,
        format!("[storage.elasticsearch]\naddresses = [\"{sink}\"]\nflush_interval_ms = 100\n"),
    )
    .expect("config");
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&big)
        .arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()));
    for spec in bianque::tracer::TRACERS.iter() {
        cmd.arg("--disable").arg(spec.name);
    }
    let mut agent = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn agent");
    let pid = agent.id();
    let t0 = Instant::now();
    let mut max_rss = 0;
    while received.load(Ordering::Relaxed) < backlog {
        max_rss = max_rss.max(proc_kb(pid, "VmRSS:"));
        if t0.elapsed() > Duration::from_secs(1800) || agent.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    let hwm = proc_kb(pid, "VmHWM:");
    let _ = agent.kill();
    let _ = agent.wait();
    let got = received.load(Ordering::Relaxed);
    println!(
        "drained {got} of {backlog} records in {:.1} s ({:.0} records/s to a bulk sink)",
        took.as_secs_f64(),
        got as f64 / took.as_secs_f64()
    );
    let peak_mb = hwm.max(max_rss) as f64 / 1024.0;
    println!(
        "agent RSS while the backlog drained: peak {peak_mb:.1} MB (VmHWM), max sampled {:.1} MB (target <= 50 MB) {}",
        max_rss as f64 / 1024.0,
        if peak_mb <= 50.0 && got >= backlog { "PASS" } else { "FAIL" }
    );
    let _ = std::fs::remove_dir_all(&base);
}

/// Forgets how far the shipper got (each round ships the whole store again).
fn reset_cursor(dir: &Path) {
    let conn = rusqlite::Connection::open(dir.join(bianque::store::DB_FILE)).expect("db");
    conn.execute("DELETE FROM shipper_state", [])
        .expect("reset");
}
