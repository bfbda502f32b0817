//! Delivery end to end: the Elasticsearch/OpenSearch shipper against a real OpenSearch-API
//! server (osmem-server), the live stream, and queries — all fed by real packet drops.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::osmem::Osmem;
use common::*;
use serde_json::{json, Value};

const INDEX: &str = "bianque-*";
const PASSWORD: &str = "s3cret-password-not-for-logs";

fn es_config(os: &Osmem, extra: &str) -> String {
    es_config_flush(os, 100, extra)
}

fn es_config_flush(os: &Osmem, flush_ms: u64, extra: &str) -> String {
    format!(
        "[storage.elasticsearch]\naddresses = [\"{}\"]\nusername = \"bianque\"\npassword = \"{PASSWORD}\"\nflush_interval_ms = {flush_ms}\nretry_initial_backoff_ms = 50\nretry_max_backoff_ms = 500\n{extra}",
        os.url()
    )
}

/// Documents in the index whose `tracer_data.dport` is `port`.
fn docs_for_port(os: &Osmem, port: u16) -> Vec<Value> {
    os.search(INDEX, json!({"term": {"tracer_data.dport": port}}), 5000)
}

/// Sends `n` UDP datagrams to a closed port, paced so that no ring buffer overflows.
fn send_paced(port: u16, n: usize) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for i in 0..n {
        let _ = s.send_to(b"x", ("127.0.0.1", port));
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A memory cgroup laid out like Docker's cgroupfs driver (`/docker/<id>`): processes in it
/// belong to "container" `<id>` for the agent. Removed on drop.
struct DockerLikeCgroup {
    dir: std::path::PathBuf,
    id: String,
}

impl DockerLikeCgroup {
    fn new() -> DockerLikeCgroup {
        let id = format!("{:0>64}", format!("{:x}b1a2", std::process::id()));
        let dir = std::path::PathBuf::from("/sys/fs/cgroup/memory/docker").join(&id);
        std::fs::create_dir_all(&dir).expect("create a memory cgroup under /docker");
        DockerLikeCgroup { dir, id }
    }

    /// Runs `bash -c cmd` inside the cgroup and waits for it.
    fn run(&self, cmd: &str) {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec bash -c '{cmd}'",
                self.dir.display()
            ))
            .status()
            .expect("run in the cgroup");
        assert!(status.success(), "{cmd}");
    }
}

impl Drop for DockerLikeCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(self.dir.parent().unwrap_or(&self.dir));
    }
}

