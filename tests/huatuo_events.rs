//! `compat = "huatuo"`, the records and API half: real packet drops shipped to a real
//! OpenSearch-API server (osmem-server) answer the queries HuaTuo's events dashboard sends, and
//! HuaTuo's HTTP routes answer as HuaTuo's do. Kernel tests: run under the shared lock.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::osmem::Osmem;
use common::*;
use serde_json::{json, Value};

const REGION: &str = "huatuo-test-region";
const HOST: &str = "hevents-node";
const TOKEN: &str = "hevents-token-0123456789";

fn compat_config(extra: &str) -> String {
    format!(
        "compat = \"huatuo\"\nregion = \"{REGION}\"\nhostname = \"{HOST}\"\n[server]\ntoken = \"{TOKEN}\"\n{extra}"
    )
}

fn http_body(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let json = [("Content-Type", "application/json")];
    common::http_client::request(addr, method, path, &json, body)
}

fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// HuaTuo's dashboard query: `query_string` over `huatuo_bamai*`; the hits.
fn query_string(os: &Osmem, q: &str) -> Vec<Value> {
    os.search("huatuo_bamai*", json!({"query_string": {"query": q}}), 1000)
}

#[test]
fn shipped_drops_answer_huatuos_dashboard_queries() {
    let os = Osmem::start();
    let port = closed_udp_port();
    let agent = Agent::start(
        &compat_config(&format!(
            "[storage.elasticsearch]\naddresses = [\"{}\"]\nflush_interval_ms = 100\nretry_initial_backoff_ms = 50\nretry_max_backoff_ms = 500\n[events.dropwatch]\nports = [{port}]\n",
            os.url()
        )),
        &[],
    );
    let before = chrono_now_rfc3339(-1);
    send_udp_from_thread("hevents-drop", &format!("127.0.0.1:{port}"), 3);
    let mine = format!(
        "tracer_name:dropwatch AND region.keyword:{REGION} AND hostname.keyword:{HOST} AND tracer_data.dport:{port}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || query_string(&os, &mine).len()
            == 3),
        "in the index: {:?}\nlog:\n{}",
        os.search("huatuo_bamai*", json!({"match_all": {}}), 100),
        agent.log()
    );
    let after = chrono_now_rfc3339(1);

    // HuaTuo's document: its time fields and formats, its tracer_data values.
    let go_time = regex::Regex::new(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} [+-]\d{4}$").unwrap();
    for hit in query_string(&os, &mine) {
        let d = &hit["_source"];
        assert_eq!(hit["_index"], "huatuo_bamai", "HuaTuo's index by default");
        assert_eq!(hit["_id"], d["tracer_id"]);
        assert!(go_time.is_match(d["tracer_time"].as_str().unwrap()), "{d}");
        assert_eq!(d["time"], d["tracer_time"]);
        assert!(d["uploaded_time"].as_str().unwrap().ends_with('Z'), "{d}");
        assert_eq!(d["tracer_type"], "event");
        assert_eq!(d["tracer_data"]["drop_reason"], "SKB_DROP_REASON_NO_SOCKET");
        assert_eq!(d["tracer_data"]["comm"], "hevents-drop");
        assert_eq!(d["tracer_data"]["saddr"], "127.0.0.1");
        // The store keeps bianque's own record.
        let (code, stored) = agent.get(&format!("/events/{}", hit["_id"].as_str().unwrap()));
        assert_eq!(code, 200);
        let stored = parse(&stored);
        assert_eq!(stored["tracer_data"]["drop_reason"], "NO_SOCKET");
        assert!(stored.get("uploaded_time").is_none());
    }
    // Each filter of the query narrows: another region, another host find none of them.
    for wrong in [
        format!("tracer_name:dropwatch AND region.keyword:elsewhere AND tracer_data.dport:{port}"),
        format!(
            "tracer_name:dropwatch AND hostname.keyword:other-node AND tracer_data.dport:{port}"
        ),
        format!("tracer_name:oom AND tracer_data.dport:{port}"),
    ] {
        assert!(query_string(&os, &wrong).is_empty(), "{wrong}");
    }
    // The dashboard's time field: a range on uploaded_time.
    let in_range = |gte: &str, lte: &str| {
        os.search(
            "huatuo_bamai*",
            json!({"bool": {"filter": [
                {"range": {"uploaded_time": {"gte": gte, "lte": lte}}},
                {"query_string": {"query": mine}}
            ]}}),
            100,
        )
        .len()
    };
    assert_eq!(in_range(&before, &after), 3);
    assert_eq!(in_range("2001-01-01T00:00:00Z", "2001-01-02T00:00:00Z"), 0);
    // The dashboard's per-host and per-region breakdowns: terms aggregations on .keyword.
    for field in ["hostname.keyword", "region.keyword"] {
        let body = json!({"size": 0, "query": {"query_string": {"query": mine}},
                          "aggs": {"by": {"terms": {"field": field}}}});
        let (code, v) = os.json("POST", "/huatuo_bamai*/_search", &body.to_string());
        assert_eq!(code, 200, "{v}");
        let buckets = v["aggregations"]["by"]["buckets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let want = if field.starts_with("hostname") {
            HOST
        } else {
            REGION
        };
        assert_eq!(buckets.len(), 1, "{v}");
        assert_eq!(buckets[0]["key"], want, "{v}");
        assert_eq!(buckets[0]["doc_count"], 3, "{v}");
    }
    // The template typed strings the way a default dynamic mapping does.
    let (code, mapping) = os.json("GET", "/huatuo_bamai/_mapping", "");
    assert_eq!(code, 200, "{mapping}");
    let props = &mapping["huatuo_bamai"]["mappings"]["properties"];
    assert_eq!(props["uploaded_time"]["type"], "date", "{props}");
    for f in ["hostname", "region", "tracer_name"] {
        assert_eq!(props[f]["type"], "text", "{f}: {props}");
        assert_eq!(
            props[f]["fields"]["keyword"]["type"], "keyword",
            "{f}: {props}"
        );
    }
    assert_eq!(
        props["tracer_data"]["properties"]["drop_reason"]["fields"]["keyword"]["type"],
        "keyword"
    );
}

