//! Kernel-side cost of each event tracer on its hot path, measured side by side in one run:
//! a workload's throughput with the tracer attached vs detached, in alternating rounds, with
//! the median of the per-round ratios (the machines are shared and noisy).
//! Run as root: `cargo bench --bench events_overhead`.
//!
//! One agent runs throughout with every event tracer stopped; each tracer is started and
//! stopped through the HTTP control API around the rounds, so agent start-up and its idle CPU
//! are the same on both sides and only the attached BPF programs (and what they turn on, e.g.
//! RX timestamps for netrecvlat) differ. Workloads:
//! - `udp_drop`: 1-byte UDP to a closed port on 127.0.0.1 (kfree_skb, NET_RX, ICMP), sends/s;
//! - `tcp_rr`: 64-byte request/response over loopback TCP, round trips/s (per-packet hooks);
//! - `tcp_stream`: 64 KiB writes over loopback TCP, bytes/s;
//! - `memcg_fill`: `dd` of 192 MiB of page cache in a 64 MiB memory cgroup (memcg reclaim), MB/s.
//!   Tracers whose hooks fire only on the event itself (oom, hungtask, softlockup,
//!   netdev_events) have no hot path to measure.
//!
//! The throughput ratios carry the noise of a shared machine (the A/A row shows how much), so a
//! second table measures the attached programs themselves: with `kernel.bpf_stats_enabled`
//! on for a moment (restored after), the run count and run time of each of the agent's BPF
//! programs over one round give ns per call and ns added per workload operation, and from the
//! detached operation time an expected ratio. The stats themselves cost ~20-40 ns per call.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

mod common;

use common::{agent_command, free_port, median, workloads};
const TOKEN: &str = "bench-token-0123456789";
const ROUND: Duration = Duration::from_millis(1000);

/// Alternating rounds per case (`BENCH_ROUNDS`, default 9).
fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(9)
}

struct Agent {
    child: Child,
    addr: String,
    dir: std::path::PathBuf,
}

