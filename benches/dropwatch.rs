//! dropwatch cost, measured side by side in one run (the machines are shared and noisy).
//! Run as root: `cargo bench --bench dropwatch` (or `make bench`).
//!
//! 1. Kernel cost per drop: rate of a tight drop loop (UDP to a closed port on 127.0.0.1, one
//!    kfree_skb per send) with the agent attached vs without, alternating rounds; the median of
//!    the per-round ratios (target ≥ 0.95). Twice: the agent with dropwatch as its only event
//!    tracer (the cost of dropwatch), then the whole agent on its defaults (each loopback send
//!    also runs the softirq and netrecvlat programs).
//! 2. Agent CPU while ~100k drops/s hit it at the default rate limit (target ≤ 2% of a core),
//!    after a 1 s warm-up storm (which loads the kernel symbol table once).
//! 3. Start-up to all tracers attached (target ≤ 300 ms) and steady RSS (target ≤ 20 MB).

use std::net::UdpSocket;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::{agent_command, free_port, http, median, BIN};

struct AgentProc {
    child: Child,
    dir: std::path::PathBuf,
}

impl AgentProc {
    fn start() -> (AgentProc, Duration) {
        Self::start_with(&[])
    }

    fn start_with(disable: &[String]) -> (AgentProc, Duration) {
        let dir = std::env::temp_dir().join(format!("bianque-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let addr = format!("127.0.0.1:{}", free_port());
        let t0 = Instant::now();
        let child = agent_command(&addr, &dir, None, disable)
            .spawn()
            .expect("spawn bianque");
        while http(&addr, "GET", "/readyz", &[]).0 != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "agent did not become ready"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        (AgentProc { child, dir }, t0.elapsed())
    }

    fn cpu_ticks(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let rest: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .unwrap_or("")
            .split_whitespace()
            .collect();
        rest.get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + rest
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends UDP datagrams to a closed port as fast as possible for `d`; returns sends per second.
fn flood(d: Duration) -> f64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = ("127.0.0.1", 9u16);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        for _ in 0..256 {
            let _ = s.send_to(b"x", target);
        }
        n += 256;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Sends at about `rate` per second for `d`; returns the rate achieved.
fn paced_flood(rate: f64, d: Duration) -> f64 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < d {
        let due = (start.elapsed().as_secs_f64() * rate) as u64;
        while n < due {
            let _ = s.send_to(b"x", ("127.0.0.1", 9u16));
            n += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// The event and autotracing tracers this build registers (`bianque check --json`).
fn event_tracers() -> Vec<String> {
    let out = Command::new(BIN)
        .args(["check", "--json"])
        .output()
        .expect("bianque check");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json output");
    v.as_array()
        .or_else(|| v["tracers"].as_array())
        .into_iter()
        .flatten()
        .filter(|t| t["mode"] != "metric")
        .filter_map(|t| t["name"].as_str().map(str::to_string))
        .collect()
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the dropwatch benchmark loads BPF: run it as root");
        std::process::exit(1);
    }
    let round = Duration::from_millis(1500);
    let rounds = 7;
    println!(
        "dropwatch benchmark ({} rounds of {:?} each side)",
        rounds, round
    );

    // 1. Kernel cost per drop: alternate without/with the agent attached.
    let others: Vec<String> = event_tracers()
        .into_iter()
        .filter(|t| t != "dropwatch")
        .collect();
    for (label, disable) in [
        ("dropwatch the only event tracer", others),
        ("the whole agent", Vec::new()),
    ] {
        let mut ratios = Vec::new();
        let (mut base_rates, mut with_rates) = (Vec::new(), Vec::new());
        for i in 0..rounds {
            let (without, with) = if i % 2 == 0 {
                let w0 = flood(round);
                let (agent, _) = AgentProc::start_with(&disable);
                let w1 = flood(round);
                drop(agent);
                (w0, w1)
            } else {
                let (agent, _) = AgentProc::start_with(&disable);
                let w1 = flood(round);
                drop(agent);
                let w0 = flood(round);
                (w0, w1)
            };
            base_rates.push(without);
            with_rates.push(with);
            ratios.push(with / without);
        }
        println!(
            "drop loop rate, {label}: without agent {:.0}/s, with agent {:.0}/s (medians) -> ratio {:.3} (target >= 0.95)",
            median(base_rates),
            median(with_rates),
            median(ratios)
        );
    }

    // 2 and 3: start-up, CPU under a ~100k/s drop storm, RSS.
    let mut startups = Vec::new();
    for _ in 0..5 {
        let (_agent, took) = AgentProc::start();
        startups.push(took.as_secs_f64() * 1000.0);
    }
    let (agent, _) = AgentProc::start();
    let rss_idle = agent.rss_kib();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    // Warm-up: the first drops load the kernel symbol table (~0.1 s of CPU, once per minute of
    // new addresses at most); the steady cost of a storm is what is measured.
    paced_flood(100_000.0, Duration::from_secs(1));
    std::thread::sleep(Duration::from_millis(500));
    let ticks0 = agent.cpu_ticks();
    let t0 = Instant::now();
    let achieved = paced_flood(100_000.0, Duration::from_secs(5));
    let cpu_pct = (agent.cpu_ticks() - ticks0) as f64 / hz / t0.elapsed().as_secs_f64() * 100.0;
    let rss_load = agent.rss_kib();
    drop(agent);
    println!(
        "start-up to all tracers attached: median {:.0} ms over 5 starts (target <= 300 ms)",
        median(startups)
    );
    println!("agent CPU during a {:.0} drops/s storm (default limit 100/s): {:.2}% of one core (target <= 2%)", achieved, cpu_pct);
    println!(
        "agent RSS: {:.1} MB idle, {:.1} MB after the storm (target <= 20 MB)",
        rss_idle as f64 / 1024.0,
        rss_load as f64 / 1024.0
    );
}
