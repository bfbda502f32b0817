//! `/metrics` end to end: against the fixture host root (compared with a golden file; set
//! `UPDATE_GOLDEN=1` to regenerate it), and on the real host, both linted by `promtool`.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const GOLDEN: &str = "tests/fixtures/golden/metrics.txt";

/// Values that change from scrape to scrape (timings, store size, the agent's own process) are
/// masked.
fn normalize(text: &str) -> String {
    text.lines()
        .map(|l| {
            if !l.starts_with('#')
                && (l.contains("_duration_seconds")
                    || l.contains("_store_size_bytes")
                    || l.starts_with("process_")
                    || l.starts_with("huatuo_bamai_process_"))
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
    promtool(text, false)
}

/// `lint_ok`: HuaTuo's own names break promtool's lint rules (camelCase, gauges named
/// `_total`); under its prefix only parse errors (exit 1) fail.
fn promtool(text: &str, lint_ok: bool) {
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
        out.status.success() || (lint_ok && out.status.code() == Some(3)),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tracers that read only files under the host root (no BPF on the real kernel).
fn reads_files_only(spec: &bianque::tracer::TracerSpec) -> bool {
    spec.mode == bianque::tracer::Mode::Metric
        && !spec.requires.contains(&bianque::tracer::Requirement::Btf)
}

/// Agent arguments for a fixture host root: event tracers, autotracers and collectors that own a
/// BPF program watch the real kernel, not the fixture, so they are left out.
fn fixture_args(root: &Path) -> Vec<String> {
    let mut args = vec!["--host-root".to_string(), root.display().to_string()];
    for spec in bianque::tracer::registry()
        .iter()
        .filter(|s| !reads_files_only(s))
    {
        args.push("--disable".to_string());
        args.push(spec.name.to_string());
    }
    args
}

/// Scrapes an agent on a fixture host root and compares with (or rewrites) a golden file.
fn check_fixture(root_dir: &str, golden_rel: &str, config: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(root_dir);
    let args = fixture_args(&root);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(config, &args);
    // Two scrapes: the second must equal the first (state kept between scrapes is stable).
    let first = normalize(&agent.metrics());
    let text = agent.metrics();
    promtool(
        &text,
        config.contains("huatuo_bamai") || config.contains("compat = \"huatuo\""),
    );
    let got = normalize(&text);
    assert_eq!(first, got, "a second scrape of a static fixture changed");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join(golden_rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &got).unwrap();
        return text;
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
            "/metrics differs from {golden_rel} (UPDATE_GOLDEN=1 cargo test --test metrics_golden regenerates it):\n{}\n(lines: want {}, got {})",
            diff.join("\n"),
            want.lines().count(),
            got.lines().count()
        );
    }
    text
}

#[test]
fn fixture_metrics_match_the_golden_file() {
    let text = check_fixture("tests/fixtures/root", GOLDEN, "");
    // Every collector ran and succeeded on the fixture.
    for spec in bianque::tracer::registry()
        .iter()
        .filter(|s| reads_files_only(s))
    {
        assert_eq!(
            metric_value(
                &text,
                &format!(
                    "bianque_scrape_collector_success{{collector=\"{}\"}}",
                    spec.name
                )
            ),
            Some(1.0),
            "{}",
            spec.name
        );
    }
    // Both fixture containers (v1 cgroupfs and systemd drivers) were found.
    for id in ["a".repeat(64), "b".repeat(64)] {
        assert!(
            text.contains(&format!(
                "bianque_cpu_util_container_cores{{container_id=\"{id}\""
            )),
            "container {id} missing"
        );
    }
}

#[test]
fn cgroup_v2_fixture_matches_its_golden_file() {
    let text = check_fixture(
        "tests/fixtures/root-v2",
        "tests/fixtures/golden/metrics-v2.txt",
        "",
    );
    let id = "c".repeat(64);
    let labels = format!("container_id=\"{id}\",container_name=\"\",container_host_namespace=\"\",container_type=\"normal\",container_qos=\"\"");
    assert_eq!(
        metric_value(
            &text,
            &format!("bianque_cpu_stat_container_throttled_seconds_total{{{labels}}}")
        ),
        Some(0.25)
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("bianque_cpu_util_container_cores{{{labels}}}")
        ),
        Some(0.5)
    );
    assert_eq!(
        metric_value(
            &text,
            &format!("bianque_memory_events_container_oom_kill_total{{{labels}}}")
        ),
        Some(1.0)
    );
}

