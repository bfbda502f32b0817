//! The `cpu_pressure` autotracer on the real kernel: CPU burners (more than the cores) raise
//! PSI CPU pressure past the threshold, and the capture names the burner.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Burners(Vec<Child>);

impl Drop for Burners {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn cpu_burners_fire_cpu_pressure_and_are_named() {
    // The machine may already be busy (other tests, other jobs): set the threshold above the
    // current pressure, so the detector first sees a calm sample and then a real rise.
    let avg10 = || {
        let psi = std::fs::read_to_string("/proc/pressure/cpu").unwrap();
        bianque::procfs::pressure::find(&psi, "some").unwrap().avg[0]
    };
    // Right after a build the pressure is still high: give it time to settle first.
    wait_until(Duration::from_secs(60), || avg10() < 60.0);
    let baseline = avg10();
    let threshold = (baseline + 25.0).clamp(30.0, 90.0);
    let agent = Agent::start_only_autotracer(
        &format!("[autotracing.cpu_pressure]\nthreshold_percent = {threshold:.1}\ninterval_secs = 1\ncapture_ms = 500\n"),
        "cpu_pressure",
    );
    // Let the detector see a calm sample first (it only fires on a rising edge).
    std::thread::sleep(Duration::from_millis(1500));
    let dir = TempDir::new("burner");
    let burner = dir.path().join("bq-burner");
    std::fs::copy("/usr/bin/yes", &burner).unwrap();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let _burners = Burners(
        (0..cores * 4)
            .map(|_| Command::new(&burner).stdout(Stdio::null()).spawn().unwrap())
            .collect(),
    );
    let fired = |a: &Agent| a.events("tracer=cpu_pressure&limit=10").into_iter().next();
    assert!(
        wait_until(Duration::from_secs(40), || fired(&agent).is_some()),
        "no record; log:\n{}",
        agent.log()
    );
    let e = fired(&agent).unwrap();
    assert_eq!(e["tracer_type"], "autotracing");
    let d = &e["tracer_data"];
    assert!(
        d["cpu_some_avg10_percent"].as_f64().unwrap() > threshold,
        "{e}"
    );
    let top = d["top_processes"].as_array().unwrap();
    assert!(
        top.iter().any(|p| p["comm"] == "bq-burner"),
        "burner not among the top processes: {e}"
    );
    // One anomaly, one record: the detector does not fire again while pressure stays high.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(agent.events("tracer=cpu_pressure&limit=10").len(), 1);
}
