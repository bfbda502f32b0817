//! softlockup's kernel log reader on the real kernel. A soft lockup cannot be provoked here
//! (no modules, and nothing in user space spins a CPU in the kernel for 20 s), so the reader is
//! proved on a real kernel message the test provokes instead: the OOM killer's "Killed process"
//! line, recorded through `extra_patterns`. Lines that a user process writes to /dev/kmsg, a
//! forged soft-lockup report among them, are read and ignored. The report parser itself is
//! unit-tested on real-format lines (src/events/softlockup/kmsg.rs).

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const PATTERN: &str = "Memory cgroup out of memory: Killed process";

#[test]
fn kernel_messages_are_read_and_user_written_lines_are_ignored() {
    let agent = Agent::start(
        &format!("[events.softlockup]\nextra_patterns = [\"{PATTERN}\"]\n[events.dropwatch]\nenabled = false\n"),
        &[],
    );
    let me = std::process::id();
    let user_before = agent
        .metric("bianque_softlockup_kmsg_records_total{source=\"user\"}")
        .unwrap();
    // A forged soft-lockup report and a forged OOM line, written by this (user) process; the
    // first one even asks for the kernel facility and an emergency level (`<0>`).
    {
        let mut kmsg = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/kmsg")
            .expect("open /dev/kmsg");
        for line in [
            format!("<0>watchdog: BUG: soft lockup - CPU#0 stuck for 99s! [bq-forged:{me}]\n"),
            format!("{PATTERN} {me} (bq-forged)\n"),
        ] {
            kmsg.write_all(line.as_bytes()).expect("write /dev/kmsg");
        }
    }
    assert!(
        wait_until(Duration::from_secs(5), || agent
            .metric("bianque_softlockup_kmsg_records_total{source=\"user\"}")
            .unwrap()
            >= user_before + 2.0),
        "the reader did not see the user lines; log:\n{}",
        agent.log()
    );

    // A real kernel message: the OOM killer's report for a tail in a 64 MiB memory cgroup.
    let kernel_before = agent
        .metric("bianque_softlockup_kmsg_records_total{source=\"kernel\"}")
        .unwrap();
    let cg = MemCgroup::new("kmsg", 64 << 20);
    let mut child = cg.spawn("tail /dev/zero");
    let pid = child.id();
    wait_child(&mut child, Duration::from_secs(60)).expect("tail killed");
    let needle = format!("Killed process {pid} (tail)");
    let find = || {
        agent
            .events("tracer=softlockup&limit=1000")
            .into_iter()
            .find(|e| {
                e["tracer_data"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&needle))
            })
    };
    assert!(
        wait_until(Duration::from_secs(5), || find().is_some()),
        "no record of the kernel's OOM line; log:\n{}",
        agent.log()
    );
    let e = find().unwrap();
    println!("{e}");
    let d = &e["tracer_data"];
    assert_eq!(d["kind"], "kernel_log");
    assert_eq!(d["pattern"], PATTERN);
    assert!(d["message"].as_str().unwrap().starts_with(PATTERN), "{d}");
    assert!(d["seq"].as_u64().is_some());
    // The kernel's OOM report is many lines (header, stack, memory stats).
    assert!(
        agent
            .metric("bianque_softlockup_kmsg_records_total{source=\"kernel\"}")
            .unwrap()
            >= kernel_before + 10.0
    );

    // The forged lines left no record.
    let forged: Vec<_> = agent
        .events("tracer=softlockup&limit=1000")
        .into_iter()
        .filter(|e| e.to_string().contains("bq-forged"))
        .collect();
    assert!(forged.is_empty(), "{forged:?}");
    assert_eq!(agent.metric("bianque_softlockup_events_total"), Some(0.0));
    assert_eq!(agent.metric("bianque_softlockup_total"), Some(0.0));
}
