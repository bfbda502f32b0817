//! The command line: bad input gives one clear line and the right exit code; `events`,
//! `tracers` and `check` show what users need.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs `bianque run` with a config and args; returns (exit code, stderr).
fn run_bad(config: &str, args: &[&str]) -> (i32, String) {
    let dir = TempDir::new("cli");
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_clear_line(stderr: &str, needle: &str) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got:\n{stderr}");
    assert!(lines[0].contains(needle), "`{needle}` not in: {}", lines[0]);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let (code, err) = run_bad("[server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n", &[]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "lisen");
    assert!(err.contains("c.toml"), "names the file: {err}");
    let (code, err) = run_bad("[events.dropwatch]\nmax_event_per_second = 5\n", &[]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "max_event_per_second");
}

#[test]
fn wrong_type_and_out_of_range_exit_2() {
    let (code, err) = run_bad(
        "[events.dropwatch]\nmax_events_per_second = \"lots\"\n",
        &[],
    );
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "max_events_per_second");
    let (code, err) = run_bad("[events.dropwatch]\nmax_events_per_second = 5000000\n", &[]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "events.dropwatch.max_events_per_second");
    assert!(err.contains("0..=1000000"), "{err}");
    let (code, err) = run_bad("[store]\nretention_max_age_hours = -1\n", &[]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "retention_max_age_hours");
}

#[test]
fn unknown_tracer_in_disable_exits_2() {
    let (code, err) = run_bad("", &["--disable", "dropwach"]);
    assert_eq!(code, 2);
    assert_one_clear_line(&err, "dropwach");
    assert!(err.contains("dropwatch"), "lists the known tracers: {err}");
}

#[test]
fn listen_address_in_use_exits_1() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let (code, err) = run_bad("", &["--listen", &addr]);
    assert_eq!(code, 1);
    assert_one_clear_line(&err, &format!("cannot listen on {addr}"));
    assert!(err.to_lowercase().contains("in use"), "{err}");
}

#[test]
fn unwritable_data_dir_exits_1() {
    let dir = TempDir::new("unwritable");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let data = file.join("data");
    let out = Command::new(BIN)
        .args([
            "run",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_one_clear_line(&err, "cannot create data dir");
    assert!(err.contains(data.to_str().unwrap()), "{err}");
}

#[test]
fn missing_config_file_exits_2() {
    let out = Command::new(BIN)
        .args(["run", "--config", "/nonexistent/bianque.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_one_clear_line(
        &String::from_utf8_lossy(&out.stderr),
        "/nonexistent/bianque.toml",
    );
}

#[test]
fn events_tracers_and_check_commands() {
    let agent = Agent::start("", &[]);
    let port = closed_udp_port();
    send_udp_from_thread("bq-cli-sender", &format!("127.0.0.1:{port}"), 2);
    assert!(wait_until(Duration::from_secs(5), || agent
        .events("tracer=dropwatch&limit=1000")
        .iter()
        .any(|e| e["tracer_data"]["dport"] == port)));
    // The store is read while the agent writes to it.
    let data = agent.data_dir();
    let out = Command::new(BIN)
        .arg("events")
        .arg("--data-dir")
        .arg(&data)
        .args(["--tracer", "dropwatch", "--limit", "1000"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("drop_reason=NO_SOCKET"), "{table}");
    assert!(table.contains(&format!("dport={port}")), "{table}");

    let out = Command::new(BIN)
        .arg("events")
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--tracer",
            "dropwatch",
            "--since",
            "5m",
            "--json",
            "--limit",
            "1000",
        ])
        .output()
        .unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines
        .iter()
        .any(|e| e["tracer_data"]["dport"] == port && e["tracer_data"]["comm"] == "bq-cli-sender"));
    // Newest first.
    let times: Vec<&str> = lines
        .iter()
        .map(|e| e["tracer_time"].as_str().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");

    let out = Command::new(BIN)
        .args(["tracers", "--listen", &agent.addr])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let dw = text
        .lines()
        .find(|l| l.starts_with("dropwatch"))
        .expect("dropwatch row");
    assert!(dw.contains("active"), "{text}");

    let out = Command::new(BIN).args(["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    let dw = text
        .lines()
        .find(|l| l.starts_with("dropwatch"))
        .expect("dropwatch row");
    assert!(dw.contains(" yes "), "{text}");

    let out = Command::new(BIN)
        .args(["check", "--host-root", "/nonexistent-root", "--json"])
        .output()
        .unwrap();
    // Enabled tracers that cannot run there: exit 1.
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let la = v["tracers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "loadavg")
        .unwrap()
        .clone();
    assert_eq!(la["supported"], false);
    assert!(la["reason"]
        .as_str()
        .unwrap()
        .contains("/nonexistent-root/proc/loadavg"));
}

#[test]
fn events_on_a_missing_store_is_a_clear_error() {
    let out = Command::new(BIN)
        .args(["events", "--data-dir", "/nonexistent/dir"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_one_clear_line(
        &String::from_utf8_lossy(&out.stderr),
        "no store at /nonexistent/dir",
    );
}
