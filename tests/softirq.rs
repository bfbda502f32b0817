//! softirq on the real kernel. A NET_RX handler run held long for real: lo in a namespace steers
//! its packets (RPS) to one CPU, a 30,000-rule firewall there makes each one slow, a sender on
//! another CPU floods it, and the NET_RX budgets are raised so one run keeps going while packets
//! wait: the run is recorded, at the default threshold, while it runs, with the firewall in its
//! stack. Long kernel-log lines written to the serial console keep interrupts off for tens of
//! ms in the writer: the late tick is recorded as a tick gap.

mod common;

use std::io::Write;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// The tests run one at a time: one holds interrupts off on purpose, one keeps a CPU in a
/// softirq, and one asserts that nothing did.
static TICK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sets sysctls for the test and puts the old values back on drop.
struct Sysctls(Vec<(String, String)>);

impl Sysctls {
    fn set(values: &[(&str, &str)]) -> Sysctls {
        let mut old = Sysctls(Vec::new());
        for (k, v) in values {
            let path = format!("/proc/sys/{}", k.replace('.', "/"));
            let was = std::fs::read_to_string(&path).unwrap();
            old.0.push((path.clone(), was.trim().to_string()));
            std::fs::write(&path, v).unwrap();
        }
        old
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        for (path, v) in &self.0 {
            let _ = std::fs::write(path, v);
        }
    }
}

/// Pins a thread (0: the calling one) to one CPU.
fn pin_to_cpu(tid: i32, cpu: usize) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it; sched_setaffinity
    // only reads it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pins every thread of a process to one CPU (threads they start later inherit it).
fn pin_process(pid: u32, cpu: usize) {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if let Ok(tid) = task.file_name().to_string_lossy().parse() {
            // A thread may have exited meanwhile.
            let _ = pin_to_cpu(tid, cpu);
        }
    }
}

/// Sets the flag when dropped: the flood stops even if the test fails.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Rules every packet walks on the receiving CPU: enough that the receiver stays slower than
/// the sender, so its backlog never drains and one NET_RX run goes on.
const RULES: usize = 30_000;

