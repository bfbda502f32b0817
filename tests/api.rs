//! The HTTP API contract: status codes, JSON errors, tracer control with a bearer token.

mod common;

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
