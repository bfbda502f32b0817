//! Shared helpers for integration tests: start a real agent, talk HTTP to it, clean up.
#![allow(dead_code)]

pub mod podman;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_bianque");

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("bianque-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A UDP port nothing listens on (bound and released: the kernel will not reuse it at once).
pub fn closed_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A running `bianque run`, stopped (SIGKILL) and cleaned up on drop.
pub struct Agent {
    pub child: Option<Child>,
    pub addr: String,
    pub dir: TempDir,
}

impl Agent {
    /// Starts the agent with `config` (TOML) and extra CLI args; waits for `/readyz`.
    pub fn start(config: &str, args: &[&str]) -> Agent {
        let dir = TempDir::new("agent");
        let cfg_path = dir.path().join("bianque.toml");
        std::fs::write(&cfg_path, config).expect("write config");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let child = Command::new(BIN)
            .arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--listen")
            .arg(&addr)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bianque");
        let agent = Agent {
            child: Some(child),
            addr,
            dir,
        };
        let ready = wait_until(Duration::from_secs(20), || agent.get("/readyz").0 == 200);
        if !ready {
            panic!("agent not ready in 20s; log:\n{}", agent.log());
        }
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(&self.addr, "GET", path, &[])
    }

    pub fn post(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
        http(&self.addr, "POST", path, headers)
    }

    pub fn metrics(&self) -> String {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// `/events?<query>` as JSON values.
    pub fn events(&self, query: &str) -> Vec<serde_json::Value> {
        let (code, body) = self.get(&format!("/events?{query}"));
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("events json");
        v["events"].as_array().cloned().unwrap_or_default()
    }

    /// The value of an unlabelled or labelled series in `/metrics` (exact series text).
    pub fn metric(&self, series: &str) -> Option<f64> {
        metric_value(&self.metrics(), series)
    }

    /// Sends SIGTERM and waits for the exit (up to `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        // SAFETY: kill(2) with a pid we spawned; at worst it fails with ESRCH.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .and_then(|v| v.trim().parse().ok())
}

/// Minimal HTTP/1.0 client: (status, body). Status 0 when nothing answers.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Length: 0\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    if s.read_to_string(&mut resp).is_err() {
        return (0, String::new());
    }
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, ignoring failure (cleanup).
pub fn sh_quiet(cmd: &str) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs a cleanup command when dropped, even if the test panicked.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        sh_quiet(&self.0);
    }
}

/// Sends `n` UDP datagrams to 127.0.0.1:`port` from a thread named `comm` (the kernel's comm).
pub fn send_udp_from_thread(comm: &str, target: &str, n: usize) {
    let target = target.to_string();
    std::thread::Builder::new()
        .name(comm.to_string())
        .spawn(move || {
            let bind = if target.starts_with('[') {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            };
            let s = std::net::UdpSocket::bind(bind).expect("bind");
            for _ in 0..n {
                let _ = s.send_to(b"x", &target);
            }
        })
        .expect("spawn")
        .join()
        .expect("join");
}