#[test]
fn provoked_drops_arrive_in_the_index_typed_and_searchable_by_tracer_and_container() {
    let os = Osmem::start();
    // Made before the agent starts, so its first cgroup scan sees it.
    let cg = DockerLikeCgroup::new();
    let port = closed_udp_port();
    let agent = Agent::start(
        &es_config(&os, &format!("[events.dropwatch]\nports = [{port}]\n")),
        &[],
    );
    send_udp_from_thread("bq-ship-host", &format!("127.0.0.1:{port}"), 3);
    cg.run(&format!(
        "for i in 1 2; do echo x > /dev/udp/127.0.0.1/{port}; done"
    ));
    assert!(
        wait_until(Duration::from_secs(10), || docs_for_port(&os, port).len()
            == 5),
        "in the index: {:?}\nlog:\n{}",
        docs_for_port(&os, port),
        agent.log()
    );
    // The template's types.
    let (code, mapping) = os.json("GET", "/bianque-*/_mapping", "");
    assert_eq!(code, 200, "{mapping}");
    let (_, m) = mapping.as_object().unwrap().iter().next().unwrap();
    let props = &m["mappings"]["properties"];
    assert_eq!(props["tracer_time"]["type"], "date", "{props}");
    assert_eq!(props["tracer_name"]["type"], "keyword");
    assert_eq!(props["tracer_id"]["type"], "keyword");
    assert_eq!(props["container_id"]["type"], "keyword");
    let data = &props["tracer_data"]["properties"];
    assert_eq!(data["dport"]["type"], "long", "{data}");
    assert_eq!(data["packet_len_bytes"]["type"], "long");
    assert_eq!(data["pid"]["type"], "long");
    assert_eq!(data["drop_reason"]["type"], "keyword");

    // _id is the record's tracer_id, and the document is the record as stored.
    for hit in docs_for_port(&os, port) {
        assert_eq!(hit["_id"], hit["_source"]["tracer_id"]);
        let (code, stored) = agent.get(&format!("/events/{}", hit["_id"].as_str().unwrap()));
        assert_eq!(code, 200);
        let stored: Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(stored, hit["_source"]);
    }
    // By tracer, by container.
    let by_tracer = os.search(
        INDEX,
        json!({"bool": {"filter": [
            {"term": {"tracer_name": "dropwatch"}},
            {"term": {"tracer_data.dport": port}}
        ]}}),
        100,
    );
    assert_eq!(by_tracer.len(), 5);
    let by_container = os.search(INDEX, json!({"term": {"container_id": cg.id}}), 100);
    assert_eq!(by_container.len(), 2, "{by_container:?}");
    for hit in &by_container {
        assert_eq!(hit["_source"]["container_type"], "normal");
        assert_eq!(hit["_source"]["tracer_data"]["dport"], port);
    }
    // A time range on the date field.
    let recent = os.search(
        INDEX,
        json!({"bool": {"filter": [
            {"range": {"tracer_time": {"gte": "now-10m"}}},
            {"term": {"tracer_data.dport": port}}
        ]}}),
        100,
    );
    assert_eq!(recent.len(), 5);

    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_shipper_backlog")
        == Some(0.0)));
    assert!(agent.metric("bianque_shipper_shipped_total").unwrap() >= 5.0);
    assert_eq!(agent.metric("bianque_shipper_failed_total"), Some(0.0));
    assert!(
        !agent.log().contains(PASSWORD),
        "the password is never logged"
    );
}

#[test]
fn an_outage_and_a_kill9_lose_nothing_and_duplicate_nothing() {
    let mut os = Osmem::start();
    let port = closed_udp_port();
    let config = es_config(
        &os,
        &format!("[events.dropwatch]\nmax_events_per_second = 5000\nports = [{port}]\n"),
    );
    let agent = Agent::start(&config, &[]);
    // Shipping works (template in place), then the server goes away.
    assert!(wait_until(Duration::from_secs(10), || os
        .json("GET", "/_index_template/bianque", "")
        .0
        == 200));
    os.stop();

    send_paced(port, 1000);
    let stored = || {
        agent
            .events(&format!("tracer=dropwatch&data.dport={port}&limit=10000"))
            .len()
    };
    assert!(
        wait_until(Duration::from_secs(10), || stored() == 1000),
        "stored {} of 1000; log:\n{}",
        stored(),
        agent.log()
    );
    // The shipper is retrying against the dead server; the records wait in the store.
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .metric("bianque_shipper_retried_total")
            .unwrap_or(0.0)
            > 0.0),
        "log:\n{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metric("bianque_shipper_backlog")
            .unwrap_or(0.0)
            >= 1000.0),
        "backlog {:?}",
        agent.metric("bianque_shipper_backlog")
    );
    let (_, st) = agent.get("/shipper");
    assert!(
        st.contains("\"last_error\":\"") && !st.contains("\"last_error\":\"\""),
        "{st}"
    );

    let dir = agent.kill9();
    // The agent comes back first, with the server still down: that is not fatal.
    let agent = Agent::start_in(dir, &config, &[]);
    std::thread::sleep(Duration::from_millis(300));
    os.restart();
    assert!(
        wait_until(Duration::from_secs(30), || docs_for_port(&os, port).len()
            >= 1000),
        "in the index: {}; log:\n{}",
        docs_for_port(&os, port).len(),
        agent.log()
    );
    assert!(wait_until(Duration::from_secs(10), || agent
        .metric("bianque_shipper_backlog")
        == Some(0.0)));
    let (_, refreshed) = os.json("POST", "/bianque-*/_refresh", "");
    let _ = refreshed;
    let hits = docs_for_port(&os, port);
    let ids: std::collections::HashSet<&str> =
        hits.iter().filter_map(|h| h["_id"].as_str()).collect();
    assert_eq!(hits.len(), 1000, "exactly the 1000 records");
    assert_eq!(ids.len(), 1000, "none twice");
    let (_, count) = os.json(
        "POST",
        "/bianque-*/_count",
        &json!({"query": {"term": {"tracer_data.dport": port}}}).to_string(),
    );
    assert_eq!(count["count"], 1000, "{count}");
    // The same ids as in the local store.
    let local: std::collections::HashSet<String> = agent
        .events(&format!("data.dport={port}&limit=10000"))
        .iter()
        .filter_map(|e| e["tracer_id"].as_str().map(String::from))
        .collect();
    assert_eq!(local.len(), 1000);
    assert!(local.iter().all(|id| ids.contains(id.as_str())));
}