#[test]
fn huatuo_prefix_gives_huatuo_names_on_the_fixture() {
    let text = check_fixture(
        "tests/fixtures/root",
        "tests/fixtures/golden/metrics-huatuo.txt",
        "[metrics]\nprefix = \"huatuo_bamai\"\n",
    );
    // Series exactly as HuaTuo's own expected-metrics fixtures spell them (minus its
    // host/region base labels).
    for line in [
        "huatuo_bamai_netstat_TcpExt_ListenDrops 2",
        "huatuo_bamai_netstat_Tcp_CurrEstab 3",
        "huatuo_bamai_sockstat_TCP_mem_bytes 40960",
        "huatuo_bamai_sockstat_sockets_used 773",
        "huatuo_bamai_tcp_memory_limit_pages 12340770",
        "huatuo_bamai_arp_entries 2",
        "huatuo_bamai_arp_total 15",
        "huatuo_bamai_memory_vmstat_pgfault ",
        "huatuo_bamai_netdev_receive_bytes_total{device=\"eth0\"} 108926392622",
        "huatuo_bamai_mountpoint_perm_ro{mountpoint=\"/boot\"} 1",
        "huatuo_bamai_memory_buddyinfo_blocks{node=\"1\",order=\"0\",zone=\"Normal\"} 17",
        "huatuo_bamai_diskio_read_bytes_total{device=\"sda\"} 33554432",
        "huatuo_bamai_cpu_util_usr ",
        "huatuo_bamai_cpu_stat_container_nr_throttled{container_id=\"aaaa",
        "huatuo_bamai_loadavg_load1 ",
    ] {
        assert!(text.contains(line), "missing `{line}`");
    }
}

#[test]
fn huatuo_compat_switch_gives_huatuo_labels_on_a_huatuo_host_tree() {
    // The fixture is laid out as a HuaTuo host: the host's network only under proc/1/net.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
    assert!(root.join("proc/1/net/dev").exists() && !root.join("proc/net").exists());
    let text = check_fixture(
        "tests/fixtures/root",
        "tests/fixtures/golden/metrics-huatuo-compat.txt",
        "compat = \"huatuo\"\nregion = \"fixture-region\"\nhostname = \"fixture-host\"\n[metrics]\nconst_labels = { idc = \"a1\" }\n",
    );
    let base = "idc=\"a1\",region=\"fixture-region\",host=\"fixture-host\"";
    for line in [
        format!("huatuo_bamai_netstat_TcpExt_ListenDrops{{{base}}} 2"),
        format!("huatuo_bamai_netdev_receive_bytes_total{{{base},device=\"eth0\"}} 108926392622"),
        format!("huatuo_bamai_arp_entries{{{base}}} 2"),
        format!("huatuo_bamai_xfs_alloc_blocks_total{{{base}}} 125170297"),
        format!("huatuo_bamai_xfs_inode_missed_total{{{base}}} 35150"),
        format!("huatuo_bamai_xfs_log_space_sleep_total{{{base}}} 7"),
        format!("huatuo_bamai_xfs_buf_busy_locked_total{{{base}}} 77"),
        format!("huatuo_bamai_scrape_collector_success{{{base},collector=\"netstat\"}} 1"),
        format!("huatuo_bamai_cpu_util_container_cores{{{base},container_host=\"\",container_name=\"bbbbbbbbbbbb\",container_type=\"normal\",container_level=\"burstable\",container_hostnamespace=\"\"}}"),
        format!("huatuo_bamai_process_open_fds{{{base}}} "),
    ] {
        assert!(text.contains(&line), "missing `{line}`");
    }
    // No bianque-only container label, and every series has host and region.
    assert!(
        !text.contains("container_id="),
        "container_id label under compat"
    );
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains(base), "{line}");
    }
    // Every network collector found its files under proc/1/net.
    for c in ["arp", "netdev", "netstat", "sockstat", "tcp_memory"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("huatuo_bamai_scrape_collector_success{{{base},collector=\"{c}\"}}")
            ),
            Some(1.0),
            "{c}"
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
    // Every family, the process metrics too (HuaTuo prefixes them).
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("huatuo_bamai_"), "{line}");
    }
}