impl Agent {
    fn start(disable: &[String]) -> Agent {
        let dir = std::env::temp_dir().join(format!("bianque-ev-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("bianque.toml");
        // `BENCH_AGENT_CONFIG` (TOML) is added to the agent's config, e.g. to measure an opt-in
        // part: `BENCH_AGENT_CONFIG=$'[events.softirq]\nlatency_histogram = true'`.
        let extra = std::env::var("BENCH_AGENT_CONFIG").unwrap_or_default();
        std::fs::write(&cfg, format!("[server]\ntoken = \"{TOKEN}\"\n{extra}\n")).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let child = agent_command(&addr, &dir.join("data"), Some(&cfg), disable)
            .spawn()
            .expect("spawn bianque");
        let agent = Agent { child, addr, dir };
        let t0 = Instant::now();
        while http(&agent.addr, "GET", "/readyz").0 != 200 {
            assert!(t0.elapsed() < Duration::from_secs(30), "agent not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        agent
    }

    fn status(&self, tracer: &str) -> String {
        let (_, body) = http(&self.addr, "GET", "/tracers");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        v["tracers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == tracer)
            .and_then(|t| t["status"].as_str())
            .unwrap_or("")
            .to_string()
    }

    fn attach(&self, tracers: &[&str]) {
        for t in tracers {
            let (code, body) = http(&self.addr, "POST", &format!("/tracers/{t}/start"));
            assert!(code == 200, "start {t}: {code} {body}");
        }
        for t in tracers {
            let t0 = Instant::now();
            while self.status(t) != "active" {
                assert!(
                    t0.elapsed() < Duration::from_secs(20),
                    "{t} not active: {}",
                    self.status(t)
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    fn detach(&self, tracers: &[&str]) {
        for t in tracers {
            let (code, body) = http(&self.addr, "POST", &format!("/tracers/{t}/stop"));
            assert!(code == 200, "stop {t}: {code} {body}");
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    common::http(
        addr,
        method,
        path,
        &[("Authorization", &format!("Bearer {TOKEN}"))],
    )
}

/// A memory cgroup with a 64 MiB limit, removed on drop.
struct MemCg(std::path::PathBuf);

impl MemCg {
    fn new() -> Option<MemCg> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let root = bianque::cgroupfs::Layout::from_mountinfo(
            &mountinfo,
            &bianque::host::HostRoot::default(),
        )
        .mount_of("memory")
        .map(std::path::Path::to_path_buf)?;
        let dir = root.join(format!("bq-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cg = MemCg(dir);
        let v1 = cg.0.join("memory.limit_in_bytes");
        let f = if v1.exists() {
            v1
        } else {
            cg.0.join("memory.max")
        };
        std::fs::write(f, (64u64 << 20).to_string()).ok()?;
        Some(cg)
    }
}

impl Drop for MemCg {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

type Workload = fn(&Ctx) -> f64;

struct Ctx {
    memcg: Option<MemCg>,
    tmp: std::path::PathBuf,
}

fn udp_drop(_: &Ctx) -> f64 {
    workloads::udp_drop(ROUND)
}

fn tcp_rr(_: &Ctx) -> f64 {
    workloads::tcp_rr(ROUND)
}

fn tcp_stream(_: &Ctx) -> f64 {
    workloads::tcp_stream(ROUND)
}

fn memcg_fill(ctx: &Ctx) -> f64 {
    let Some(cg) = &ctx.memcg else {
        return f64::NAN;
    };
    let file = ctx.tmp.join("fill");
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo $$ > {}/cgroup.procs && exec dd if=/dev/zero of={} bs=1M count=192 2>/dev/null",
            cg.0.display(),
            file.display()
        ))
        .status();
    let took = start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    match status {
        Ok(s) if s.success() => 192.0 / took,
        _ => f64::NAN,
    }
}

/// Alternating rounds of `work` detached/attached; returns (median off, median on, median ratio).
fn compare(agent: &Agent, tracers: &[&str], work: Workload, ctx: &Ctx) -> (f64, f64, f64) {
    let (mut off, mut on, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds() {
        let measure_on = |agent: &Agent| {
            if !tracers.is_empty() {
                agent.attach(tracers);
            }
            let r = work(ctx);
            if !tracers.is_empty() {
                agent.detach(tracers);
            }
            r
        };
        let (a, b) = if i % 2 == 0 {
            let a = work(ctx);
            (a, measure_on(agent))
        } else {
            let b = measure_on(agent);
            (work(ctx), b)
        };
        off.push(a);
        on.push(b);
        ratios.push(b / a);
    }
    (median(off), median(on), median(ratios))
}

/// prog id → (run_cnt, run_time_ns) of the BPF programs the agent holds, from its fds'
/// fdinfo (program fds carry the run statistics).
fn agent_prog_stats(pid: u32) -> std::collections::HashMap<u64, (u64, u64)> {
    let mut out = std::collections::HashMap::new();
    for f in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let Ok(info) = std::fs::read_to_string(f.path()) else {
            continue;
        };
        let field = |k: &str| -> Option<u64> {
            info.lines()
                .find_map(|l| l.strip_prefix(k)?.trim().parse().ok())
        };
        if let (Some(id), Some(cnt), Some(ns)) =
            (field("prog_id:"), field("run_cnt:"), field("run_time_ns:"))
        {
            out.insert(id, (cnt, ns));
        }
    }
    out
}

fn prog_name(id: u64) -> String {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string(), "-j"])
        .output()
        .ok()
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v["name"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("prog {id}"))
}

/// Restores kernel.bpf_stats_enabled on drop.
struct BpfStats(String);

impl BpfStats {
    fn enable() -> Option<BpfStats> {
        const F: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let old = std::fs::read_to_string(F).ok()?;
        std::fs::write(F, "1").ok()?;
        Some(BpfStats(old.trim().to_string()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", &self.0);
    }
}

/// Attaches `tracers`, runs `work` once with BPF stats on, and reports the programs' cost.
fn program_cost(
    agent: &Agent,
    label: &str,
    tracers: &[&str],
    work: Workload,
    ctx: &Ctx,
    op_rate: f64,
) {
    agent.attach(tracers);
    let pid = agent.child.id();
    let Some(stats) = BpfStats::enable() else {
        println!("| {label} | (cannot enable bpf stats) | | |");
        agent.detach(tracers);
        return;
    };
    let before = agent_prog_stats(pid);
    let t0 = Instant::now();
    let rate = work(ctx);
    let secs = t0.elapsed().as_secs_f64();
    let after = agent_prog_stats(pid);
    drop(stats);
    let ops = rate * secs;
    let mut total_ns = 0u64;
    let mut per_prog = Vec::new();
    let mut ids: Vec<&u64> = after.keys().collect();
    ids.sort();
    for id in ids {
        let (c1, t1) = after[id];
        let (c0, t0) = before.get(id).copied().unwrap_or((0, 0));
        let (calls, ns) = (c1.saturating_sub(c0), t1.saturating_sub(t0));
        if calls > 0 {
            total_ns += ns;
            per_prog.push(format!(
                "{} {:.0} ns x {:.2}/op",
                prog_name(*id),
                ns as f64 / calls as f64,
                calls as f64 / ops.max(1.0)
            ));
        }
    }
    agent.detach(tracers);
    let added = total_ns as f64 / ops.max(1.0);
    let op_ns = 1e9 / op_rate;
    println!(
        "| {label} | {} | {:.0} ns | {:.3} |",
        per_prog.join("; "),
        added,
        op_ns / (op_ns + added)
    );
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the events benchmark loads BPF: run it as root");
        std::process::exit(1);
    }
    // Event tracers, and the collectors that own a BPF program (runqlat…): their hooks stay off
    // but for the rows that measure them.
    let event_tracers: Vec<String> = bianque::tracer::registry()
        .iter()
        .filter(|s| {
            s.mode != bianque::tracer::Mode::Metric
                || s.requires.contains(&bianque::tracer::Requirement::Btf)
        })
        .map(|s| s.name.to_string())
        .collect();
    let agent = Agent::start(&event_tracers);
    let tmp = std::env::temp_dir().join(format!("bq-ev-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&tmp);
    let ctx = Ctx {
        memcg: MemCg::new(),
        tmp: tmp.clone(),
    };
    let all: Vec<&str> = [
        "dropwatch",
        "softirq",
        "netrecvlat",
        "tcp_retransmit",
        "memreclaim",
        "oom",
        "hungtask",
        "softlockup",
        "netdev_events",
    ]
    .into_iter()
    .filter(|t| event_tracers.iter().any(|e| e == t))
    .collect();
    let cases: Vec<(&str, Vec<&str>, &str, Workload, &str)> = vec![
        ("(none: A/A noise)", vec![], "tcp_rr", tcp_rr, "rt/s"),
        ("(none: A/A noise)", vec![], "udp_drop", udp_drop, "sends/s"),
        (
            "dropwatch",
            vec!["dropwatch"],
            "udp_drop",
            udp_drop,
            "sends/s",
        ),
        ("softirq", vec!["softirq"], "tcp_rr", tcp_rr, "rt/s"),
        ("softirq", vec!["softirq"], "udp_drop", udp_drop, "sends/s"),
        ("netrecvlat", vec!["netrecvlat"], "tcp_rr", tcp_rr, "rt/s"),
        (
            "netrecvlat",
            vec!["netrecvlat"],
            "tcp_stream",
            tcp_stream,
            "B/s",
        ),
        (
            "tcp_retransmit",
            vec!["tcp_retransmit"],
            "tcp_rr",
            tcp_rr,
            "rt/s",
        ),
        (
            "memreclaim",
            vec!["memreclaim"],
            "memcg_fill",
            memcg_fill,
            "MB/s",
        ),
        ("all event tracers", all.clone(), "tcp_rr", tcp_rr, "rt/s"),
        (
            "all event tracers",
            all.clone(),
            "udp_drop",
            udp_drop,
            "sends/s",
        ),
    ];
    // `BENCH_ONLY=softirq,netrecvlat` keeps those rows (and the A/A rows).
    if let Ok(extra) = std::env::var("BENCH_AGENT_CONFIG") {
        println!("agent config added (BENCH_AGENT_CONFIG): {extra:?}\n");
    }
    let only = std::env::var("BENCH_ONLY").ok();
    let cases: Vec<_> = cases
        .into_iter()
        .filter(|(name, tracers, ..)| {
            tracers.is_empty()
                || only
                    .as_deref()
                    .is_none_or(|o| o.split(',').any(|t| t.trim() == *name))
        })
        .collect();
    println!(
        "events overhead: {} alternating rounds of {ROUND:?} per side; ratio = attached/detached (median of per-round ratios; target >= 0.97)\n",
        rounds()
    );
    println!("| tracer | workload | detached | attached | ratio |\n|---|---|---|---|---|");
    let mut detached_rates = Vec::new();
    for (name, tracers, wname, work, unit) in &cases {
        let (off, on, ratio) = compare(&agent, tracers, *work, &ctx);
        println!("| {name} | {wname} | {off:.0} {unit} | {on:.0} {unit} | {ratio:.3} |");
        detached_rates.push(off);
    }
    println!("\nBPF program cost (kernel.bpf_stats_enabled during one round of each workload):\n");
    println!("| tracer / workload | programs: ns per call x calls per op | added per op | expected ratio |\n|---|---|---|---|");
    for ((name, tracers, wname, work, _), rate) in cases.iter().zip(&detached_rates) {
        if !tracers.is_empty() && rate.is_finite() {
            program_cost(
                &agent,
                &format!("{name} / {wname}"),
                tracers,
                *work,
                &ctx,
                *rate,
            );
        }
    }
    drop(ctx);
    let _ = std::fs::remove_dir_all(&tmp);
}