/// RFC 3339 UTC `offset_secs` from now (a bound for the range query).
fn chrono_now_rfc3339(offset_secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(offset_secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[test]
fn put_tracer_start_stop_answers_204_with_the_token_rules() {
    let agent = Agent::start(&compat_config(""), &[]);
    let auth = format!("Bearer {TOKEN}");
    let put = |path: &str, auth: Option<&str>| {
        let h: Vec<(&str, &str)> = auth.map(|a| vec![("Authorization", a)]).unwrap_or_default();
        common::http_client::request(&agent.addr, "PUT", path, &h, "")
    };
    let running = || {
        let v = parse(&agent.get("/tracers").1);
        v["data"]["loadavg"]["running"].as_bool()
    };
    assert_eq!(running(), Some(true));
    let (code, body) = put("/tracers/loadavg/stop", None);
    assert_eq!(code, 401, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "unauthorized");
    let (code, body) = put("/tracers/loadavg/stop", Some("Bearer wrong"));
    assert_eq!(code, 401, "{body}");
    assert_eq!(running(), Some(true));

    let (code, body) = put("/tracers/loadavg/stop", Some(&auth));
    assert_eq!(code, 204, "{body}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(running(), Some(false));
    let (code, body) = put("/tracers/loadavg/stop", Some(&auth));
    assert_eq!(code, 409, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "conflict");
    let (code, _) = put("/tracers/loadavg/start", Some(&auth));
    assert_eq!(code, 204);
    assert_eq!(running(), Some(true));
    let (code, body) = put("/tracers/nosuch/start", Some(&auth));
    assert_eq!(code, 404, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "not_found");
    // HuaTuo's tracer names work too.
    assert_eq!(
        parse(&agent.get("/tracers").1)["data"]["net_rx_latency"]["name"],
        "net_rx_latency"
    );
    let (code, body) = put("/tracers/net_rx_latency/stop", Some(&auth));
    assert_eq!(code, 204, "{body}");
    let v = parse(&agent.get("/tracers").1);
    assert_eq!(v["data"]["net_rx_latency"]["running"], false, "{v}");
    // bianque's own POST still works next to it.
    let (code, _) = agent.post("/tracers/loadavg/stop", &[("Authorization", &auth)]);
    assert_eq!(code, 200);
}

#[test]
fn get_tracers_has_huatuos_data_map_next_to_bianques_list() {
    let agent = Agent::start(&compat_config(""), &[]);
    let (code, body) = agent.get("/tracers");
    assert_eq!(code, 200);
    let v = parse(&body);
    let data = v["data"].as_object().expect("data is a map by name");
    let list = v["tracers"].as_array().expect("bianque's list stays");
    assert_eq!(data.len(), list.len());
    let dw = &data["dropwatch"];
    assert_eq!(dw["name"], "dropwatch");
    assert_eq!(dw["running"], true);
    assert!(dw["hit"].as_u64().unwrap() >= 1, "{dw}");
    assert_eq!(dw["restart_interval"], 10);
    assert_eq!(dw["flag"], 3, "an event tracer: tracing and metrics");
    assert_eq!(data["loadavg"]["flag"], 1);
    assert_eq!(data["cpusys"]["flag"], 2);
}

#[test]
fn get_version_has_huatuos_data_and_nothing_changes_without_the_switch() {
    let agent = Agent::start(&compat_config(""), &[]);
    let (code, body) = agent.get("/version");
    assert_eq!(code, 200);
    let v = parse(&body);
    for k in [
        "name",
        "version",
        "git_commit",
        "git_tree_state",
        "build_time",
        "go_version",
        "compiler",
        "platform",
    ] {
        assert!(v["data"][k].is_string(), "{k}: {v}");
    }
    assert_eq!(v["data"]["name"], "bianque");
    assert_eq!(v["name"], "bianque", "bianque's fields stay");
    // HuaTuo's probes answer 204 with no body.
    for path in ["/healthz", "/readyz"] {
        let (code, body) = agent.get(path);
        assert_eq!((code, body.as_str()), (204, ""), "{path}");
    }
    drop(agent);

    // Without a token, control is off: 403, as bianque's own route.
    let no_token = Agent::start(
        &format!("compat = \"huatuo\"\nregion = \"{REGION}\"\n"),
        &[],
    );
    let (code, body) =
        common::http_client::request(&no_token.addr, "PUT", "/tracers/loadavg/stop", &[], "");
    assert_eq!(code, 403, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "forbidden");
    drop(no_token);

    let plain = Agent::start("", &[]);
    assert_eq!(parse(&plain.get("/healthz").1)["status"], "ok");
    assert_eq!(parse(&plain.get("/readyz").1)["status"], "ready");
    let v = parse(&plain.get("/version").1);
    assert!(v.get("data").is_none(), "{v}");
    assert!(parse(&plain.get("/tracers").1).get("data").is_none());
    let (code, _) =
        common::http_client::request(&plain.addr, "PUT", "/tracers/loadavg/stop", &[], "");
    assert_eq!(code, 405);
    let (code, _) = http_body(&plain.addr, "POST", "/v1/events/watch", "{}");
    assert_eq!(code, 405);
    let (code, body) = plain.get("/containers/json");
    assert_eq!(code, 404, "{body}");
}

/// A memory cgroup laid out like Docker's cgroupfs driver with a process in it: a container
/// for the agent. Removed on drop.
struct DockerLikeContainer {
    dir: std::path::PathBuf,
    id: String,
    child: std::process::Child,
}

impl DockerLikeContainer {
    fn new() -> DockerLikeContainer {
        let id = format!("{:0>64}", format!("{:x}e7e7", std::process::id()));
        let dir = memcg_mount().join("docker").join(&id);
        std::fs::create_dir_all(&dir).expect("create a memory cgroup under /docker");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec sleep 300",
                dir.display()
            ))
            .spawn()
            .expect("spawn sleep");
        let procs = dir.join("cgroup.procs");
        assert!(wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(&procs).is_ok_and(|s| !s.trim().is_empty())
        }));
        DockerLikeContainer { dir, id, child }
    }
}

