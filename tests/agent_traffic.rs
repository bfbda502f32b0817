//! Issue 14 item 12 on the real kernel: the agent's own traffic — a real Prometheus scraping it,
//! HTTP calls, CLI calls, its kubelet probes on a host without a kubelet — leaves no dropwatch
//! record; normal connection teardown is counted by reason, not recorded; a real drop in the
//! same minute is recorded.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_scraping(target: &str, dir: &TempDir) -> (Kill, String) {
    let prom_addr = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bianque\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .expect("prometheus.yml");
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
    let prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={prom_addr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("prometheus (Debian package) is installed by `make test`");
    (Kill(prom), prom_addr)
}

fn cli(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().expect("run the CLI");
    assert!(
        out.status.success(),
        "bianque {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_minute_of_scrapes_and_cli_calls_leaves_no_record_but_a_real_drop_is_recorded() {
    // Defaults: no port filter, the kubelet's read-only port probed (nothing listens there).
    let agent = Agent::start("", &[]);
    let (_, tracers) = agent.get("/tracers");
    let tracers: serde_json::Value = serde_json::from_str(&tracers).expect("tracers json");
    let dropwatch = tracers
        .as_array()
        .or_else(|| tracers["tracers"].as_array())
        .and_then(|l| l.iter().find(|t| t["name"] == "dropwatch").cloned())
        .expect("dropwatch listed");
    assert_eq!(
        dropwatch["status"],
        "active",
        "{dropwatch}\n{}",
        agent.log()
    );
    let prom_dir = TempDir::new("agent-traffic-prom");
    let (_prom, prom_addr) = prometheus_scraping(&agent.addr, &prom_dir);
    let data_dir = agent.data_dir();
    let data_dir = data_dir.to_str().expect("utf-8 path");
    let real_port = closed_udp_port();

    let start = Instant::now();
    let mut calls = 0;
    let mut provoked = false;
    while start.elapsed() < Duration::from_secs(60) {
        for path in [
            "/metrics",
            "/healthz",
            "/readyz",
            "/tracers",
            "/containers",
            "/events?limit=5",
        ] {
            let (code, body) = agent.get(path);
            assert_eq!(code, 200, "{path}: {body}");
            calls += 1;
        }
        cli(&["tracers", "--listen", &agent.addr]);
        cli(&["containers", "--listen", &agent.addr]);
        cli(&["events", "--data-dir", data_dir, "--limit", "1"]);
        calls += 3;
        if !provoked && start.elapsed() > Duration::from_secs(30) {
            send_udp_from_thread("bq-real-drop", &format!("127.0.0.1:{real_port}"), 1);
            provoked = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_millis(1500)); // reader poll + store batch

    let (code, targets) = http(&prom_addr, "GET", "/api/v1/targets", &[]);
    assert!(
        code == 200 && targets.contains("\"health\":\"up\""),
        "prometheus did not scrape the agent: {targets}"
    );
    let records = agent.events("tracer=dropwatch&limit=10000");
    let (real, other): (Vec<_>, Vec<_>) = records
        .into_iter()
        .partition(|e| e["tracer_data"]["dport"] == real_port);
    // The host's own background drops (here: a vsock packet of the VM's transport, taken in a
    // kworker) may come in the same minute; none may be the agent's.
    let agent_port: u16 = agent.addr.rsplit(':').next().unwrap().parse().unwrap();
    let agents: Vec<_> = other
        .iter()
        .filter(|e| {
            let d = &e["tracer_data"];
            d["pid"] == agent.pid()
                || d["sport"] == agent_port
                || d["dport"] == agent_port
                || d["dport"] == 10255
                || ["QUEUE_PURGE", "SOCKET_CLOSE", "TCP_CLOSE"]
                    .contains(&d["drop_reason"].as_str().unwrap_or_default())
        })
        .collect();
    assert!(
        agents.is_empty(),
        "{} records of the agent's own traffic or teardown after {calls} calls: {agents:#?}",
        agents.len()
    );
    if !other.is_empty() {
        println!("background drops of the host, not the agent's: {other:#?}");
    }
    assert_eq!(real.len(), 1, "the provoked drop: {real:#?}");
    assert_eq!(real[0]["tracer_data"]["comm"], "bq-real-drop");

    // Every connection's teardown was seen, counted by reason, and not recorded.
    let m = agent.metrics();
    let purged =
        metric_value(&m, "bianque_dropwatch_events_total{reason=\"QUEUE_PURGE\"}").unwrap_or(0.0);
    let teardown =
        metric_value(&m, "bianque_dropwatch_not_recorded_total{why=\"teardown\"}").unwrap_or(0.0);
    let own =
        metric_value(&m, "bianque_dropwatch_not_recorded_total{why=\"agent\"}").unwrap_or(0.0);
    println!(
        "{calls} calls: QUEUE_PURGE {purged}, teardown not recorded {teardown}, agent's own {own}"
    );
    assert!(purged >= 30.0, "QUEUE_PURGE counted {purged}");
    assert!(
        teardown >= purged,
        "teardown {teardown} < QUEUE_PURGE {purged}"
    );
    // The kubelet probes (a SYN to a closed port from the agent) were seen and left out.
    assert!(own >= 1.0, "agent traffic {own}");
}
