//! Every event tracer loads and attaches on this kernel with its default configuration (the
//! tracer tests lower thresholds, which changes what the BPF verifier sees).

mod common;

use std::time::Duration;

use common::*;

#[test]
fn every_event_tracer_is_active_with_defaults() {
    let agent = Agent::start("", &[]);
    let names: Vec<String> = bianque::tracer::registry()
        .iter()
        .filter(|s| s.mode == bianque::tracer::Mode::Event && s.default_enabled)
        .map(|s| s.name.to_string())
        .collect();
    assert!(names.len() >= 9, "{names:?}");
    let statuses = || -> Vec<(String, String, String)> {
        let (code, body) = agent.get("/tracers");
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["tracers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| names.iter().any(|n| t["name"] == n.as_str()))
            .map(|t| {
                (
                    t["name"].as_str().unwrap().to_string(),
                    t["status"].as_str().unwrap().to_string(),
                    t["reason"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let all_active = wait_until(Duration::from_secs(10), || {
        statuses().iter().all(|(_, s, _)| s == "active")
    });
    assert!(all_active, "{:#?}\nlog:\n{}", statuses(), agent.log());
    assert_eq!(statuses().len(), names.len());
}

/// A stopped and continued agent (a debugger attaching, `kill -STOP`/`-CONT`) sees its ring
/// buffer waits fail with EINTR; that is not a tracer failure.
#[test]
fn stop_and_continue_restarts_no_tracer() {
    let agent = Agent::start("", &[]);
    let ready = wait_until(Duration::from_secs(10), || agent.get("/readyz").0 == 200);
    assert!(ready, "{}", agent.log());
    let restarts = |agent: &Agent| -> f64 {
        let text = agent.metrics();
        text.lines()
            .filter(|l| l.contains("_tracer_restarts_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(restarts(&agent), 0.0, "{}", agent.log());
    for _ in 0..3 {
        sh(&format!(
            "kill -STOP {0}; sleep 0.2; kill -CONT {0}",
            agent.pid()
        ));
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(restarts(&agent), 0.0, "{}", agent.log());
    assert!(
        !agent.log().contains("Interrupted system call"),
        "{}",
        agent.log()
    );
}
