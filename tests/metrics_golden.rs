//! `/metrics` end to end: against the fixture host root (compared with a golden file; set
//! `UPDATE_GOLDEN=1` to regenerate it), and on the real host, both linted by `promtool`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const GOLDEN: &str = "tests/fixtures/golden/metrics.txt";

/// Values that change from scrape to scrape (timings, store size) are masked.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| {
            if !l.starts_with('#')
                && (l.contains("_duration_seconds") || l.starts_with("bianque_store_size_bytes"))
            {
                match l.rsplit_once(' ') {
                    Some((series, _)) => format!("{series} <volatile>"),
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn promtool_check(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by `make test`");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fixture_metrics_match_the_golden_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
    // Event tracers watch the real kernel, not the fixture: leave them out.
    let mut args = vec!["--host-root", root.to_str().unwrap()];
    let event_tracers: Vec<String> = bianque::tracer::registry()
        .iter()
        .filter(|s| s.mode != bianque::tracer::Mode::Metric)
        .map(|s| s.name.to_string())
        .collect();
    for t in &event_tracers {
        args.push("--disable");
        args.push(t);
    }
    let agent = Agent::start("", &args);
    let text = agent.metrics();
    promtool_check(&text);
    let got = normalize(&text);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(GOLDEN);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&golden).expect("golden file (UPDATE_GOLDEN=1 creates it)");
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .take(20)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "/metrics differs from {GOLDEN} (UPDATE_GOLDEN=1 cargo test --test metrics_golden regenerates it):\n{}\n(lines: want {}, got {})",
            diff.join("\n"),
            want.lines().count(),
            got.lines().count()
        );
    }
}

#[test]
fn real_host_metrics_pass_promtool() {
    let agent = Agent::start("", &[]);
    send_udp_from_thread("bq-lint", &format!("127.0.0.1:{}", closed_udp_port()), 1);
    assert!(wait_until(std::time::Duration::from_secs(5), || agent
        .metrics()
        .contains("bianque_dropwatch_events_total{reason=")));
    let text = agent.metrics();
    promtool_check(&text);
    assert_eq!(
        metric_value(
            &text,
            "bianque_scrape_collector_success{collector=\"loadavg\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(
            &text,
            "bianque_tracer_status{tracer=\"dropwatch\",mode=\"event\",status=\"active\"}"
        ),
        Some(1.0)
    );
}

#[test]
fn huatuo_prefix_renames_every_family() {
    let agent = Agent::start(
        "[metrics]\nprefix = \"huatuo_bamai\"\n",
        &["--disable", "dropwatch"],
    );
    let text = agent.metrics();
    assert!(text.contains("huatuo_bamai_loadavg_load1 "));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("huatuo_bamai_"), "{line}");
    }
}
