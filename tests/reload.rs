//! SIGHUP reloads the config on a real agent: the changed tracer restarts with its new section,
//! the others keep running (same threads), records from before, across and after the reload are
//! all in the store, and an invalid new config is logged and the running one kept.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// A tracer's thread name as the kernel keeps it (`tracer-<name>` cut at 15 bytes).
fn thread_key(tracer: &str) -> String {
    tracer.chars().take(15 - "tracer-".len()).collect()
}

/// Tracer threads of the agent by (cut) name → thread id.
fn tracer_threads(pid: u32) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in dir.flatten() {
        let tid: u32 = t.file_name().to_string_lossy().parse().unwrap_or(0);
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if let Some(name) = comm.trim().strip_prefix("tracer-") {
            out.insert(name.to_string(), tid);
        }
    }
    out
}

fn hup(agent: &Agent) {
    // SAFETY: kill(2) on the agent we spawned.
    let rc = unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill -HUP");
}

fn drops_to(agent: &Agent, port: u16) -> usize {
    agent
        .events("tracer=dropwatch&limit=10000")
        .iter()
        .filter(|e| e["tracer_data"]["dport"] == port)
        .count()
}

fn config(ports: &[u16]) -> String {
    let list: Vec<String> = ports.iter().map(|p| p.to_string()).collect();
    format!(
        "[events.dropwatch]\nports = [{}]\nmax_events_per_second = 1000\n",
        list.join(", ")
    )
}

#[test]
fn sighup_restarts_only_the_changed_tracer_and_loses_nothing() {
    let before = closed_udp_port();
    let after = closed_udp_port();
    let agent = Agent::start(&config(&[before]), &[]);
    let cfg_path = agent.dir.path().join("bianque.toml");

    send_udp_from_thread("bq-reload-a", &format!("127.0.0.1:{before}"), 3);
    assert!(
        wait_until(Duration::from_secs(5), || drops_to(&agent, before) == 3),
        "log:\n{}",
        agent.log()
    );
    let threads_before = tracer_threads(agent.pid());
    assert!(
        threads_before.contains_key(&thread_key("dropwatch")),
        "{threads_before:?}"
    );
    assert!(
        threads_before.contains_key(&thread_key("signal")),
        "{threads_before:?}"
    );

    // Drops sent right before the reload are still in the ring buffer or the pipeline when
    // the old dropwatch stops: they must reach the store all the same.
    send_udp_from_thread("bq-reload-b", &format!("127.0.0.1:{before}"), 20);
    std::fs::write(&cfg_path, config(&[after])).expect("rewrite config");
    hup(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("config reloaded")),
        "log:\n{}",
        agent.log()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let (_, body) = agent.get("/tracers");
            body.contains("\"dropwatch\"") && !body.contains("\"starting\"")
        }),
        "{}",
        agent.get("/tracers").1
    );
    assert!(
        wait_until(Duration::from_secs(5), || drops_to(&agent, before) == 23),
        "drops sent before the reload lost: {} of 23; log:\n{}",
        drops_to(&agent, before),
        agent.log()
    );
    assert!(
        agent.log().contains("tracer reconfigured"),
        "{}",
        agent.log()
    );

    let threads_after = tracer_threads(agent.pid());
    assert_ne!(
        threads_before.get(&thread_key("dropwatch")),
        threads_after.get(&thread_key("dropwatch")),
        "dropwatch was restarted with its new section"
    );
    for (name, tid) in &threads_before {
        if *name != thread_key("dropwatch") {
            assert_eq!(
                threads_after.get(name),
                Some(tid),
                "{name} was not changed and must keep running"
            );
        }
    }

    // The new section is in force: the old port is no longer watched, the new one is.
    send_udp_from_thread("bq-reload-c", &format!("127.0.0.1:{before}"), 2);
    send_udp_from_thread("bq-reload-d", &format!("127.0.0.1:{after}"), 2);
    assert!(
        wait_until(Duration::from_secs(5), || drops_to(&agent, after) == 2),
        "log:\n{}",
        agent.log()
    );
    assert_eq!(drops_to(&agent, before), 23, "old filter still applied");

    // An invalid config: logged with its error, the running one kept.
    std::fs::write(&cfg_path, "[events.dropwatch]\nportz = [1]\n").expect("rewrite config");
    hup(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .log()
            .contains("config reload failed")),
        "log:\n{}",
        agent.log()
    );
    let log = agent.log();
    let line = log
        .lines()
        .find(|l| l.contains("config reload failed"))
        .expect("reload error line");
    assert!(line.contains("portz"), "{line}");
    assert_eq!(agent.get("/readyz").0, 200);
    assert_eq!(
        tracer_threads(agent.pid()),
        threads_after,
        "nothing restarted"
    );
    send_udp_from_thread("bq-reload-e", &format!("127.0.0.1:{after}"), 2);
    assert!(
        wait_until(Duration::from_secs(5), || drops_to(&agent, after) == 4),
        "log:\n{}",
        agent.log()
    );
}

#[test]
fn sighup_can_disable_and_enable_a_tracer() {
    let agent = Agent::start("", &[]);
    let cfg_path = agent.dir.path().join("bianque.toml");
    let status = |name: &str| {
        let (_, body) = agent.get("/tracers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["tracers"]
            .as_array()
            .and_then(|l| l.iter().find(|t| t["name"] == name))
            .map(|t| t["status"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    assert_eq!(status("tcp_retransmit"), "active");
    std::fs::write(&cfg_path, "[events.tcp_retransmit]\nenabled = false\n").expect("config");
    hup(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || status("tcp_retransmit")
            == "disabled"),
        "log:\n{}",
        agent.log()
    );
    assert!(!tracer_threads(agent.pid()).contains_key(&thread_key("tcp_retransmit")));
    std::fs::write(&cfg_path, "").expect("config");
    hup(&agent);
    assert!(
        wait_until(Duration::from_secs(10), || status("tcp_retransmit")
            == "active"),
        "log:\n{}",
        agent.log()
    );
}
