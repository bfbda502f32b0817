//! Operator comforts on a real agent: `--listen :PORT` and host names, gzip on /metrics when
//! asked, JSON logs, shell completions and the man page.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// `bianque run --listen <listen>` (config `cfg`), stopped on drop; its log is in the dir.
fn start_listening(listen: &str, cfg: &str) -> Agent {
    let dir = TempDir::new("operator");
    let cfg_path = dir.path().join("bianque.toml");
    std::fs::write(&cfg_path, cfg).expect("config");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let child = Command::new(BIN)
        .args(["run", "--listen", listen, "--config"])
        .arg(&cfg_path)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn bianque");
    let port = listen.rsplit(':').next().unwrap_or("").to_string();
    let agent = Agent {
        child: Some(child),
        addr: format!("127.0.0.1:{port}"),
        dir,
    };
    assert!(
        wait_until(Duration::from_secs(20), || agent.get("/readyz").0 == 200),
        "not ready on {listen}; log:\n{}",
        agent.log()
    );
    agent
}

/// Local listening TCP sockets on `port` as `ss` prints them (`0.0.0.0:19704`…).
fn listening_on(port: u16) -> String {
    sh(&format!("ss -Hltn 'sport = :{port}' | awk '{{print $4}}'"))
}

#[test]
fn listen_colon_port_binds_every_interface() {
    let port = free_port();
    let agent = start_listening(&format!(":{port}"), "");
    assert_eq!(listening_on(port).trim(), format!("0.0.0.0:{port}"));
    assert_eq!(agent.get("/healthz").0, 200);
    // The CLI finds it through the same flag (connecting to loopback).
    let out = Command::new(BIN)
        .args(["tracers", "--listen", &format!(":{port}"), "--json"])
        .output()
        .expect("bianque tracers");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"hits\""),
        "live answer expected: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn listen_host_name_resolves() {
    let port = free_port();
    let agent = start_listening(&format!("localhost:{port}"), "");
    let bound = listening_on(port);
    assert!(
        bound.trim() == format!("127.0.0.1:{port}") || bound.trim() == format!("[::1]:{port}"),
        "{bound}"
    );
    assert_eq!(agent.get("/healthz").0, 200);
}

#[test]
fn bad_listen_is_a_one_line_config_error() {
    for bad in [":notaport", "no-such-host.invalid:19704", "19704"] {
        let out = Command::new(BIN)
            .args(["run", "--listen", bad, "--data-dir", "/nonexistent/never"])
            .output()
            .expect("bianque run");
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains("server.listen"), "{err}");
        assert!(err.contains(bad), "{err}");
    }
}

#[test]
fn metrics_are_gzipped_when_asked() {
    let agent = Agent::start("", &[]);
    let client = reqwest::blocking::Client::builder()
        .no_gzip()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!("http://{}/metrics", agent.addr);
    let plain = client.get(&url).send().expect("GET /metrics");
    assert_eq!(plain.status(), 200);
    assert!(plain.headers().get("content-encoding").is_none());
    let plain_body = plain.text().expect("body");

    let gz = client
        .get(&url)
        .header("Accept-Encoding", "gzip")
        .send()
        .expect("GET /metrics gzip");
    assert_eq!(gz.status(), 200);
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    assert!(gz
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .starts_with("text/plain; version=0.0.4"));
    let bytes = gz.bytes().expect("gz body");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("valid gzip");
    assert!(text.contains("bianque_scrape_collector_success{collector=\"uptime\"} 1"));
    println!(
        "/metrics: {} bytes plain, {} gzipped (ratio {:.1})",
        plain_body.len(),
        bytes.len(),
        plain_body.len() as f64 / bytes.len() as f64
    );
    assert!(bytes.len() * 4 < plain_body.len(), "gzip saves little");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let port = free_port();
    let mut agent = start_listening(&format!("127.0.0.1:{port}"), "[log]\nformat = \"json\"\n");
    agent.terminate(Duration::from_secs(5));
    let log = agent.log();
    let mut started = None;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "bianque started" {
            started = Some(v);
        }
    }
    let started = started.unwrap_or_else(|| panic!("no start line in:\n{log}"));
    assert_eq!(started["listen"], format!("127.0.0.1:{port}"));
    assert_eq!(started["level"], "INFO");
}

#[test]
fn completions_and_man_page() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("completions");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("check") && text.contains("host-root"),
            "{shell}"
        );
    }
    // The bash script loads and registers the completion.
    let dir = TempDir::new("completions");
    let script = dir.path().join("bianque.bash");
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .output()
        .expect("completions");
    std::fs::write(&script, &out.stdout).expect("write");
    let reg = sh(&format!(
        "bash -c 'source {} && complete -p bianque'",
        script.display()
    ));
    assert!(reg.contains("bianque"), "{reg}");

    let out = Command::new(BIN).arg("man").output().expect("man");
    assert!(out.status.success());
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH bianque 1"),
        "{roff}"
    );
    let page = dir.path().join("bianque.1");
    std::fs::write(&page, &out.stdout).expect("write");
    let rendered = sh(&format!("MANWIDTH=100 man -l {} | col -b", page.display()));
    for word in ["NAME", "SYNOPSIS", "SUBCOMMANDS", "completions", "check"] {
        assert!(rendered.contains(word), "{word} missing in:\n{rendered}");
    }
}
