//! The HTTP API contract: status codes, JSON errors, tracer control with a bearer token.

mod common;

use std::time::{Duration, Instant};

use common::*;

const TOKEN: &str = "test-token-0123456789";

#[test]
fn health_version_and_json_errors() {
    let agent = Agent::start("", &["--disable", "dropwatch"]);
    assert_eq!(agent.get("/healthz").0, 200);
    assert_eq!(agent.get("/readyz").0, 200);
    let (code, body) = agent.get("/version");
    assert_eq!(code, 200);
    assert!(body.contains(env!("CARGO_PKG_VERSION")));

    let (code, body) = agent.get("/nope");
    assert_eq!(code, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    let (code, body) = agent.get("/events/does-not-exist");
    assert_eq!(code, 404);
    assert!(body.contains("does-not-exist"));

    for bad in [
        "/events?limit=0",
        "/events?since=yesterday",
        "/events?bogus=1",
        "/events?limit=x",
        "/events?cursor=nope",
    ] {
        let (code, body) = agent.get(bad);
        assert_eq!(code, 400, "{bad}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{bad}: not JSON: {body}"));
        assert_eq!(v["error"]["code"], "invalid_request", "{bad}");
    }
    let (code, body) = agent.get("/events?since=10m&tracer=dropwatch");
    assert_eq!(code, 200);
    assert_eq!(body, "{\"events\":[]}");

    let (code, body) = agent.get("/tracers");
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let dw = v["tracers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "dropwatch")
        .unwrap()
        .clone();
    assert_eq!(dw["status"], "disabled");
    assert_eq!(dw["mode"], "event");
    assert!(dw["reason"].as_str().unwrap().contains("--disable"));
}

#[test]
fn control_needs_a_configured_token() {
    let agent = Agent::start("", &["--disable", "dropwatch"]);
    let (code, body) = agent.post(
        "/tracers/loadavg/stop",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    );
    assert_eq!(code, 403, "{body}");
}

#[test]
fn control_with_token_stops_and_starts_a_tracer() {
    // Drops from other tests on this machine must not use up the rate limit: watch one port.
    let port = closed_udp_port();
    let agent = Agent::start(
        &format!("[server]\ntoken = \"{TOKEN}\"\n[events.dropwatch]\nports = [{port}]\n"),
        &[],
    );
    let auth = format!("Bearer {TOKEN}");
    assert_eq!(agent.post("/tracers/dropwatch/stop", &[]).0, 401);
    assert_eq!(
        agent
            .post(
                "/tracers/dropwatch/stop",
                &[("Authorization", "Bearer wrong-token-000000")]
            )
            .0,
        401
    );
    assert_eq!(
        agent
            .post("/tracers/nosuch/stop", &[("Authorization", &auth)])
            .0,
        404
    );
    assert_eq!(
        agent
            .post("/tracers/dropwatch/jump", &[("Authorization", &auth)])
            .0,
        400
    );

    // Only the bearer scheme counts.
    assert_eq!(
        agent
            .post(
                "/tracers/dropwatch/stop",
                &[("Authorization", &format!("Basic {TOKEN}"))]
            )
            .0,
        401
    );

    let (code, body) = agent.post("/tracers/dropwatch/stop", &[("Authorization", &auth)]);
    assert_eq!(code, 200, "{body}");
    // "active" once attached: the reason stays "starting" until then.
    let status = |a: &Agent| {
        let v: serde_json::Value = serde_json::from_str(&a.get("/tracers").1).unwrap();
        let t = v["tracers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "dropwatch")
            .unwrap()
            .clone();
        if t["reason"] == "starting" {
            "starting".to_string()
        } else {
            t["status"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(status(&agent), "disabled");
    assert_eq!(
        agent
            .post("/tracers/dropwatch/stop", &[("Authorization", &auth)])
            .0,
        409
    );

    let (code, body) = agent.post("/tracers/dropwatch/start", &[("Authorization", &auth)]);
    assert_eq!(code, 200, "{body}");
    assert!(wait_until(std::time::Duration::from_secs(5), || status(
        &agent
    )
        == "active"));
    // Counters survive a restart of the tracer (the counters map is reused).
    send_udp_from_thread("bq-ctl", &format!("127.0.0.1:{port}"), 1);
    assert!(
        wait_until(std::time::Duration::from_secs(5), || agent
            .events("tracer=dropwatch&limit=1000")
            .iter()
            .any(|e| e["tracer_data"]["dport"] == port)),
        "log:\n{}",
        agent.log()
    );
    assert!(!agent.log().contains(TOKEN), "the token is never logged");
}

/// A raw request; returns the status line and the body.
fn raw(addr: &str, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let resp = String::from_utf8_lossy(&resp).to_string();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

fn assert_json_error(what: &str, code: u16, body: &str, want: u16, error_code: &str) {
    assert_eq!(code, want, "{what}: {body}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{what}: not JSON: {body:?}"));
    assert_eq!(v["error"]["code"], error_code, "{what}: {body}");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[test]
fn oversized_requests_get_the_json_error_shape() {
    let agent = Agent::start(
        "[server]\nmax_body_bytes = 1024\n",
        &["--disable", "dropwatch"],
    );
    // 1,100 data matches: one SQL expression too deep for SQLite; refused up front.
    let many: Vec<String> = (0..1100).map(|i| format!("data.f{i}=1")).collect();
    let (code, body) = agent.get(&format!("/events?{}", many[..40].join("&")));
    assert_json_error("40 data matches", code, &body, 400, "invalid_request");
    assert!(body.contains("at most 32"), "{body}");
    let (code, body) = agent.get(&format!("/events?{}", many[..32].join("&")));
    assert_eq!(code, 200, "32 data matches: {body}");
    let (code, body) = agent.get(&format!("/events?{}", many.join("&")));
    assert_json_error("a 12 kB query", code, &body, 414, "uri_too_long");

    let big = "x".repeat(4096);
    let (code, body) = raw(
        &agent.addr,
        &format!(
            "POST /tracers/loadavg/stop HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{big}",
            big.len()
        ),
    );
    assert_json_error("a 4 kB body", code, &body, 413, "body_too_large");
    let (code, body) = raw(
        &agent.addr,
        "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_json_error("DELETE /healthz", code, &body, 405, "method_not_allowed");
}

#[test]
fn long_event_scans_do_not_hold_up_a_limit_1_read() {
    // A store with enough records that a scan no index serves takes a while.
    let dir = TempDir::new("agent");
    {
        let store = bianque::store::Store::open(
            &dir.path().join("data"),
            bianque::store::Retention {
                max_age: Duration::from_secs(3600 * 24),
                max_size_bytes: 1 << 30,
            },
        )
        .unwrap();
        let now = bianque::record::now_ns();
        for i in 0..150_000i64 {
            store.save(bianque::record::Record::new(
                "dropwatch",
                bianque::record::TracerType::Event,
                now - i * 1000,
                "h",
                "r",
                None,
                serde_json::json!({"dport": i, "comm": "bq-seed", "drop_reason": "NO_SOCKET"}),
            ));
        }
        store.close();
    }
    let agent = Agent::start_in(dir, "", &["--disable", "dropwatch"]);
    let timed = |path: &str| {
        let start = Instant::now();
        let (code, body) = agent.get(path);
        assert_eq!(code, 200, "{path}: {body}");
        start.elapsed()
    };
    // A scan over every record's JSON that matches nothing.
    let scan = "/events?data.comm=nobody&limit=1";
    let one_scan = timed(scan);
    let scans: Vec<_> = (0..10)
        .map(|_| {
            let addr = agent.addr.clone();
            std::thread::spawn(move || http(&addr, "GET", scan, &[]).0)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let newest = timed("/events?limit=1");
    for s in scans {
        assert_eq!(s.join().unwrap(), 200);
    }
    println!("one scan {one_scan:?}; limit=1 during 10 scans {newest:?}");
    // Behind one shared connection it would wait for the scans ahead of it (10 × one scan).
    assert!(
        newest < one_scan,
        "limit=1 took {newest:?} during the scans, one scan alone {one_scan:?}"
    );
}
