//! Least privilege: the agent run the way deploy/systemd/bianque.service runs it (its user, its
//! capability set, through setpriv) has every tracer active and records a real drop; with a
//! capability taken away, `bianque check` names it and exits non-zero.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use bianque::tracer::{self, check};
use common::*;

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd/bianque.service")
}

/// `Key=` of the unit's [Service] section (the last one, as systemd reads it).
fn unit_value(key: &str) -> String {
    let text = std::fs::read_to_string(unit_path()).expect("read the unit");
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .next_back()
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_string()
}

/// The unit's ambient capabilities in setpriv's spelling (`+bpf,+perfmon,…`), less `without`.
fn setpriv_caps(without: &[&str]) -> String {
    unit_value("AmbientCapabilities")
        .split_whitespace()
        .filter(|c| !without.contains(c))
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The unit's user, created as a system user for the test when it does not exist (removed
/// again on drop).
struct UnitUser {
    name: String,
    created: bool,
}

impl UnitUser {
    fn ensure() -> UnitUser {
        let name = unit_value("User");
        let exists = Command::new("id")
            .arg("-u")
            .arg(&name)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !exists {
            sh(&format!(
                "useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin {name}"
            ));
        }
        UnitUser {
            name,
            created: !exists,
        }
    }

    fn group(&self) -> String {
        unit_value("Group")
    }
}

impl Drop for UnitUser {
    fn drop(&mut self) {
        if self.created {
            sh_quiet(&format!("userdel {}", self.name));
        }
    }
}

/// `setpriv` arguments that give the process the unit's user, group and capabilities.
fn setpriv_args(user: &UnitUser, caps: &str) -> Vec<String> {
    vec![
        format!("--reuid={}", user.name),
        format!("--regid={}", user.group()),
        "--clear-groups".into(),
        format!("--inh-caps={caps}"),
        format!("--ambient-caps={caps}"),
        format!("--bounding-set=-all,{caps}"),
        "--no-new-privs".into(),
    ]
}

#[test]
fn the_unit_grants_exactly_what_the_tracers_need() {
    let want: Vec<&str> =
        check::deployment_capabilities(tracer::registry().iter().map(|s| s.requires))
            .into_iter()
            .map(|c| c.name())
            .collect();
    let mut ambient: Vec<String> = unit_value("AmbientCapabilities")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    ambient.sort();
    let mut bounding: Vec<String> = unit_value("CapabilityBoundingSet")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    bounding.sort();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    assert_eq!(
        ambient, want_sorted,
        "AmbientCapabilities vs what the tracers need"
    );
    assert_eq!(
        bounding, want_sorted,
        "CapabilityBoundingSet vs what the tracers need"
    );
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    // The unit names /usr/bin/bianque (the package's path; the .deb test verifies it in place):
    // here the same unit runs the binary just built.
    let dir = TempDir::new("unit");
    let unit = std::fs::read_to_string(unit_path())
        .expect("unit")
        .replace("/usr/bin/bianque", BIN);
    let path = dir.path().join("bianque.service");
    std::fs::write(&path, unit).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_unit_user_and_capabilities_run_every_tracer_and_record_a_drop() {
    let user = UnitUser::ensure();
    let dir = TempDir::new("caps");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    sh(&format!(
        "chown {}:{} {}",
        user.name,
        user.group(),
        data.display()
    ));
    let port = closed_udp_port();
    let cfg = dir.path().join("bianque.toml");
    std::fs::write(&cfg, format!("[events.dropwatch]\nports = [{port}]\n")).expect("config");
    let addr = format!("127.0.0.1:{}", free_port());
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let child = Command::new("setpriv")
        .args(setpriv_args(&user, &setpriv_caps(&[])))
        .arg(BIN)
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .arg("--listen")
        .arg(&addr)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn setpriv");
    let agent = Agent {
        child: Some(child),
        addr,
        dir,
    };
    assert!(
        wait_until(Duration::from_secs(30), || agent.get("/readyz").0 == 200),
        "not ready; log:\n{}",
        agent.log()
    );
    // Every enabled tracer: active, none inactive for want of a privilege, none failed (the ones
    // off by default, like netdev_hw, report `disabled`).
    let mut not_active = Vec::new();
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (_, body) = agent.get("/tracers");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let list = v["tracers"].as_array().cloned().unwrap_or_default();
            not_active = list
                .iter()
                .filter(|t| t["status"] != "active" && t["status"] != "disabled")
                .map(|t| format!("{} {} {}", t["name"], t["status"], t["reason"]))
                .collect();
            !list.is_empty() && not_active.is_empty()
        }),
        "not active as {}: {not_active:?}\nlog:\n{}",
        user.name,
        agent.log()
    );
    // It really is the unit's user, with no more than the unit's capabilities.
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let uid = sh(&format!("id -u {}", user.name));
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some(uid.trim())),
        "{status}"
    );
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .expect("CapEff")
        .trim()
        .to_string();
    let decoded = sh(&format!("capsh --decode={eff}"));
    let mut held: Vec<String> = decoded
        .trim()
        .split_once('=')
        .map(|(_, l)| l.split(',').map(|c| c.to_uppercase()).collect())
        .unwrap_or_default();
    held.sort();
    let mut want: Vec<String> = unit_value("AmbientCapabilities")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    want.sort();
    assert_eq!(held, want, "effective capabilities of the agent");

    send_udp_from_thread("bq-caps-sender", &format!("127.0.0.1:{port}"), 2);
    assert!(
        wait_until(Duration::from_secs(10), || {
            agent.events("tracer=dropwatch&limit=1000").iter().any(|e| {
                e["tracer_data"]["dport"] == port && e["tracer_data"]["drop_reason"] == "NO_SOCKET"
            })
        }),
        "no drop recorded; log:\n{}",
        agent.log()
    );
}