impl Drop for DockerLikeContainer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for _ in 0..100 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn get_containers_json_lists_and_filters_by_container_id() {
    let c = DockerLikeContainer::new();
    let agent = Agent::start(&compat_config(""), &[]);
    let list = || {
        let (code, body) = agent.get("/containers/json");
        assert_eq!(code, 200, "{body}");
        parse(&body)["data"]
            .as_array()
            .cloned()
            .expect("data is a list")
    };
    assert!(
        wait_until(Duration::from_secs(10), || list()
            .iter()
            .any(|x| x["id"] == c.id)),
        "{:?}",
        list()
    );
    let (code, body) = agent.get(&format!("/containers/json?container_id={}", c.id));
    assert_eq!(code, 200, "{body}");
    let one = parse(&body)["data"].as_array().cloned().unwrap();
    assert_eq!(one.len(), 1, "{one:?}");
    let x = &one[0];
    assert_eq!(x["type"], "normal");
    assert!(x["cgroup_path"].as_str().unwrap().contains(&c.id), "{x}");
    assert!(x["started_at"].is_string(), "{x}");
    assert!(x["init_pid"].as_u64().is_some(), "{x}");
    assert!(x["labels"].is_object(), "{x}");
    let (code, body) = agent.get(&format!("/containers/json?container_id={}", "0".repeat(64)));
    assert_eq!(code, 200);
    assert_eq!(parse(&body)["data"], json!([]));
    // HuaTuo validates the id: 64 alphanumerics.
    let (code, body) = agent.get("/containers/json?container_id=abc");
    assert_eq!(code, 400, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "invalid_request");
}

