//! What the autotracing detectors cost while nothing is wrong, measured side by side in one run:
//! two agents run over the same window, one with every autotracer on (default intervals, their
//! thresholds set out of reach so that no capture runs on this shared, busy machine) and one
//! with every autotracer disabled; everything else is the same. The agents' CPU time (all
//! threads, from `/proc/<pid>/task/*/schedstat`, ns) over the window, as % of one core, and the
//! difference is the detectors' cost. Per-thread CPU of the first agent is printed too: the
//! runner names each tracer's thread `tracer-<name>`, so each detector shows on its own.
//!
//! `cargo bench --bench autotracing_idle` (root). Target: ≤ 0.2 % of one core for all the
//! detectors together. `BQ_BENCH_IDLE_SECS` (default 120) sets the window; a warm-up of 15 s
//! (BPF loading, first cgroup walks) comes before it.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bianque::tracer::{registry, Mode};

mod common;

use common::{agent_command, free_port, BIN};

/// Thresholds no detector reaches, so the detectors run and never capture.
const QUIET: &str = "\
[autotracing.cpuidle]\nuser_threshold_percent = 100\nsys_threshold_percent = 100\nusage_threshold_percent = 100\n\
[autotracing.cpusys]\nsys_threshold_percent = 100\n\
[autotracing.cpu_pressure]\nthreshold_percent = 100\n\
[autotracing.waitrate]\nwait_threshold_percent = 100\nthrottled_threshold_percent = 100\n\
[autotracing.dload]\nthreshold_load = 1000000\n\
[autotracing.memburst]\nburst_percent = 100000\nanon_threshold_percent = 100\n";

struct Agent {
    child: Child,
    dir: std::path::PathBuf,
}

impl Agent {
    fn start(tag: &str, config: &str, disable: &[&str]) -> Agent {
        let dir =
            std::env::temp_dir().join(format!("bianque-idle-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bench dir");
        let cfg = dir.join("bianque.toml");
        std::fs::write(&cfg, config).expect("config");
        let addr = format!("127.0.0.1:{}", free_port());
        let child = agent_command(&addr, &dir.join("data"), Some(&cfg), disable)
            .spawn()
            .expect("spawn bianque");
        Agent { child, dir }
    }

    /// Run time (ns) per thread: tid → (comm, ns).
    fn threads(&self) -> HashMap<u32, (String, u64)> {
        let mut out = HashMap::new();
        let base = format!("/proc/{}/task", self.child.id());
        let Ok(rd) = std::fs::read_dir(&base) else {
            return out;
        };
        for e in rd.flatten() {
            let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let ns = std::fs::read_to_string(e.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            let comm = std::fs::read_to_string(e.path().join("comm"))
                .unwrap_or_default()
                .trim()
                .to_string();
            out.insert(tid, (comm, ns));
        }
        out
    }

    fn total_ns(t: &HashMap<u32, (String, u64)>) -> u64 {
        t.values().map(|(_, ns)| ns).sum()
    }

    /// Records written by autotracers (should be none).
    fn records(&self) -> String {
        let out = Command::new(BIN)
            .args(["events", "--json", "--limit", "100", "--data-dir"])
            .arg(self.dir.join("data"))
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
            Err(_) => String::new(),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    let secs: u64 = std::env::var("BQ_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let autotracers: Vec<&str> = registry()
        .iter()
        .filter(|s| s.mode == Mode::Autotracing)
        .map(|s| s.name)
        .collect();
    let on = Agent::start("on", QUIET, &[]);
    let off = Agent::start("off", QUIET, &autotracers);
    std::thread::sleep(Duration::from_secs(15));
    let (a0, b0, t0) = (on.threads(), off.threads(), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (a1, b1) = (on.threads(), off.threads());
    let wall = t0.elapsed().as_secs_f64();
    let pct = |ns: u64| ns as f64 / 1e9 / wall * 100.0;
    let on_pct = pct(Agent::total_ns(&a1).saturating_sub(Agent::total_ns(&a0)));
    let off_pct = pct(Agent::total_ns(&b1).saturating_sub(Agent::total_ns(&b0)));

    // Per thread of the agent with autotracers, grouped by name (tokio workers share one).
    let mut by_comm: HashMap<String, u64> = HashMap::new();
    for (tid, (comm, ns)) in &a1 {
        let before = a0.get(tid).map(|(_, n)| *n).unwrap_or(0);
        *by_comm.entry(comm.clone()).or_default() += ns.saturating_sub(before);
    }
    let mut rows: Vec<(String, u64)> = by_comm.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    eprintln!("agent with autotracers, CPU per thread name over {wall:.0} s:");
    for (comm, ns) in rows.iter().take(15) {
        eprintln!("  {comm:<16} {:.4}% of a core", pct(*ns));
    }
    let detectors: u64 = rows
        .iter()
        .filter(|(c, _)| {
            autotracers
                .iter()
                .any(|a| format!("tracer-{a}").starts_with(c.as_str()))
        })
        .map(|(_, ns)| ns)
        .sum();
    let fired = on
        .records()
        .lines()
        .filter(|l| l.contains("\"autotracing\""))
        .count();
    println!(
        "autotracing idle ({} detectors: {}; {wall:.0} s, same window):\n  \
         agent with autotracers = {on_pct:.3}% of one core, without = {off_pct:.3}% \
         (difference {:+.3} points, target ≤ 0.2)\n  \
         the detector threads themselves = {:.4}% of one core; captures during the window: {fired}",
        autotracers.len(),
        autotracers.join(", "),
        on_pct - off_pct,
        pct(detectors),
    );
}
