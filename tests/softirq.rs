//! softirq on the real kernel: a TCP flood over loopback makes NET_RX softirq runs long enough
//! to cross a low threshold (20 µs); they are recorded with the type name, the task they ran on
//! (the flooding sender) and a kernel stack. Long kernel-log lines written to the serial console
//! keep interrupts off for tens of ms in the writer: the late tick is recorded as a tick gap.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const THRESHOLD_US: u64 = 20;

/// The tick-gap tests run one at a time: one holds interrupts off on purpose, the other
/// asserts that nothing did.
static TICK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Floods loopback TCP for up to `max`, or until `stop` is set.
fn flood(stop: Arc<AtomicBool>, max: Duration) {
    let srv = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = srv.local_addr().unwrap();
    let rx = std::thread::Builder::new()
        .name("bq-sirq-rx".into())
        .spawn(move || {
            let (mut c, _) = srv.accept().unwrap();
            let mut buf = vec![0u8; 1 << 20];
            while c.read(&mut buf).is_ok_and(|n| n > 0) {}
        })
        .unwrap();
    let tx = std::thread::Builder::new()
        .name("bq-sirq-tx".into())
        .spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            let buf = vec![b'x'; 1 << 16];
            let start = Instant::now();
            while start.elapsed() < max && !stop.load(Ordering::Relaxed) {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        })
        .unwrap();
    tx.join().unwrap();
    rx.join().unwrap();
}

#[test]
fn long_net_rx_softirqs_under_a_loopback_flood_are_recorded() {
    let agent = Agent::start(
        &format!(
            "[events.softirq]\nthreshold_us = {THRESHOLD_US}\nmax_events_per_second = 1000\n\
             [events.dropwatch]\nenabled = false\n"
        ),
        &[],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = {
        let stop = stop.clone();
        std::thread::spawn(move || flood(stop, Duration::from_secs(20)))
    };
    let ours = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .events("tracer=softirq&limit=10000")
            .into_iter()
            .filter(|e| {
                let d = &e["tracer_data"];
                d["type"] == "NET_RX"
                    && d["event"] == "long_softirq"
                    && d["comm"].as_str().is_some_and(|c| c.starts_with("bq-sirq"))
            })
            .collect()
    };
    let found = wait_until(Duration::from_secs(20), || !ours(&agent).is_empty());
    stop.store(true, Ordering::Relaxed);
    flooder.join().unwrap();
    assert!(
        found,
        "no NET_RX record from the flood; metrics:\n{}\nlog:\n{}",
        agent.metrics(),
        agent.log()
    );
    let events = ours(&agent);
    println!(
        "{} records from the flood; first: {}",
        events.len(),
        events[0]
    );
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u64;
    for e in &events {
        let d = &e["tracer_data"];
        assert_eq!(d["threshold_ns"], THRESHOLD_US * 1000);
        assert!(
            d["duration_ns"].as_u64().unwrap() >= THRESHOLD_US * 1000,
            "{d}"
        );
        assert!(d["cpu"].as_u64().unwrap() < cpus, "{d}");
        assert_eq!(d["pid"], std::process::id());
        let stack: Vec<&str> = d["stack"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        assert!(
            stack.iter().any(|f| f.starts_with("handle_softirqs+0x")),
            "{stack:?}"
        );
        assert!(!stack[0].starts_with("bpf_"), "{stack:?}");
    }
    assert!(
        agent
            .metric("bianque_softirq_events_total{type=\"NET_RX\"}")
            .unwrap()
            >= events.len() as f64
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