/// `POST /v1/events/watch` with `body`; the stream after the response head.
fn watch(agent: &Agent, body: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(&agent.addr).expect("connect");
    write!(
        s,
        "POST /v1/events/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
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
fn post_events_watch_streams_huatuo_cloudevents_matching_the_filters() {
    let port = closed_udp_port();
    let agent = Agent::start(
        &compat_config(&format!(
            "stream_keepalive_secs = 1\nstream_max_clients = 2\n[events.dropwatch]\nports = [{port}]\n"
        )),
        &[],
    );
    let mut mine = watch(
        &agent,
        &json!({"filters": {"tracer_name": "^dropwatch$", "region": "^huatuo-test", "hostname": HOST}})
            .to_string(),
    );
    let mut other = watch(
        &agent,
        &json!({"filters": {"tracer_name": "dropwatch", "region": "^elsewhere$"}}).to_string(),
    );
    // Beyond the client cap: 429 with HuaTuo's code.
    let (code, body) = http_body(&agent.addr, "POST", "/v1/events/watch", "{}");
    assert_eq!(code, 429, "{body}");
    assert_eq!(parse(&body)["error"]["code"], "rate_limited");
    let start = Instant::now();
    send_udp_from_thread("hevents-watch", &format!("127.0.0.1:{port}"), 1);
    let ev = next_data(&mut mine).expect("an event");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "tech.huatuo.kernel.event");
    assert_eq!(ev["source"], format!("/huatuo/{HOST}/dropwatch"));
    assert_eq!(ev["datacontenttype"], "application/json");
    let d = &ev["data"];
    assert_eq!(d["tracer_name"], "dropwatch");
    assert_eq!(d["hostname"], HOST);
    assert_eq!(d["region"], REGION);
    assert_eq!(d["tracer_run_type"], "event");
    assert!(d["tracer_id"].is_string());
    assert!(d["observed_timestamp"].is_string());
    assert!(
        d.get("tracer_data").is_none(),
        "HuaTuo's watch sends no tracer_data: {d}"
    );
    // The other region's subscriber got keep-alives only.
    other
        .get_ref()
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = other.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(!text.contains("data:"), "{text}");

    // Bad bodies: 400 invalid_request, as HuaTuo answers a binding error or a bad pattern.
    for body in ["{not json", r#"{"filters":{"hostname":"("}}"#] {
        let (code, answer) = http_body(&agent.addr, "POST", "/v1/events/watch", body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(
            parse(&answer)["error"]["code"],
            "invalid_request",
            "{answer}"
        );
    }
}

/// A tracer whose name differs: real memcg reclaim stalls (a writer filling a 64 MiB memory
/// cgroup with page cache on a throttled loop device, as tests/memreclaim.rs provokes them)
/// are found by the dashboard's `tracer_name:memory_reclaim_events` with HuaTuo's field.
#[test]
fn shipped_reclaim_stalls_are_memory_reclaim_events_with_reclaim_duration_ns() {
    let os = Osmem::start();
    let agent = Agent::start(
        &compat_config(&format!(
            "[storage.elasticsearch]\naddresses = [\"{}\"]\nflush_interval_ms = 100\n[events.memreclaim]\nthreshold_ms = 1\n[events.dropwatch]\nenabled = false\n",
            os.url()
        )),
        &[],
    );
    let cg = MemCgroup::new("hevents-reclaim", 64 << 20);
    let fs = LoopFs::new("hevents-reclaim", 512);
    let file = fs.mnt.join("fill");
    let dev = sh(&format!("lsblk -dno MAJ:MIN {}", fs.dev))
        .trim()
        .to_string();
    let throttle = memcg_mount()
        .parent()
        .expect("cgroup v1 root")
        .join("blkio/blkio.throttle.write_bps_device");
    let _unthrottle = Cleanup(format!("echo '{dev} 0' > {}", throttle.display()));
    sh(&format!(
        "echo '{dev} {}' > {}",
        8 << 20,
        throttle.display()
    ));
    let q = format!(
        "tracer_name:memory_reclaim_events AND region.keyword:{REGION} AND hostname.keyword:{HOST}"
    );
    let mine = || -> Vec<Value> {
        query_string(&os, &q)
            .into_iter()
            .filter(|h| h["_source"]["tracer_data"]["memory_cgroup_path"] == cg.path.as_str())
            .collect()
    };
    for _ in 0..3 {
        let mut child = cg.spawn(&format!(
            "dd if=/dev/zero of={} bs=1M count=128",
            file.display()
        ));
        let status = wait_child(&mut child, Duration::from_secs(120)).expect("dd finished");
        assert!(status.success(), "{status:?}");
        if wait_until(Duration::from_secs(3), || !mine().is_empty()) {
            break;
        }
    }
    let hits = mine();
    assert!(
        !hits.is_empty(),
        "no memory_reclaim_events document; stored: {:?}\nlog:\n{}",
        agent.events("tracer=memreclaim&limit=5"),
        agent.log()
    );
    for h in &hits {
        let d = &h["_source"]["tracer_data"];
        assert_eq!(d["comm"], "dd", "{h}");
        assert!(
            d["reclaim_duration_ns"].as_u64().unwrap() >= 1_000_000,
            "{h}"
        );
        assert_eq!(d["reclaim_duration_ns"], d["duration_ns"]);
        assert!(
            d["pid"].as_u64().is_some() && d["tid"].as_u64().is_some(),
            "{h}"
        );
    }
    // The store keeps bianque's name.
    assert!(!agent.events("tracer=memreclaim&limit=5").is_empty());
}
