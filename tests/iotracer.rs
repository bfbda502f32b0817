//! `iotracer` on the real kernel: `dd oflag=direct` writing a file on a loop-mounted ext4 keeps
//! the loop disk busy; with the util threshold lowered by config the detector fires for that disk
//! and the capture names dd (pid and comm), the file's path, and its disk IO with latencies.

mod common;

use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Runs `dd` again and again (each run writes the same file; it is small enough for the disk),
/// recording every dd pid, until dropped.
struct DdLoop {
    stop: Arc<AtomicBool>,
    pids: Arc<Mutex<HashSet<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DdLoop {
    fn start(file: &str) -> DdLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let pids = Arc::new(Mutex::new(HashSet::new()));
        let (s, p, file) = (stop.clone(), pids.clone(), file.to_string());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let mut child = Command::new("dd")
                    .args([
                        "if=/dev/zero",
                        &format!("of={file}"),
                        "bs=4k",
                        "count=12800",
                        "oflag=direct",
                        "conv=notrunc",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("spawn dd");
                p.lock().unwrap().insert(child.id());
                while !s.load(Ordering::Relaxed) {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        });
        DdLoop {
            stop,
            pids,
            thread: Some(thread),
        }
    }
}

impl Drop for DdLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn direct_writes_on_a_loop_disk_fire_iotracer_naming_dd_and_its_file() {
    // Unmounted and detached on drop, after dd (`_dd` is declared later, so dropped first).
    let fs = LoopFs::new("iotracer", 128);
    let (dev, mnt) = (&fs.dev, &fs.mnt);
    let disk = dev.trim_start_matches("/dev/").to_string();
    let file = mnt.join("bq-iotracer-dd.bin");
    let file = file.to_str().unwrap().to_string();

    // Only this loop disk is watched (other loop devices on the shared machine stay out), busy
    // above 10% for two 1 s samples in a row; every IO wait is kept (dd's are short).
    let agent = Agent::start_only_autotracer(
        &format!(
            "[autotracing.iotracer]\ninterval_secs = 1\ncooldown_secs = 3600\nconsecutive_samples = 2\n\
             util_threshold_percent = 10\nawait_threshold_ms = 100000\ncapture_secs = 4\n\
             io_stall_threshold_ms = 0\ntop_io_stalls = 1000\ndevice_include = \"^{disk}$\"\n"
        ),
        "iotracer",
    );
    let (status, body) = agent.get("/tracers");
    assert_eq!(status, 200);
    let tracers: serde_json::Value = serde_json::from_str(&body).unwrap();
    let me = tracers["tracers"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "iotracer"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(me["status"], "active", "iotracer not active: {me}");

    let dd = DdLoop::start(&file);
    let found = wait_until(Duration::from_secs(40), || {
        !agent.events("tracer=iotracer&limit=5").is_empty()
    });
    let records = agent.events("tracer=iotracer&limit=5");
    let dd_pids = dd.pids.lock().unwrap().clone();
    drop(dd);
    assert!(found, "no iotracer record; log:\n{}", agent.log());

    let e = &records[0];
    assert_eq!(e["tracer_type"], "autotracing", "{e}");
    let d = &e["tracer_data"];
    let snap = &d["reason_snapshot"];
    assert_eq!(snap["device"], disk.as_str(), "{e}");
    assert_eq!(snap["major_num"], 7, "{e}");
    assert_eq!(snap["type"], "ioutil", "{e}");
    assert!(
        snap["iostatus"]["io_util_percent"].as_f64().unwrap() > 10.0,
        "{e}"
    );

    let procs = d["process_file_io_stats"].as_array().expect("process list");
    let p = procs
        .iter()
        .find(|p| p["comm"] == "dd")
        .unwrap_or_else(|| panic!("no dd in the record: {e}"));
    let pid = p["pid"].as_u64().unwrap() as u32;
    assert!(
        dd_pids.contains(&pid),
        "pid {pid} is not one of our dd runs {dd_pids:?}: {e}"
    );
    assert!(p["total_disk_write_bytes"].as_u64().unwrap() > 0, "{e}");
    assert!(p["total_fs_write_bytes"].as_u64().unwrap() > 0, "{e}");
    let f = p["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == file.as_str())
        .unwrap_or_else(|| panic!("dd's file {file} not in the record: {e}"));
    assert_eq!(f["kind"], "file", "{e}");
    assert_eq!(f["is_direct"], true, "{e}");
    assert_eq!(f["major"], 7, "{e}");
    assert!(f["inode"].as_u64().unwrap() > 0, "{e}");
    assert!(f["disk_write_ops"].as_u64().unwrap() > 0, "{e}");
    assert!(f["fs_write_ops"].as_u64().unwrap() > 0, "{e}");
    assert!(f["q2c_avg_ns"].as_u64().unwrap() > 0, "{e}");
    assert!(f["d2c_avg_ns"].as_u64().unwrap() > 0, "{e}");
    assert!(
        f["q2c_avg_ns"].as_u64().unwrap() >= f["d2c_avg_ns"].as_u64().unwrap(),
        "queue→complete shorter than issue→complete: {e}"
    );

    // dd waited for its direct writes in io_schedule: its IO wait is there, with the stack
    // (on this kernel the sleeping task's stack starts at `__iomap_dio_rw`).
    let stalls = d["io_schedule_stalls"]
        .as_array()
        .expect("io_schedule_stalls");
    let w = stalls
        .iter()
        .find(|w| w["comm"] == "dd" && dd_pids.contains(&(w["pid"].as_u64().unwrap() as u32)))
        .unwrap_or_else(|| panic!("no IO wait of dd: {e}"));
    assert!(w["max_latency_ns"].as_u64().unwrap() > 0, "{e}");
    assert!(w["count"].as_u64().unwrap() > 0, "{e}");
    let stack: Vec<&str> = w["stack"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(
        stack
            .iter()
            .any(|f| f.contains("io_schedule") || f.contains("iomap_dio_rw")),
        "dd's IO wait stack is not in its direct write: {stack:?}"
    );
}
