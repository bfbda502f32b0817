//! What the whole agent on its defaults costs on the kernel's hot paths, measured side by
//! side in one run: each workload's throughput with no agent, with `bianque run` on built-in
//! defaults (every default tracer attached), and with a bpftrace script on the same hooks doing
//! the least a tracer does (counting by a key), in rounds that rotate the order of the three.
//! Printed: the medians of the per-round ratios agent/none (target ≥ 0.97), bpftrace/none, and
//! agent/bpftrace (target ≥ 0.99).
//! Run as root: `cargo bench --bench hotpaths` (needs bpftrace and losetup; `make bench`
//! installs them). `BENCH_ROUNDS` (default 5) sets the rounds, `BENCH_ONLY=pipe_pingpong,...`
//! the workloads.
//!
//! Workloads (1 s each): `pipe_pingpong` (two threads on one CPU, two context switches per
//! round trip: the scheduler path), `fork_exec_exit` (`/bin/true`), `direct_reads` (4 KiB
//! O_DIRECT reads from a loop device: the block path), `page_faults` (a 16 MiB anonymous
//! mapping touched page by page), `udp_drop`, `tcp_rr`, `tcp_stream` (the network paths).
//!
//! The throughput ratios carry the noise of a shared machine; a second table is load
//! independent: with `kernel.bpf_stats_enabled` on for one more round of each workload
//! (restored after), the run count and run time of each of the agent's BPF programs give ns per
//! call and ns added per operation.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{agent_command, free_port, median, workloads};

const ROUND: Duration = Duration::from_millis(1000);

/// Every hook the agent attaches on its defaults, each counted by a key: what a tracer does at
/// the least. (iotracer's capture and the profiler attach only during a capture.)
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_switch, tracepoint:sched:sched_wakeup, tracepoint:sched:sched_wakeup_new { @sched[cpu] = count(); }
tracepoint:sched:sched_process_hang { @hang[cpu] = count(); }
tracepoint:signal:signal_generate { @sig[args->sig] = count(); }
tracepoint:timer:hrtimer_expire_entry, tracepoint:timer:hrtimer_expire_exit { @hrtimer[cpu] = count(); }
tracepoint:tcp:tcp_retransmit_skb, tracepoint:tcp:tcp_retransmit_synack { @retrans[cpu] = count(); }
tracepoint:vmscan:mm_vmscan_direct_reclaim_begin, tracepoint:vmscan:mm_vmscan_direct_reclaim_end,
tracepoint:vmscan:mm_vmscan_memcg_reclaim_begin, tracepoint:vmscan:mm_vmscan_memcg_reclaim_end,
tracepoint:compaction:mm_compaction_begin, tracepoint:compaction:mm_compaction_end { @reclaim[cpu] = count(); }
tracepoint:oom:mark_victim { @oom[cpu] = count(); }
tracepoint:skb:kfree_skb { @drops[args->reason] = count(); }
tracepoint:net:netif_receive_skb, tracepoint:tcp:tcp_probe, tracepoint:skb:skb_copy_datagram_iovec { @net[cpu] = count(); }
tracepoint:cgroup:cgroup_mkdir, tracepoint:cgroup:cgroup_rmdir { @cgroup[cpu] = count(); }
tracepoint:block:block_rq_insert, tracepoint:block:block_rq_issue, tracepoint:block:block_rq_complete { @block[args->dev] = count(); }
"#;

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// A child process killed (and reaped) on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `bianque run` on built-in defaults, once every default tracer has attached.
fn start_agent(dir: &Path) -> Running {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("agent dir");
    let addr = format!("127.0.0.1:{}", free_port());
    let none: [&str; 0] = [];
    let child = agent_command(&addr, &dir.join("data"), None, &none)
        .spawn()
        .expect("spawn bianque");
    let agent = Running(child);
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "agent not attached in 60 s"
        );
        let (code, body) = common::http(&addr, "GET", "/tracers", &[]);
        if code == 200 {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let pending = v["tracers"].as_array().into_iter().flatten().any(|t| {
                let (s, r) = (t["status"].as_str(), t["reason"].as_str());
                s == Some("active") && r == Some("starting")
                    || s == Some("inactive") && r == Some("not started")
            });
            if !pending {
                return agent;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// bpftrace running `script`, once its probes are attached.
fn start_bpftrace(script: &Path) -> Running {
    let mut child = Command::new("bpftrace")
        .arg(script)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("bpftrace (Debian package bpftrace)");
    let out = child.stdout.take().expect("bpftrace stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading until bpftrace exits, so that it never blocks on a full pipe.
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("Attaching") {
                let _ = tx.send(());
            }
        }
    });
    let running = Running(child);
    rx.recv_timeout(Duration::from_secs(120))
        .expect("bpftrace did not attach in 120 s");
    // "Attaching N probes..." comes before the last attach; give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    running
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    None,
    Agent,
    Bpftrace,
}

type Workload = Box<dyn Fn() -> f64>;