#[test]
fn a_net_rx_run_held_long_by_a_slow_firewall_is_recorded_while_it_runs() {
    let _one = TICK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert!(cpus >= 2, "needs a CPU to send from and one to receive on");
    let rx_cpu = cpus - 1;
    let agent = Agent::start("[events.dropwatch]\nenabled = false\n", &[]);
    // The flooded CPU's backlog is full for the whole test, and loopback packets queue on the
    // sending CPU's backlog: the agent's and this thread's HTTP stay on CPU 0, or they starve.
    pin_process(agent.pid(), 0);
    pin_to_cpu(0, 0).unwrap();
    let ns = NetnsPair::new("sirq");
    ns.exec(&format!(
        "sh -c 'echo {:x} > /sys/class/net/lo/queues/rx-0/rps_cpus'",
        1u64 << rx_cpu
    ));
    let rules = TempDir::new("sirq-nft");
    let mut text =
        String::from("table inet bq_slow {\nchain input {\ntype filter hook input priority 0;\n");
    for i in 0..RULES {
        text.push_str(&format!("udp dport {} counter\n", 10_000 + i));
    }
    text.push_str("}\n}\n");
    let file = rules.path().join("rules.nft");
    std::fs::write(&file, text).unwrap();
    ns.exec(&format!("nft -f {}", file.display()));
    // One net_rx_action may run 50 ms and 100,000 packets instead of 8 ms and 300.
    let _sysctls = Sysctls::set(&[
        ("net.core.netdev_budget", "100000"),
        ("net.core.netdev_budget_usecs", "50000"),
        ("net.core.netdev_max_backlog", "10000"),
    ]);
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let sender = ns.spawn_in("bq-sirq-tx", {
        let stop = stop.0.clone();
        move || {
            pin_to_cpu(0, 0).unwrap();
            let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..1000 {
                    let _ = tx.send_to(&[0u8], "127.0.0.1:9");
                }
            }
        }
    });
    let ours = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .events("tracer=softirq&limit=10000")
            .into_iter()
            .filter(|e| {
                // Other long runs may come too (RCU freeing an earlier test's rules…).
                let d = &e["tracer_data"];
                d["event"] == "long_softirq"
                    && d["cpu"] == rx_cpu as u64
                    && d["handler"] == "net_rx_action"
            })
            .collect()
    };
    // Several runs, so that where their time goes shows.
    let found = wait_until(Duration::from_secs(20), || ours(&agent).len() >= 5);
    stop.0.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    assert!(
        found,
        "fewer than 5 long NET_RX runs recorded; all softirq records: {:#?}\nmetrics:\n{}\nlog:\n{}",
        agent.events("tracer=softirq&limit=100"),
        agent.metrics(),
        agent.log()
    );
    let events = ours(&agent);
    println!("{} long runs; first: {}", events.len(), events[0]);
    let others: Vec<(String, String)> = agent
        .events("tracer=softirq&limit=10000")
        .iter()
        .map(|e| &e["tracer_data"])
        .filter(|d| d["event"] == "long_softirq" && d["handler"] != "net_rx_action")
        .map(|d| (d["type"].to_string(), d["handler"].to_string()))
        .collect();
    println!("other long runs (type, handler): {others:?}");
    let mut in_firewall = 0;
    for e in &events {
        let d = &e["tracer_data"];
        assert_eq!(d["type"], "NET_RX", "{d}");
        assert_eq!(d["vec"], 3, "{d}");
        assert_eq!(d["threshold_ns"], 10_000_000u64, "{d}");
        assert!(d["duration_ns"].as_u64().unwrap() >= 10_000_000, "{d}");
        let stack: Vec<&str> = d["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        // The tick's frames, then the interrupted handler's, down to the softirq loop.
        assert!(!stack[0].starts_with("bpf_"), "{stack:?}");
        assert!(
            stack.iter().any(|f| f.starts_with("hrtimer_interrupt+0x")),
            "{stack:?}"
        );
        assert!(
            stack.iter().any(|f| f.starts_with("handle_softirqs+0x")),
            "{stack:?}"
        );
        if stack.iter().any(|f| f.starts_with("nft_do_chain+0x")) {
            in_firewall += 1;
        }
    }
    // What the run was busy with: the firewall, in nearly every sample.
    assert!(in_firewall * 2 > events.len(), "{events:#?}");
    assert!(
        agent
            .metric("bianque_softirq_events_total{type=\"NET_RX\"}")
            .unwrap()
            >= events.len() as f64
    );
    // Softirqs the ticks raised on that CPU waited behind the runs.
    let metrics = agent.metrics();
    let delayed: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("bianque_softirq_delayed_ticks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(delayed > 0.0, "no delayed softirq counted:\n{metrics}");
    // The latency histograms are opt-in: at the defaults no hook runs per softirq.
    assert!(
        !agent.metrics().contains("bianque_softirq_latency_seconds"),
        "latency histograms exported by default"
    );
    let tracers = agent.get("/tracers").1;
    assert!(
        !tracers.contains("not watched"),
        "softirq runs in part: {tracers}"
    );
}

/// The serial console (console=ttyS0 here) prints each kernel-log record in the writer's context
/// with interrupts off: a 900-character KERN_ERR line written to /dev/kmsg holds them off for
/// tens of ms, so the next scheduler tick on that CPU comes late.
#[test]
fn a_tick_held_off_by_a_console_write_is_recorded_as_a_tick_gap() {
    let _one = TICK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let consoles = std::fs::read_to_string("/proc/consoles").unwrap_or_default();
    assert!(
        consoles.contains("ttyS"),
        "this test needs a serial console to hold interrupts off; /proc/consoles: {consoles}"
    );
    let agent = Agent::start("[events.dropwatch]\nenabled = false\n", &[]);
    let gaps = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .events("tracer=softirq&limit=10000")
            .into_iter()
            .filter(|e| {
                let d = &e["tracer_data"];
                d["event"] == "tick_gap" && d["comm"] == "bq-irqoff"
            })
            .collect()
    };
    let line = format!("<3>bianque softirq test: tick gap {}\n", "x".repeat(900));
    let found = wait_until(Duration::from_secs(20), || {
        std::thread::Builder::new()
            .name("bq-irqoff".into())
            .spawn({
                let line = line.clone();
                move || {
                    let mut kmsg = std::fs::OpenOptions::new()
                        .write(true)
                        .open("/dev/kmsg")
                        .unwrap();
                    for _ in 0..3 {
                        kmsg.write_all(line.as_bytes()).unwrap();
                    }
                }
            })
            .unwrap()
            .join()
            .unwrap();
        !gaps(&agent).is_empty()
    });
    assert!(
        found,
        "no tick gap from the console writer; metrics:\n{}\nlog:\n{}",
        agent.metrics(),
        agent.log()
    );
    let events = gaps(&agent);
    let d = &events[0]["tracer_data"];
    println!("{} tick gaps; first: {d}", events.len());
    assert_eq!(d["threshold_ns"], 10_000_000u64, "{d}");
    assert!(d["duration_ns"].as_u64().unwrap() >= 10_000_000, "{d}");
    assert!(d.get("type").is_none(), "{d}");
    assert!(d["steal_ns"].is_u64(), "{d}");
    assert_eq!(d["pid"], std::process::id());
    let stack: Vec<&str> = d["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        stack.iter().any(|f| f.starts_with("vprintk_emit+0x")),
        "the stack should show the log write that held interrupts off: {stack:?}"
    );
    assert!(!stack[0].starts_with("__traceiter_"), "{stack:?}");
    assert!(agent.metric("bianque_softirq_tick_gaps_total").unwrap() >= 1.0);
}

/// An idle CPU stops its tick on purpose: a worker that sleeps 30-200 ms between short bursts
/// leaves tick-less idle periods longer than the 10 ms threshold on both CPUs, and none of them
/// may count as a tick gap (the tick's `idle_entrytime` says the CPU was idle in between).
#[test]
fn idle_periods_are_not_tick_gaps() {
    let _one = TICK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
    let agent = Agent::start("[events.dropwatch]\nenabled = false\n", &[]);
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .metric("bianque_softirq_tick_gaps_total")
            .is_some()),
        "{}",
        agent.log()
    );
    let before = agent.metric("bianque_softirq_tick_gaps_total").unwrap();
    let end = Instant::now() + Duration::from_secs(4);
    let mut sleep_ms = 30;
    while Instant::now() < end {
        let busy = Instant::now();
        while busy.elapsed() < Duration::from_millis(1) {}
        std::thread::sleep(Duration::from_millis(sleep_ms));
        sleep_ms = if sleep_ms >= 200 { 30 } else { sleep_ms + 17 };
    }
    let after = agent.metric("bianque_softirq_tick_gaps_total").unwrap();
    let gaps: Vec<serde_json::Value> = agent
        .events("tracer=softirq&limit=100")
        .into_iter()
        .filter(|e| e["tracer_data"]["event"] == "tick_gap")
        .collect();
    assert_eq!(after - before, 0.0, "tick gaps while idle: {gaps:#?}");
}