#[test]
fn a_permanent_item_error_is_counted_and_reported_and_the_rest_lands() {
    let os = Osmem::start();
    let agent = Agent::start(
        &es_config_flush(&os, 1000, ""),
        &["--disable", "dropwatch", "--disable", "signal"],
    );
    assert!(wait_until(Duration::from_secs(10), || os
        .json("GET", "/_index_template/bianque", "")
        .0
        == 200));
    // Records written into the agent's store through the library, as a tracer would: the
    // template types `*_bytes` as long, so "lots" cannot be indexed.
    let now = bianque::record::now_ns();
    let mut ids = Vec::new();
    let bad_id;
    {
        let store = bianque::store::Store::open(
            &agent.data_dir(),
            bianque::store::Retention {
                max_age: Duration::from_secs(3600),
                max_size_bytes: 1 << 30,
            },
        )
        .unwrap();
        for i in 0..5i64 {
            let size = if i == 2 {
                json!("lots")
            } else {
                json!(100 + i)
            };
            let r = bianque::record::Record::new(
                "conflict_test",
                bianque::record::TracerType::Event,
                now + i,
                "h",
                "r",
                None,
                json!({"packet_len_bytes": size, "n": i}),
            );
            ids.push(r.tracer_id.clone());
            store.save(r);
        }
        bad_id = ids[2].clone();
        store.close();
    }
    let landed = || {
        os.search(
            INDEX,
            json!({"term": {"tracer_name": "conflict_test"}}),
            100,
        )
    };
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metric("bianque_shipper_failed_total")
            == Some(1.0)),
        "log:\n{}",
        agent.log()
    );
    let hits = landed();
    assert_eq!(hits.len(), 4, "{hits:?}");
    assert!(hits.iter().all(|h| h["_id"] != bad_id.as_str()));
    assert_eq!(agent.metric("bianque_shipper_backlog"), Some(0.0));
    let (code, body) = agent.get("/shipper");
    assert_eq!(code, 200);
    let st: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(st["failed"], 1);
    let f = &st["failures"][0];
    assert_eq!(f["tracer_id"], bad_id.as_str(), "{st}");
    assert_eq!(f["status"], 400);
    assert_eq!(f["error_type"], "mapper_parsing_exception");
    assert!(
        f["reason"].as_str().unwrap().contains("packet_len_bytes"),
        "{f}"
    );
    assert!(agent.log().contains("the server refused a record"));
}

/// Opens `/v1/events/watch?<query>` on the agent; returns the stream after the response head.
fn watch(agent: &Agent, query: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(&agent.addr).expect("connect");
    write!(
        s,
        "GET /v1/events/watch?{query} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if line.to_ascii_lowercase().starts_with("content-type:") {
            assert!(line.contains("text/event-stream"), "{line}");
        }
    }
    r
}

/// The next `data:` line's JSON (chunked framing lines and comments are skipped).
fn next_data(r: &mut BufReader<TcpStream>) -> Option<Value> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if let Some(d) = line.strip_prefix("data: ") {
            if let Ok(v) = serde_json::from_str(d.trim_end()) {
                return Some(v);
            }
        }
    }
}

