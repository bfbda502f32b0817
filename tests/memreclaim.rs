//! memreclaim on the real kernel: a writer in a 64 MiB memory cgroup fills it with page cache,
//! so the cgroup reclaims from itself (memcg reclaim); with the threshold at 1 ms the slow
//! reclaims are recorded with the writer's pid, comm and cgroup path. The file is on a loop
//! device whose writeback is throttled, so reclaim has to wait for it whatever the disk's speed.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn memcg_reclaim_over_the_threshold_is_recorded() {
    let agent = Agent::start(
        "[events.memreclaim]\nthreshold_ms = 1\n[events.dropwatch]\nenabled = false\n",
        &[],
    );
    let cg = MemCgroup::new("reclaim", 64 << 20);
    let fs = LoopFs::new("reclaim", 512);
    let file = fs.mnt.join("fill");
    // Writeback to the loop device at 8 MiB/s: dirty pages stay dirty long enough that the
    // cgroup's own reclaim waits on them (the flusher writes from the root blkio cgroup).
    let dev = sh(&format!("lsblk -dno MAJ:MIN {}", fs.dev))
        .trim()
        .to_string();
    let throttle = memcg_mount()
        .parent()
        .expect("cgroup v1 root")
        .join("blkio/blkio.throttle.write_bps_device");
    let _unthrottle = Cleanup(format!("echo '{dev} 0' > {}", throttle.display()));
    sh(&format!(
        "echo '{dev} {}' > {}",
        8 << 20,
        throttle.display()
    ));
    let mine = |agent: &Agent| -> Vec<serde_json::Value> {
        agent
            .events("tracer=memreclaim&limit=10000")
            .into_iter()
            .filter(|e| e["tracer_data"]["memory_cgroup_path"] == cg.path.as_str())
            .collect()
    };
    let mut pids = Vec::new();
    // Dirty page cache twice the limit; reclaim then waits for the throttled writeback.
    for _ in 0..3 {
        let mut child = cg.spawn(&format!(
            "dd if=/dev/zero of={} bs=1M count=128",
            file.display()
        ));
        pids.push(child.id());
        let status = wait_child(&mut child, Duration::from_secs(120)).expect("dd finished");
        assert!(status.success(), "{status:?}");
        if wait_until(Duration::from_secs(1), || !mine(&agent).is_empty()) {
            break;
        }
    }
    let events = mine(&agent);
    assert!(
        !events.is_empty(),
        "no memreclaim record; metrics:\n{}\nlog:\n{}",
        agent.metrics(),
        agent.log()
    );
    println!("{} records; first: {}", events.len(), events[0]);
    for e in &events {
        let d = &e["tracer_data"];
        assert_eq!(d["kind"], "memcg", "{e}");
        assert_eq!(d["comm"], "dd", "{e}");
        assert!(pids.contains(&(d["pid"].as_u64().unwrap() as u32)), "{e}");
        assert_eq!(d["threshold_ns"], 1_000_000);
        assert!(d["duration_ns"].as_u64().unwrap() >= 1_000_000, "{e}");
        assert!(e.get("container_id").is_none());
    }
    let slow = agent
        .metric("bianque_memreclaim_events_total{kind=\"memcg\"}")
        .unwrap();
    let seen = agent
        .metric("bianque_memreclaim_reclaims_total{kind=\"memcg\"}")
        .unwrap();
    assert!(slow >= events.len() as f64, "{slow}");
    assert!(seen >= slow, "{seen} >= {slow}");
}
