//! hungtask on the real kernel: writers on a frozen loop-mounted ext4 sleep in D state; with
//! `kernel.hung_task_timeout_secs` at 1 the kernel reports them, and the record names the
//! writer with its kernel stack and the other blocked writer's stack.
//!
//! Everything is undone on drop, even when an assert fails: thaw, writers reaped, sysctls
//! restored, unmount, loop device detached.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const TIMEOUT: &str = "/proc/sys/kernel/hung_task_timeout_secs";
const WARNINGS: &str = "/proc/sys/kernel/hung_task_warnings";

/// Restores sysctl files to their values at creation.
struct Sysctls(Vec<(&'static str, String)>);

impl Sysctls {
    fn save(files: &[&'static str]) -> Sysctls {
        Sysctls(
            files
                .iter()
                .map(|f| (*f, std::fs::read_to_string(f).expect("read sysctl")))
                .collect(),
        )
    }
}

impl Drop for Sysctls {
    fn drop(&mut self) {
        for (f, v) in &self.0 {
            let _ = std::fs::write(f, v.trim());
        }
    }
}

/// Children killed and reaped on drop (after the filesystem is thawed, so they can die).
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = wait_child(c, Duration::from_secs(10));
        }
    }
}

fn writer(mnt: &std::path::Path, name: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("echo x > {}/{name}", mnt.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn writer")
}

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    bianque::procfs::pid_stat::comm_state(&stat).map(|(_, s)| s)
}

#[test]
fn a_writer_on_a_frozen_filesystem_is_reported_with_its_stack() {
    let fs = LoopFs::new("hung", 64);
    let mnt = &fs.mnt;

    let agent = Agent::start("[events.dropwatch]\nenabled = false\n", &[]);
    let _sysctls = Sysctls::save(&[TIMEOUT, WARNINGS]);
    let mut children = Children(Vec::new());
    sh(&format!("fsfreeze -f {}", mnt.display()));
    let _thaw = Cleanup(format!("fsfreeze -u {}", mnt.display()));
    children.0.push(writer(mnt, "a"));
    children.0.push(writer(mnt, "b"));
    let (a, b) = (children.0[0].id(), children.0[1].id());
    assert!(
        wait_until(Duration::from_secs(5), || state_of(a) == Some('D')
            && state_of(b) == Some('D')),
        "writers not in D state: {:?} {:?}",
        state_of(a),
        state_of(b)
    );
    std::fs::write(TIMEOUT, "1").unwrap();

    let find = |pid: u32| {
        agent
            .events("tracer=hungtask&limit=1000")
            .into_iter()
            .find(|e| e["tracer_data"]["pid"] == pid)
    };
    assert!(
        wait_until(Duration::from_secs(15), || find(a).is_some()),
        "no hungtask record for {a}; log:\n{}",
        agent.log()
    );
    let e = find(a).unwrap();
    println!("{}", serde_json::to_string_pretty(&e).unwrap());
    let d = &e["tracer_data"];
    assert_eq!(d["comm"], "sh");
    assert_eq!(d["tid"], a);
    assert_eq!(d["hung_task_timeout_secs"], 1);
    assert!(d["blocked_ns"].as_u64().unwrap() >= 1_000_000_000, "{d}");
    let stack: Vec<&str> = d["stack"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    // The writer waits for the frozen superblock: sb_start_write → percpu_down_read.
    assert!(
        stack.iter().any(|f| f.starts_with("percpu_rwsem_wait+0x")),
        "{stack:?}"
    );
    assert!(
        stack.iter().any(|f| f.starts_with("mnt_want_write+0x")),
        "{stack:?}"
    );
    assert!(d["memory_cgroup_path"].as_str().unwrap().starts_with('/'));
    // The other writer is blocked too, and its stack is there.
    let others = d["blocked_tasks"].as_array().unwrap();
    let other = others
        .iter()
        .find(|t| t["pid"] == b)
        .unwrap_or_else(|| panic!("writer {b} not among blocked tasks: {others:?}"));
    assert_eq!(other["comm"], "sh");
    assert!(
        other["stack"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f.as_str().unwrap().starts_with("percpu_rwsem_wait+0x")),
        "{other}"
    );
    assert!(others.iter().all(|t| t["tid"] != a), "itself excluded");
    assert!(agent.metric("bianque_hungtask_events_total").unwrap() >= 1.0);
    assert!(agent.metric("bianque_hungtask_total").unwrap() >= 1.0);

    // Reported once although it stays hung (repeat_interval_secs): wait two detector passes.
    std::thread::sleep(Duration::from_millis(2500));
    let records_a = agent
        .events("tracer=hungtask&limit=1000")
        .into_iter()
        .filter(|e| e["tracer_data"]["pid"] == a)
        .count();
    assert_eq!(records_a, 1);
    assert!(agent.metric("bianque_hungtask_suppressed_total").unwrap() >= 1.0);
}