#[test]
fn the_stream_delivers_a_provoked_drop_within_a_second_past_the_request_timeout() {
    let port = closed_udp_port();
    let agent = Agent::start(
        &format!(
            "[server]\nrequest_timeout_ms = 300\nstream_keepalive_secs = 1\n[events.dropwatch]\nports = [{port}]\n"
        ),
        &[],
    );
    let mut all = watch(&agent, "tracer=dropwatch");
    let mut other = watch(&agent, "tracer=loadavg");
    // Longer than the request timeout: the stream stays open, with keep-alive comments.
    std::thread::sleep(Duration::from_millis(1500));
    let start = Instant::now();
    send_udp_from_thread("bq-stream", &format!("127.0.0.1:{port}"), 1);
    let ev = next_data(&mut all).expect("an event");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "io.bianque.event.dropwatch");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["id"], ev["data"]["tracer_id"]);
    assert_eq!(ev["data"]["tracer_data"]["dport"], port);
    assert_eq!(ev["data"]["tracer_data"]["drop_reason"], "NO_SOCKET");
    // The filtered-out subscriber got keep-alives only.
    other
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = other.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        text.contains(":keep-alive") || text.contains(": keep-alive"),
        "{text:?}"
    );
    assert!(!text.contains("data:"), "{text}");
    assert_eq!(agent.metric("bianque_stream_clients"), Some(2.0));

    // `bianque events --follow` uses the stream.
    let mut follow = std::process::Command::new(BIN)
        .args([
            "events",
            "--follow",
            "--json",
            "--tracer",
            "dropwatch",
            "--listen",
        ])
        .arg(&agent.addr)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _kill = Cleanup(format!("kill {} 2>/dev/null", follow.id()));
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    assert!(wait_until(Duration::from_secs(5), || agent
        .metric("bianque_stream_clients")
        == Some(3.0)));
    send_udp_from_thread("bq-follow", &format!("127.0.0.1:{port}"), 1);
    let line = lines.next().expect("a line").unwrap();
    let rec: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(rec["tracer_data"]["comm"], "bq-follow");
    let _ = follow.kill();
    let _ = follow.wait();
}