#[test]
fn wait_sum_percent_appears_after_a_one_second_window() {
    // HuaTuo exports `cpu_stat_container_wait_sum_percent` only once two samples of `wait_sum`
    // (v1 cpu.stat with schedstats; the fixture container `aaaa…` has it) are >= 1 s apart.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
    let mut args = vec!["--host-root", root.to_str().unwrap()];
    let others: Vec<String> = bianque::tracer::registry()
        .iter()
        .filter(|s| s.mode != bianque::tracer::Mode::Metric)
        .map(|s| s.name.to_string())
        .collect();
    for t in &others {
        args.push("--disable");
        args.push(t);
    }
    let agent = Agent::start("[metrics]\nprefix = \"huatuo_bamai\"\n", &args);
    let series = format!(
        "huatuo_bamai_cpu_stat_container_wait_sum_percent{{container_id=\"{}\",container_name=\"\",container_host_namespace=\"\",container_type=\"normal\",container_qos=\"\"}}",
        "a".repeat(64)
    );
    assert_eq!(
        metric_value(&agent.metrics(), &series),
        None,
        "first sample"
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // Static counters: neither wait nor usage moved.
    assert_eq!(metric_value(&agent.metrics(), &series), Some(0.0));
    // The container without wait_sum (no schedstats) has no such series.
    assert!(!agent.metrics().contains(&format!(
        "wait_sum_percent{{container_id=\"{}",
        "b".repeat(64)
    )));
}

/// Two collectors whose files never answer (FIFOs without a writer: `open` blocks, as a hung
/// NFS or FUSE read would) report `success 0` after the timeout; the others still succeed,
/// even with one collector at a time, and the next scrape does not wait for the stuck ones.
#[test]
fn stuck_collectors_time_out_alone() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/root");
    let root = TempDir::new("stuck-root");
    sh(&format!(
        "cp -a {src}/. {dst}/ && cd {dst}/proc && rm loadavg uptime && mkfifo loadavg uptime",
        src = fixture.display(),
        dst = root.path().display()
    ));
    let args = fixture_args(root.path());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = Agent::start(
        "[metrics]\ncollector_timeout_ms = 1000\ncollector_concurrency = 1\n",
        &args,
    );
    let success = |text: &str, name: &str| {
        metric_value(
            text,
            &format!("bianque_scrape_collector_success{{collector=\"{name}\"}}"),
        )
    };
    for round in 0..2 {
        let t = std::time::Instant::now();
        let text = agent.metrics();
        let took = t.elapsed();
        for stuck in ["loadavg", "uptime"] {
            assert_eq!(success(&text, stuck), Some(0.0), "round {round}: {stuck}");
        }
        for fine in ["cpu", "memory_vmstat", "netdev", "diskio"] {
            assert_eq!(success(&text, fine), Some(1.0), "round {round}: {fine}");
        }
        assert!(text.contains("bianque_memory_vmstat_"), "round {round}");
        // First round: each stuck collector holds the only slot for its 1 s timeout. Later
        // rounds skip them while they are still stuck.
        let limit = if round == 0 { 4.0 } else { 0.9 };
        assert!(
            took.as_secs_f64() < limit,
            "round {round} took {took:?}\n{}",
            agent.log()
        );
    }
    assert!(
        agent.log().contains("collector timed out"),
        "{}",
        agent.log()
    );
}
