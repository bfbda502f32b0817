//! `cargo bench --bench metrics_scrape` (as root): bianque against node_exporter on the same
//! host, in the same run. Alternating full `/metrics` scrapes (fresh connection each, like a
//! Prometheus without keep-alive), then 1000 more scrapes of each for RSS and CPU per scrape,
//! and the series count of a test container. Prints a table; asserts nothing about timings.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, median, BIN};
const ALTERNATING: usize = 60;
const LONG_RUN: usize = 1000;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup that looks like a container (`docker-<id>.scope`, the systemd driver's form: a bare
/// 64-hex directory is not taken for a container), removed on drop. Fields: the parents, the
/// leaf directory name, the container id.
struct TestCgroup(Vec<PathBuf>, String, String);

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for p in &self.0 {
            let leaf = p.join(&self.1);
            let procs = std::fs::read_to_string(leaf.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on pids in the bench's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for p in &self.0 {
            let leaf = p.join(&self.1);
            for _ in 0..100 {
                if std::fs::remove_dir(&leaf).is_ok() || !leaf.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = std::fs::remove_dir(p);
        }
    }
}

fn scrape(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn wait_up(addr: &str) {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if TcpStream::connect(addr).is_ok() && !scrape(addr).is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{addr} did not come up");
}

/// (RSS bytes, CPU seconds user+system) of a process.
fn usage(pid: u32) -> (u64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields after the comm: state is [0], utime [11], stime [12].
    let ticks: f64 = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (rss_kb * 1024, ticks / hz)
}

fn series(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn test_container() -> Option<TestCgroup> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let id = format!("{:016x}", 0xb1a9_0e00u64 + std::process::id() as u64).repeat(4);
    let mut dirs = Vec::new();
    for c in ["memory", "cpu", "cpuacct"] {
        let m = bianque::cgroupfs::Layout::from_mountinfo(&mi, &bianque::host::HostRoot::default())
            .mount_of(c)
            .map(std::path::Path::to_path_buf)?;
        let parent = m.join(format!("bqbench-{}", std::process::id()));
        std::fs::create_dir_all(parent.join(format!("docker-{id}.scope"))).ok()?;
        dirs.push(parent);
    }
    let cg = TestCgroup(dirs, format!("docker-{id}.scope"), id);
    let mut join = String::new();
    for p in &cg.0 {
        join.push_str(&format!(
            "echo $$ > {}/cgroup.procs; ",
            p.join(&cg.1).display()
        ));
    }
    // Own network namespace too, so per-container network series count as they would.
    let cmd = format!("{join}exec unshare -n sh -c 'ip link set lo up; exec sleep 600'");
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    Some(cg)
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("metrics_scrape: run as root (BPF collectors, cgroups)");
        std::process::exit(1);
    }
    let container = test_container();
    let data = std::env::temp_dir().join(format!("bq-bench-{}", std::process::id()));
    let bq_addr = format!("127.0.0.1:{}", free_port());
    let ne_addr = format!("127.0.0.1:{}", free_port());
    let bq = Proc(
        Command::new(BIN)
            .args(["run", "--listen", &bq_addr, "--data-dir"])
            .arg(&data)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bianque"),
    );
    let ne = Proc(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={ne_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (Debian) is installed by `make test-deps`"),
    );
    wait_up(&bq_addr);
    wait_up(&ne_addr);
    // Let every bianque tracer attach and the container show up (its walk is cached 2 s).
    std::thread::sleep(Duration::from_secs(4));
    for _ in 0..5 {
        scrape(&bq_addr);
        scrape(&ne_addr);
    }

    let (mut tb, mut tn) = (Vec::new(), Vec::new());
    let (mut bq_text, mut ne_text) = (String::new(), String::new());
    for i in 0..ALTERNATING {
        // Alternate which goes first so drift in machine load hits both alike.
        let order: [(&str, bool); 2] = if i % 2 == 0 {
            [(&bq_addr, true), (&ne_addr, false)]
        } else {
            [(&ne_addr, false), (&bq_addr, true)]
        };
        for (addr, is_bq) in order {
            let t = Instant::now();
            let body = scrape(addr);
            let dt = t.elapsed().as_secs_f64();
            if is_bq {
                tb.push(dt);
                bq_text = body;
            } else {
                tn.push(dt);
                ne_text = body;
            }
        }
    }
    let mb = median(tb.clone());
    let mn = median(tn.clone());

    let (_, cpu_b0) = usage(bq.0.id());
    let (_, cpu_n0) = usage(ne.0.id());
    for _ in 0..LONG_RUN {
        scrape(&bq_addr);
        scrape(&ne_addr);
    }
    let (rss_b, cpu_b1) = usage(bq.0.id());
    let (rss_n, cpu_n1) = usage(ne.0.id());
    let cpu_b = (cpu_b1 - cpu_b0) / LONG_RUN as f64;
    let cpu_n = (cpu_n1 - cpu_n0) / LONG_RUN as f64;

    let host_b = series(&bq_text)
        .filter(|l| !l.contains("container_id="))
        .count();
    let host_n = series(&ne_text).count();
    let per_container = container.as_ref().map(|c| {
        let needle = format!("container_id=\"{}\"", c.2);
        series(&bq_text).filter(|l| l.contains(&needle)).count()
    });

    println!();
    println!(
        "metrics_scrape: {ALTERNATING} alternating full scrapes each, then {LONG_RUN} more each"
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "", "bianque", "node_exporter", "ratio"
    );
    println!(
        "{:<34} {:>14.3} {:>14.3} {:>8.3}",
        "median scrape time (ms)",
        mb * 1e3,
        mn * 1e3,
        mb / mn
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8.3}",
        "host series",
        host_b,
        host_n,
        host_b as f64 / host_n as f64
    );
    println!(
        "{:<34} {:>14.1} {:>14.1} {:>8.3}",
        format!("RSS after {LONG_RUN} scrapes (MiB)"),
        rss_b as f64 / 1048576.0,
        rss_n as f64 / 1048576.0,
        rss_b as f64 / rss_n as f64
    );
    println!(
        "{:<34} {:>14.3} {:>14.3} {:>8.3}",
        "CPU per scrape (ms, user+sys)",
        cpu_b * 1e3,
        cpu_n * 1e3,
        if cpu_n > 0.0 { cpu_b / cpu_n } else { f64::NAN }
    );
    match per_container {
        Some(n) => println!(
            "{:<34} {:>14} {:>14}",
            "series per container (defaults)", n, "-"
        ),
        None => println!(
            "{:<34} {:>14} {:>14}",
            "series per container (defaults)", "n/a", "-"
        ),
    }
    println!(
        "targets: scrape ratio <= 0.5 ({}), host series >= node_exporter's ({}), RSS <= node_exporter's ({}), <= 150 series per container ({})",
        if mb / mn <= 0.5 { "met" } else { "NOT met" },
        if host_b >= host_n { "met" } else { "NOT met" },
        if rss_b <= rss_n { "met" } else { "NOT met" },
        match per_container {
            Some(n) if n <= 150 => "met",
            Some(_) => "NOT met",
            None => "not measured",
        }
    );
    drop(bq);
    drop(ne);
    drop(container);
    let _ = std::fs::remove_dir_all(&data);
}
