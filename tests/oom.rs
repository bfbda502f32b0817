//! oom on the real kernel: a process allocating past a 64 MiB memory cgroup limit is killed,
//! and the record names it as the victim, with its cgroup path and the limit.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::*;

const LIMIT: u64 = 64 << 20;

#[test]
fn a_memory_cgroup_oom_kill_is_recorded_with_victim_cgroup_and_limit() {
    let agent = Agent::start("[events.dropwatch]\nenabled = false\n", &[]);
    let cg = MemCgroup::new("oom", LIMIT);
    // GNU tail on /dev/zero looks for a newline that never comes, holding all it read.
    let mut child = cg.spawn("tail /dev/zero");
    let pid = child.id();
    let status = wait_child(&mut child, Duration::from_secs(60)).expect("tail was not killed");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");

    let find = || {
        agent
            .events("tracer=oom&limit=1000")
            .into_iter()
            .find(|e| e["tracer_data"]["victim"]["pid"] == pid)
    };
    assert!(
        wait_until(Duration::from_secs(5), || find().is_some()),
        "no oom record for pid {pid}; log:\n{}",
        agent.log()
    );
    let e = find().unwrap();
    let d = &e["tracer_data"];
    println!("{}", serde_json::to_string_pretty(&e).unwrap());
    assert_eq!(e["tracer_name"], "oom");
    assert_eq!(d["constraint"], "memcg", "{d}");
    let v = &d["victim"];
    assert_eq!(v["comm"], "tail");
    assert_eq!(v["tid"], pid);
    assert_eq!(v["memory_cgroup_path"], cg.path.as_str());
    let m = &v["memory_cgroup"];
    assert_eq!(m["path"], cg.path.as_str());
    assert_eq!(m["limit_bytes"], LIMIT, "{m}");
    let usage = m["usage_bytes"].as_u64().unwrap();
    assert!(
        usage > LIMIT - (4 << 20) && usage <= LIMIT,
        "usage {usage} is at the limit"
    );
    assert!(m["failcnt"].as_u64().unwrap() > 0, "{m}");
    // The v1 files on this machine (memory.oom_control); v2 would be memory.events.
    let oom_kills = m["events"]["oom_kill"].as_u64().unwrap();
    assert!(oom_kills >= 1, "{m}");
    let from_file: u64 = cg
        .read("memory.oom_control")
        .lines()
        .chain(cg.read("memory.events").lines())
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap();
    assert_eq!(oom_kills, from_file);
    assert!(!m["stat"].as_object().unwrap().is_empty());
    assert!(v["total_vm_bytes"].as_u64().unwrap() > 0);
    // The allocation that failed was tail's own.
    assert_eq!(d["trigger"]["pid"], pid);
    assert_eq!(d["trigger"]["comm"], "tail");
    assert_eq!(d["trigger"]["memory_cgroup_path"], cg.path.as_str());
    let meminfo = &d["memory_snapshot"]["host_meminfo_bytes"];
    assert!(meminfo["MemTotal"].as_u64().unwrap() > LIMIT, "{meminfo}");
    assert!(meminfo["MemAvailable"].as_u64().is_some());
    // Not a container: no container fields.
    assert!(e.get("container_id").is_none(), "{e}");
    assert!(
        agent
            .metric("bianque_oom_events_total{constraint=\"memcg\"}")
            .unwrap()
            >= 1.0
    );
    assert_eq!(agent.metric("bianque_oom_ringbuf_lost_total"), Some(0.0));
    // A memory cgroup's OOM is not the host's.
    assert_eq!(agent.metric("bianque_oom_host_total"), Some(0.0));
}