fn check_as(user: &UnitUser, caps: &str, json: bool) -> (i32, String) {
    let mut cmd = Command::new("setpriv");
    cmd.args(setpriv_args(user, caps)).arg(BIN).arg("check");
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run setpriv bianque check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn check_names_a_missing_capability_and_exits_non_zero() {
    let user = UnitUser::ensure();
    // The full set: every tracer can run, exit 0.
    let (code, text) = check_as(&user, &setpriv_caps(&[]), false);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("missing capabilities"), "{text}");

    // Without CAP_SYSLOG: softlockup cannot read /dev/kmsg and says so.
    let (code, text) = check_as(&user, &setpriv_caps(&["CAP_SYSLOG"]), false);
    assert_eq!(code, 1, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("softlockup "))
        .expect("softlockup row");
    assert!(line.contains("missing capabilities: CAP_SYSLOG"), "{line}");

    // Without CAP_PERFMON, as JSON: every BPF tracer names it, the metric collectors over
    // files do not.
    let (code, text) = check_as(&user, &setpriv_caps(&["CAP_PERFMON"]), true);
    assert_eq!(code, 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("check --json");
    assert_eq!(v["ok"], false);
    let rows = v["tracers"].as_array().expect("tracers");
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["name"] == name)
            .cloned()
            .expect(name)
    };
    let drop = row("dropwatch");
    assert_eq!(drop["supported"], false);
    assert_eq!(
        drop["missing_capabilities"],
        serde_json::json!(["CAP_PERFMON"])
    );
    assert!(
        drop["reason"]
            .as_str()
            .unwrap_or("")
            .contains("CAP_PERFMON"),
        "{drop}"
    );
    let uptime = row("uptime");
    assert_eq!(uptime["supported"], true);
    assert_eq!(uptime["missing_capabilities"], serde_json::json!([]));
    // Without CAP_SYS_ADMIN (never in the set) hungtask runs but says what it loses.
    let hung = row("hungtask");
    assert!(
        hung["degraded"].to_string().contains("CAP_SYS_ADMIN"),
        "{hung}"
    );

    // A config that disables what cannot run makes check pass again.
    let dir = TempDir::new("check");
    let cfg = dir.path().join("bianque.toml");
    std::fs::write(&cfg, "[events.softlockup]\nenabled = false\n").expect("config");
    let out = Command::new("setpriv")
        .args(setpriv_args(&user, &setpriv_caps(&["CAP_SYSLOG"])))
        .arg(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}
