//! The `waitrate` autotracer on the real kernel: two CPU-bound container cgroups, one under a
//! tight CFS quota; the throttled one fires `waitrate` (its cgroup and container named), the
//! record lists both as contenders and carries a host profile counted per container. A second
//! test makes tasks queue for the CPU in one cgroup and fires on its run-queue wait share.

mod common;

use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use common::*;

struct Kids(Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A copy of `yes` named so that its comm is recognisable in profiles.
fn burner(dir: &TempDir) -> PathBuf {
    let p = dir.path().join("bq-wr-burner");
    std::fs::copy("/usr/bin/yes", &p).expect("copy yes");
    p
}

fn records(agent: &Agent) -> Vec<serde_json::Value> {
    agent.events("tracer=waitrate&limit=50")
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

#[test]
fn a_throttled_container_fires_waitrate_and_is_named_among_the_contenders() {
    let dir = TempDir::new("waitrate");
    let bin = burner(&dir);
    // 5 ms every 50 ms: a twentieth of a CPU, throttled in every period once it burns.
    let tight = ContainerCgroup::new("waitrate", Some((5_000, 50_000)));
    let free = ContainerCgroup::new("waitrate", None);
    let agent = Agent::start_only_autotracer(
        "[containers]\nengine_sockets = []\nkubelet_read_only_address = \"\"\nresync_secs = 1\n\
         [autotracing.waitrate]\ninterval_secs = 1\nthrottled_threshold_percent = 30\n\
         throttled_delta_threshold_percent = 20\nwait_threshold_percent = 100\nprofile_secs = 2\n",
        "waitrate",
    );
    // Calm samples first: the detector fires on a rise.
    std::thread::sleep(Duration::from_secs(3));
    let n = cores();
    let _kids = Kids(
        (0..n)
            .map(|_| tight.spawn(&format!("{} > /dev/null", bin.display())))
            .chain((0..n).map(|_| free.spawn(&format!("{} > /dev/null", bin.display()))))
            .collect(),
    );
    let fired = |a: &Agent| {
        records(a)
            .into_iter()
            .find(|e| e["container_id"] == tight.id.as_str())
    };
    assert!(
        wait_until(Duration::from_secs(40), || fired(&agent).is_some()),
        "no waitrate record for the throttled cgroup; records: {:?}\nlog:\n{}",
        records(&agent),
        agent.log()
    );
    let e = fired(&agent).unwrap();
    assert_eq!(e["tracer_type"], "autotracing");
    let d = &e["tracer_data"];
    assert_eq!(d["cgroup"], tight.path.as_str(), "{e}");
    assert!(d["throttled_percent"].as_f64().unwrap() > 30.0, "{e}");
    assert!(d["throttled_periods"].as_u64().unwrap() >= 5, "{e}");
    // The contenders of the capture window: both cgroups, the free one using far more CPU, the
    // tight one throttled.
    let contenders = d["contenders"].as_array().unwrap();
    let find = |id: &str| {
        contenders
            .iter()
            .find(|c| c["container_id"] == id)
            .unwrap_or_else(|| panic!("{id} not among the contenders: {e}"))
    };
    let (t, f) = (find(&tight.id), find(&free.id));
    assert!(t["throttled_percent"].as_f64().unwrap() > 30.0, "{e}");
    assert!(t["cpu_cores"].as_f64().unwrap() <= 0.2, "{e}");
    assert!(
        f["cpu_cores"].as_f64().unwrap() > t["cpu_cores"].as_f64().unwrap(),
        "{e}"
    );
    assert_eq!(f["throttled_periods"], 0, "{e}");
    // The host profile, counted per container: the free burners are sampled and attributed.
    assert!(f["profile_samples"].as_u64().unwrap() > 0, "{e}");
    let folded = d["profile"]["folded"].as_array().unwrap();
    assert!(
        folded
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("bq-wr-burner;")),
        "burners not in the host profile: {folded:?}"
    );
    // The never-throttled cgroup (wait rule off here) does not fire; one anomaly, one record.
    std::thread::sleep(Duration::from_secs(3));
    let all = records(&agent);
    assert!(
        !all.iter().any(|e| e["container_id"] == free.id.as_str()),
        "{all:?}"
    );
    assert_eq!(
        all.iter()
            .filter(|e| e["container_id"] == tight.id.as_str())
            .count(),
        1
    );
}

#[test]
fn tasks_queuing_for_the_cpu_fire_waitrate_on_their_wait_share() {
    let dir = TempDir::new("waitrate-q");
    let bin = burner(&dir);
    let busy = ContainerCgroup::new("waitrate", None);
    let agent = Agent::start_only_autotracer(
        "[containers]\nengine_sockets = []\nkubelet_read_only_address = \"\"\nresync_secs = 1\n\
         [autotracing.waitrate]\ninterval_secs = 1\nwait_threshold_percent = 30\n\
         wait_delta_threshold_percent = 20\nthrottled_threshold_percent = 100\nprofile_secs = 1\n",
        "waitrate",
    );
    std::thread::sleep(Duration::from_secs(3));
    // Three runnable tasks per CPU: each waits about two thirds of the time it is runnable.
    let _kids = Kids(
        (0..cores() * 3)
            .map(|_| busy.spawn(&format!("{} > /dev/null", bin.display())))
            .collect(),
    );
    let fired = |a: &Agent| {
        records(a)
            .into_iter()
            .find(|e| e["container_id"] == busy.id.as_str())
    };
    assert!(
        wait_until(Duration::from_secs(40), || fired(&agent).is_some()),
        "no waitrate record for the queuing cgroup; records: {:?}\nlog:\n{}",
        records(&agent),
        agent.log()
    );
    let e = fired(&agent).unwrap();
    let d = &e["tracer_data"];
    assert!(d["wait_percent"].as_f64().unwrap() > 30.0, "{e}");
    // This kernel has no schedstats: the wait comes from the runqlat tracer's BPF sums.
    let schedstats = std::path::Path::new("/proc/sys/kernel/sched_schedstats").exists()
        && std::fs::read_to_string("/proc/sys/kernel/sched_schedstats")
            .is_ok_and(|v| v.trim() == "1");
    assert_eq!(
        d["wait_source"],
        if schedstats { "schedstats" } else { "bpf" },
        "{e}"
    );
    let c = d["contenders"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["container_id"] == busy.id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("not among the contenders: {e}"));
    assert!(c["wait_percent"].as_f64().unwrap() > 30.0, "{e}");
}
