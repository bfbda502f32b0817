//! The `signal` tracer on the real kernel: a SIGKILL sent by this test is recorded with sender
//! and target.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn a_sigkill_names_sender_and_target() {
    let agent = Agent::start("", &[]);
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let target = child.id();
    std::thread::Builder::new()
        .name("bq-killer".into())
        .spawn(move || {
            // SAFETY: kill(2) on the child we spawned.
            unsafe { libc::kill(target as i32, libc::SIGKILL) };
        })
        .unwrap()
        .join()
        .unwrap();
    let _ = child.wait();
    let found = |a: &Agent| {
        a.events("tracer=signal&limit=1000")
            .into_iter()
            .find(|e| e["tracer_data"]["target_pid"] == target)
    };
    assert!(
        wait_until(Duration::from_secs(5), || found(&agent).is_some()),
        "log:\n{}",
        agent.log()
    );
    let e = found(&agent).unwrap();
    let d = &e["tracer_data"];
    assert_eq!(d["signal"], "SIGKILL", "{e}");
    assert_eq!(d["target_comm"], "sleep");
    assert_eq!(d["sender_comm"], "bq-killer");
    assert_eq!(d["sender_pid"], std::process::id());
    assert_eq!(d["result"], "delivered");
    assert!(
        agent
            .metric("bianque_signal_events_total{signal=\"SIGKILL\"}")
            .unwrap()
            >= 1.0
    );
    // SIGTERM is not watched by default.
    assert!(!agent.metrics().contains("signal=\"SIGTERM\""));
}