#[test]
fn a_subscriber_that_never_reads_is_dropped_and_does_not_grow_memory() {
    let port = closed_udp_port();
    let agent = Agent::start(
        &format!(
            "[server]\nstream_client_buffer = 64\nstream_max_clients = 2\nwrite_timeout_ms = 600000\n[events.dropwatch]\nmax_events_per_second = 20000\nports = [{port}]\n"
        ),
        &[],
    );
    // A client with a tiny receive window that never reads past the head (until the end, well
    // within the write timeout, which would otherwise cut its connection).
    let stuck = watch(&agent, "");
    {
        use std::os::fd::AsRawFd;
        let size: libc::c_int = 4096;
        // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
        unsafe {
            libc::setsockopt(
                stuck.get_ref().as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    let _second = watch(&agent, "tracer=nosuch");
    // The cap: a third client gets 429.
    let (code, body) = agent.get("/v1/events/watch");
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("too_many_clients"));

    // Warm up first: the first records load kernel symbols and fill caches, which is not the
    // stream's memory.
    send_paced(port, 500);
    assert!(wait_until(Duration::from_secs(10), || agent
        .metric("bianque_tracer_hits_total{tracer=\"dropwatch\"}")
        .unwrap_or(0.0)
        >= 500.0));
    let rss_before = agent.rss_kb();
    // Drops until the stuck client's queue and socket buffers are full (~20k records here; more
    // when a loaded machine makes the ring buffer lose some), bounded in count and time.
    let dropped = || agent.metric("bianque_stream_dropped_clients_total") == Some(1.0);
    let start = Instant::now();
    let mut sent = 0;
    while !dropped() && sent < 200_000 && start.elapsed() < Duration::from_secs(60) {
        send_paced(port, 5000);
        sent += 5000;
    }
    assert!(
        wait_until(Duration::from_secs(30), dropped),
        "sent {sent}; log:\n{}",
        agent.log()
    );
    let recorded = agent
        .metric("bianque_tracer_hits_total{tracer=\"dropwatch\"}")
        .unwrap();
    let rss_after = agent.rss_kb();
    println!("recorded {recorded}, rss {rss_before} kB -> {rss_after} kB");
    // The slot is its connection's: still taken while that is open.
    assert_eq!(agent.metric("bianque_stream_clients"), Some(2.0));
    // Memory: the agent did not keep what the client did not read (20k records of ~1 kB).
    assert!(
        rss_after < rss_before + 16 * 1024,
        "rss grew from {rss_before} kB to {rss_after} kB"
    );
    // The stuck client, reading at last, gets what was queued, the notice, and the end.
    let mut stuck = stuck;
    stuck
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = String::new();
    let ended = stuck.read_to_string(&mut rest);
    let delivered = rest.matches("\ndata: {\"specversion\"").count()
        + usize::from(rest.starts_with("data: {\"specversion\""));
    assert!(
        rest.contains("event: dropped"),
        "no notice in {} bytes",
        rest.len()
    );
    assert!(rest.contains("slow_client"));
    assert!(
        (delivered as f64) < recorded,
        "delivered {delivered} of {recorded}"
    );
    // The agent closed the connection after the notice, so the slot is free again: a new
    // client is accepted.
    assert!(ended.is_ok(), "the connection stayed open: {ended:?}");
    assert!(wait_until(Duration::from_secs(2), || agent
        .metric("bianque_stream_clients")
        == Some(1.0)));
    let _third = watch(&agent, "tracer=nosuch");
}

#[test]
fn events_match_tracer_data_fields_and_page_by_cursor() {
    let port = closed_udp_port();
    let agent = Agent::start(&format!("[events.dropwatch]\nports = [{port}]\n"), &[]);
    send_udp_from_thread("bq-query", &format!("127.0.0.1:{port}"), 5);
    let q = format!("data.dport={port}&data.drop_reason=NO_SOCKET");
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .events(&format!("{q}&limit=100"))
            .len()
            == 5),
        "log:\n{}",
        agent.log()
    );
    assert!(agent
        .events(&format!(
            "data.dport={port}&data.drop_reason=NETFILTER_DROP"
        ))
        .is_empty());
    assert_eq!(
        agent
            .events(&format!(
                "data.dport={port}&data.comm=bq-query&tracer=dropwatch"
            ))
            .len(),
        5
    );
    // Pages of 2: 2 + 2 + 1, newest first, no repeats.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("/events?{q}&limit=2");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (code, body) = agent.get(&path);
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        pages += 1;
        for e in v["events"].as_array().unwrap() {
            seen.push((
                e["tracer_time"].as_str().unwrap().to_string(),
                e["tracer_id"].as_str().unwrap().to_string(),
            ));
        }
        match v.get("next").and_then(|n| n.as_str()) {
            Some(n) => cursor = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen.len(), 5);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.reverse();
    sorted.dedup();
    assert_eq!(sorted, seen, "newest first, each once");

    for bad in ["/events?data.=x", "/events?data.a-b=1", "/events?cursor=zz"] {
        let (code, body) = agent.get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        assert!(body.contains("invalid_request"), "{body}");
    }

    // The CLI reads the same store.
    let out = std::process::Command::new(BIN)
        .args(["events", "--json", "--limit", "3", "--data"])
        .arg(format!("dport={port}"))
        .arg("--data-dir")
        .arg(agent.data_dir())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let next = stderr
        .split("--cursor ")
        .nth(1)
        .expect("a next cursor")
        .trim()
        .to_string();
    let out = std::process::Command::new(BIN)
        .args(["events", "--data", "data.drop_reason=NO_SOCKET", "--data"])
        .arg(format!("dport={port}"))
        .args(["--cursor", &next, "--data-dir"])
        .arg(agent.data_dir())
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        table.lines().filter(|l| l.contains("dropwatch")).count(),
        2,
        "{table}"
    );
}