/// prog id → (run_cnt, run_time_ns) of the BPF programs `pid` holds (from its fds' fdinfo).
fn prog_stats(pid: u32) -> HashMap<u64, (u64, u64)> {
    let mut out = HashMap::new();
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

/// Removes the benchmark's directory (and the loop device first) on drop.
struct Scratch {
    dir: PathBuf,
    loop_dev: Option<workloads::LoopDevice>,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop(self.loop_dev.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the hot-path benchmark loads BPF: run it as root");
        std::process::exit(1);
    }
    let dir = std::env::temp_dir().join(format!("bq-hotpaths-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let mut scratch = Scratch {
        dir: dir.clone(),
        loop_dev: None,
    };
    scratch.loop_dev = Some(workloads::LoopDevice::new(&dir));
    let dev = scratch
        .loop_dev
        .as_ref()
        .map(|l| l.dev.clone())
        .unwrap_or_default();
    let script = dir.join("hooks.bt");
    std::fs::write(&script, BPFTRACE_SCRIPT).expect("bpftrace script");

    let all: Vec<(&str, &str, Workload)> = vec![
        (
            "pipe_pingpong",
            "rt/s",
            Box::new(|| workloads::pipe_pingpong(ROUND)),
        ),
        (
            "fork_exec_exit",
            "procs/s",
            Box::new(|| workloads::fork_exec_exit(ROUND)),
        ),
        (
            "direct_reads",
            "reads/s",
            Box::new(move || workloads::direct_reads(&dev, ROUND)),
        ),
        (
            "page_faults",
            "faults/s",
            Box::new(|| workloads::page_faults(ROUND)),
        ),
        (
            "udp_drop",
            "sends/s",
            Box::new(|| workloads::udp_drop(ROUND)),
        ),
        ("tcp_rr", "rt/s", Box::new(|| workloads::tcp_rr(ROUND))),
        (
            "tcp_stream",
            "B/s",
            Box::new(|| workloads::tcp_stream(ROUND)),
        ),
    ];
    let only = std::env::var("BENCH_ONLY").ok();
    let cases: Vec<_> = all
        .into_iter()
        .filter(|(name, ..)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|t| t.trim() == *name))
        })
        .collect();

    println!(
        "hot paths: {} rounds; each round runs every workload ({ROUND:?}) with no agent, the whole agent on defaults, and bpftrace counting by key on the same hooks, in a rotated order\n",
        rounds()
    );
    // results[case][side] = per-round rates
    let mut rates: Vec<HashMap<u8, Vec<f64>>> = vec![HashMap::new(); cases.len()];
    let order = [Side::None, Side::Agent, Side::Bpftrace];
    let mut agent_hwm_kb = 0u64;
    for round in 0..rounds() {
        for k in 0..order.len() {
            let side = order[(round + k) % order.len()];
            let running = match side {
                Side::None => None,
                Side::Agent => Some(start_agent(&dir.join("agent"))),
                Side::Bpftrace => Some(start_bpftrace(&script)),
            };
            for (i, (_, _, work)) in cases.iter().enumerate() {
                let r = work();
                rates[i].entry(side as u8).or_default().push(r);
            }
            if side == Side::Agent {
                if let Some(r) = &running {
                    agent_hwm_kb = agent_hwm_kb.max(vm_hwm_kb(r.0.id()));
                }
            }
            drop(running);
        }
    }
    println!("| workload | no agent | bianque (defaults) | bpftrace count | bianque/none | bpftrace/none | bianque/bpftrace |\n|---|---|---|---|---|---|---|");
    for (i, (name, unit, _)) in cases.iter().enumerate() {
        let get = |s: Side| rates[i].get(&(s as u8)).cloned().unwrap_or_default();
        let (none, agent, bt) = (get(Side::None), get(Side::Agent), get(Side::Bpftrace));
        let ratio = |a: &[f64], b: &[f64]| median(a.iter().zip(b).map(|(x, y)| x / y).collect());
        println!(
            "| {name} | {:.0} {unit} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} |",
            median(none.clone()),
            median(agent.clone()),
            median(bt.clone()),
            ratio(&agent, &none),
            ratio(&bt, &none),
            ratio(&agent, &bt),
        );
    }
    println!(
        "\nagent VmHWM over its rounds: {:.1} MB",
        agent_hwm_kb as f64 / 1024.0
    );

    println!("\nBPF programs of the agent (kernel.bpf_stats_enabled during one more round of each workload):\n");
    println!("| workload | programs: ns per call x calls per op | added per op | op time (no agent) |\n|---|---|---|---|");
    let agent = start_agent(&dir.join("agent"));
    let pid = agent.0.id();
    for (i, (name, _, work)) in cases.iter().enumerate() {
        let Some(stats) = BpfStats::enable() else {
            println!("| {name} | (cannot enable bpf stats) | | |");
            continue;
        };
        let before = prog_stats(pid);
        let t0 = Instant::now();
        let rate = work();
        let secs = t0.elapsed().as_secs_f64();
        let after = prog_stats(pid);
        drop(stats);
        let ops = (rate * secs).max(1.0);
        let mut ids: Vec<&u64> = after.keys().collect();
        ids.sort();
        let (mut total_ns, mut per_prog) = (0u64, Vec::new());
        for id in ids {
            let (c1, t1) = after[id];
            let (c0, t0) = before.get(id).copied().unwrap_or((0, 0));
            let (calls, ns) = (c1.saturating_sub(c0), t1.saturating_sub(t0));
            // Programs that fire less than once per 100 operations are left out of the list
            // (their time still counts).
            total_ns += ns;
            if calls as f64 / ops >= 0.01 {
                per_prog.push(format!(
                    "{} {:.0} ns x {:.2}",
                    prog_name(*id),
                    ns as f64 / calls as f64,
                    calls as f64 / ops
                ));
            }
        }
        let none = median(
            rates[i]
                .get(&(Side::None as u8))
                .cloned()
                .unwrap_or_default(),
        );
        // tcp_stream's operation is a byte: fractions of a ns.
        println!(
            "| {name} | {} | {:.2} ns | {:.2} ns |",
            per_prog.join("; "),
            total_ns as f64 / ops,
            1e9 / none
        );
    }
    drop(agent);
    drop(scratch);
}

fn vm_hwm_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
