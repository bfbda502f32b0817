//! deploy/: every file is exercised for real here. Alert rules: `promtool check rules` and one
//! `promtool test rules` file per alert (a case that fires, one that does not), and the metric
//! names they use exist on a real agent.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(rel)
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// The alert names of deploy/prometheus/alerts.yml, in order.
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(deploy("prometheus/alerts.yml"))
        .expect("alerts.yml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_string())
        .collect()
}

#[test]
fn alert_rules_pass_promtool_check() {
    let out = run_ok(
        Command::new("promtool")
            .args(["check", "rules"])
            .arg(deploy("prometheus/alerts.yml")),
    );
    let names = alert_names();
    assert!(names.len() >= 10, "{names:?}");
    assert!(
        out.contains(&format!("SUCCESS: {} rules found", names.len())),
        "{out}"
    );
}

#[test]
fn every_alert_has_a_promtool_test_that_fires_and_one_that_does_not() {
    for name in alert_names() {
        let file = deploy(&format!("prometheus/tests/{name}.yml"));
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("no test file for {name} ({}): {e}", file.display()));
        assert!(text.contains(&format!("alertname: {name}")), "{name}");
        let (fires, quiet) = text
            .split_once("- name: does not fire")
            .unwrap_or_else(|| panic!("{name}: no `does not fire` case"));
        assert!(
            fires.contains("- exp_labels:"),
            "{name}: the firing case expects no alert"
        );
        assert!(
            quiet.contains("exp_alerts: []"),
            "{name}: the quiet case expects alerts"
        );
        let out = run_ok(Command::new("promtool").args(["test", "rules"]).arg(&file));
        assert!(out.contains("SUCCESS"), "{name}: {out}");
    }
}

#[test]
fn alert_metrics_exist_on_a_real_agent() {
    // The shipper's families appear once Elasticsearch is configured (nothing need answer).
    let agent = Agent::start(
        "[storage.elasticsearch]\naddresses = [\"http://127.0.0.1:9\"]\n",
        &[],
    );
    let metrics = agent.metrics();
    let rules = std::fs::read_to_string(deploy("prometheus/alerts.yml")).expect("alerts.yml");
    let names = regex::Regex::new(r"\bbianque_[a-z_]+[a-z]\b").expect("regex");
    let mut checked = 0;
    for m in names.find_iter(&rules) {
        let name = m.as_str();
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "alerts.yml uses {name}, which the agent does not export"
        );
        checked += 1;
    }
    assert!(checked >= 8, "{checked}");
    // The name pattern of the kernel-loss alert matches real families.
    let lost =
        regex::Regex::new(r"(?m)^# TYPE (bianque_.+_(ringbuf|kmsg|events)_lost_total) counter$")
            .expect("regex");
    assert!(
        lost.captures_iter(&metrics).count() >= 5,
        "few *_lost_total families"
    );
}
