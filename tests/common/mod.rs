//! Shared helpers for integration tests: start a real agent, talk HTTP to it, clean up.
#![allow(dead_code)]

pub mod http_client;
pub mod osmem;
pub mod podman;
pub mod prometheus;

use std::net::TcpListener;
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
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
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
        Agent::start_in(TempDir::new("agent"), config, args)
    }

    /// Starts the agent in `dir` (its config, log and `data/` live there): a restart on the same
    /// store after [`Agent::kill9`].
    pub fn start_in(dir: TempDir, config: &str, args: &[&str]) -> Agent {
        Agent::start_full(&[], dir, config, args, |_| {})
    }

    /// [`Agent::start_in`] with a last change to the command (limits, environment).
    pub fn start_with(
        dir: TempDir,
        config: &str,
        args: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Agent {
        Agent::start_full(&[], dir, config, args, customize)
    }

    /// [`Agent::start_in`] through a wrapper command (`setpriv …`) that execs the agent; the
    /// child's pid is the agent's then.
    pub fn start_wrapped(wrapper: &[&str], dir: TempDir, config: &str, args: &[&str]) -> Agent {
        Agent::start_full(wrapper, dir, config, args, |_| {})
    }

    fn start_full(
        wrapper: &[&str],
        dir: TempDir,
        config: &str,
        args: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Agent {
        let cfg_path = dir.path().join("bianque.toml");
        std::fs::write(&cfg_path, config).expect("write config");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("agent.log"))
            .expect("log file");
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--listen")
            .arg(&addr)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log);
        customize(&mut cmd);
        let child = cmd.spawn().expect("spawn bianque");
        let agent = Agent {
            child: Some(child),
            addr,
            dir,
        };
        let ready = wait_until(Duration::from_secs(20), || {
            matches!(agent.get("/readyz").0, 200 | 204)
        });
        if !ready {
            panic!("agent not ready in 20s; log:\n{}", agent.log());
        }
        // Ready may come before a slow (cold) tracer has attached; what a test provokes must
        // find every tracer in place.
        let attached = wait_until(Duration::from_secs(20), || {
            let (_, body) = agent.get("/tracers");
            !body.contains("\"starting\"") && !body.contains("\"not started\"")
        });
        if !attached {
            panic!(
                "tracers still starting after 20s: {}\nlog:\n{}",
                agent.get("/tracers").1,
                agent.log()
            );
        }
        agent
    }

    /// Starts the agent with every autotracer but `keep` disabled, and dropwatch (the host's
    /// own drops would fill the store): an autotracer's test sees only its own detector fire
    /// and its own captures take the CPU.
    pub fn start_only_autotracer(config: &str, keep: &str) -> Agent {
        let mut args = Vec::new();
        for spec in bianque::tracer::registry() {
            if (spec.mode == bianque::tracer::Mode::Autotracing && spec.name != keep)
                || spec.name == "dropwatch"
            {
                args.push("--disable");
                args.push(spec.name);
            }
        }
        Agent::start(config, &args)
    }

    /// SIGKILL, no chance to flush or clean up; returns the directory for [`Agent::start_in`].
    pub fn kill9(mut self) -> TempDir {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// VmRSS of the agent in kB.
    pub fn rss_kb(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
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
    http_client::request(addr, method, path, headers, "")
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

/// An ext4 filesystem on a loop device over a sparse file in its own temp dir, mounted at
/// `mnt`. Drop thaws it (a test may have frozen it), unmounts it and detaches the device, also
/// when the test failed. Tests that freeze it keep their own thaw guard declared after the
/// blocked tasks' guard, so the tasks can die before they are reaped.
pub struct LoopFs {
    pub dev: String,
    pub mnt: PathBuf,
    _dir: TempDir,
}

impl LoopFs {
    pub fn new(tag: &str, size_mib: u64) -> LoopFs {
        let dir = TempDir::new(tag);
        let img = dir.path().join("disk.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        sh(&format!("truncate -s {size_mib}M {}", img.display()));
        let dev = sh(&format!("losetup --show -f {}", img.display()))
            .trim()
            .to_string();
        let fs = LoopFs {
            dev,
            mnt,
            _dir: dir,
        };
        sh(&format!(
            "mkfs.ext4 -q {dev} && mount {dev} {mnt}",
            dev = fs.dev,
            mnt = fs.mnt.display()
        ));
        fs
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        sh_quiet(&format!(
            "fsfreeze -u {m}; umount {m} || (sleep 0.3; umount {m}) || umount -l {m}; losetup -d {dev}",
            m = self.mnt.display(),
            dev = self.dev
        ));
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

/// The mount point of the v1 memory hierarchy, else the cgroup2 mount.
pub fn memcg_mount() -> PathBuf {
    cgroup_mount("memory").expect("a memory cgroup hierarchy")
}

/// The mount point of the hierarchy holding `controller`: its v1 hierarchy, else cgroup2.
pub fn cgroup_mount(controller: &str) -> Option<PathBuf> {
    bianque::cgroupfs::Layout::read(&bianque::host::HostRoot::default())
        .mount_of(controller)
        .map(Path::to_path_buf)
}

/// A memory cgroup made for one test, with a memory limit; its tasks are killed and the
/// directory removed on drop.
pub struct MemCgroup {
    pub dir: PathBuf,
    /// The path inside the hierarchy, e.g. `/bq-oom-123-0`.
    pub path: String,
}

impl MemCgroup {
    pub fn new(tag: &str, limit_bytes: u64) -> MemCgroup {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("bq-{tag}-{}-{n}", std::process::id());
        let dir = memcg_mount().join(&name);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).expect("create memory cgroup");
        let cg = MemCgroup {
            dir,
            path: format!("/{name}"),
        };
        let v1 = cg.dir.join("memory.limit_in_bytes");
        let file = if v1.exists() {
            v1
        } else {
            cg.dir.join("memory.max")
        };
        std::fs::write(&file, limit_bytes.to_string()).expect("set the memory limit");
        cg
    }

    /// `sh -c '<join the cgroup>; exec <cmd>'`: the returned child's pid is `cmd`'s pid.
    pub fn spawn(&self, cmd: &str) -> Child {
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > {}/cgroup.procs && exec {cmd}",
                self.dir.display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn into the memory cgroup")
    }

    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            let procs = self.read("cgroup.procs");
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                // SAFETY: kill(2) on pids in our own test cgroup; at worst ESRCH.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Waits for a child up to `timeout`; kills it if it is still running then.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A network namespace joined to the test's namespace by a veth pair, on a /24 of its own:
/// `host_addr` (.1) on this side, `ns_addr` (.2) inside. Deleted (with the veth pair and any
/// firewall rules inside) on drop.
pub struct NetnsPair {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
    pub host_addr: std::net::Ipv4Addr,
    pub ns_addr: std::net::Ipv4Addr,
    _cleanup: Cleanup,
}

impl NetnsPair {
    pub fn new(tag: &str) -> NetnsPair {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("bq-{tag}-{pid}-{n}");
        // veth names are at most 15 bytes.
        let short = format!("{}{n}", pid % 100_000);
        let host_if = format!("bqh{short}");
        let ns_if = format!("bqn{short}");
        // A subnet per (process, pair): parallel test binaries differ in pid.
        let subnet = ((pid as u64 * 7 + n as u64 * 131) % 250) as u8 + 1;
        let third = (pid % 200) as u8 + 20;
        let host_addr = std::net::Ipv4Addr::new(10, third, subnet, 1);
        let ns_addr = std::net::Ipv4Addr::new(10, third, subnet, 2);
        let cleanup = Cleanup(format!("ip netns del {name}; ip link del {host_if}"));
        sh(&format!(
            "ip netns add {name} && \
             ip link add {host_if} type veth peer name {ns_if} && \
             ip link set {ns_if} netns {name} && \
             ip addr add {host_addr}/24 dev {host_if} && ip link set {host_if} up && \
             ip -n {name} addr add {ns_addr}/24 dev {ns_if} && \
             ip -n {name} link set {ns_if} up && ip -n {name} link set lo up"
        ));
        NetnsPair {
            name,
            host_if,
            ns_if,
            host_addr,
            ns_addr,
            _cleanup: cleanup,
        }
    }

    /// Runs `f` on a thread that entered the namespace; sockets it creates stay in there.
    pub fn run_in<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_netns(&path);
            f()
        })
        .join()
        .expect("thread in netns")
    }

    /// Spawns a named thread inside the namespace.
    pub fn spawn_in<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                enter_netns(&path);
                f()
            })
            .expect("spawn thread in netns")
    }

    /// `ip netns exec <ns> <cmd>`.
    pub fn exec(&self, cmd: &str) -> String {
        sh(&format!("ip netns exec {} {cmd}", self.name))
    }

    /// The namespace's inode number (what BPF reads as `net->ns.inum`).
    pub fn inum(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .expect("netns file")
            .ino()
    }
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &str) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).expect("open netns");
    // SAFETY: setns on a valid namespace fd; it changes only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// The inode number of this process's network namespace.
pub fn own_netns_inum() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/net").expect("ns").ino()
}

/// A cgroup the agent takes for a container (its path ends in `docker-<64 hex>.scope`), made in
/// every hierarchy a container's cgroup lives in: v1 `memory`, `cpu`, `cpuacct` (hybrid hosts
/// like this one), or the cgroup2 tree with the cpu controller enabled. Its tasks are killed and
/// the directories removed on drop.
pub struct ContainerCgroup {
    pub id: String,
    /// The path inside each hierarchy, e.g. `/bq-waitrate-123-0/docker-<id>.scope`.
    pub path: String,
    /// The cgroup's directory in each hierarchy it was made in.
    dirs: Vec<PathBuf>,
    /// The per-test parent directories (removed after the cgroups).
    parent_dirs: Vec<PathBuf>,
}

impl ContainerCgroup {
    /// `quota`: (quota µs, period µs) for the CFS bandwidth limit; None = no limit.
    pub fn new(tag: &str, quota: Option<(u64, u64)>) -> ContainerCgroup {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let pid = std::process::id();
        let id = format!("{pid:08x}{n:08x}").repeat(4);
        let parent = format!("bq-{tag}-{pid}-{n}");
        let path = format!("/{parent}/docker-{id}.scope");
        let v1: Vec<PathBuf> = ["memory", "cpu", "cpuacct"]
            .iter()
            .filter_map(|c| {
                cgroup_mount(c).filter(|m| {
                    // cgroup_mount falls back to cgroup2; keep v1 hierarchies only here.
                    !m.join("cgroup.controllers").exists()
                })
            })
            .collect();
        let mut mounts = v1;
        mounts.dedup();
        let v2 = mounts.is_empty();
        if v2 {
            let m = cgroup_mount("memory").expect("a cgroup2 mount");
            mounts.push(m);
        }
        let mut cg = ContainerCgroup {
            id,
            path: path.clone(),
            dirs: Vec::new(),
            parent_dirs: Vec::new(),
        };
        for m in &mounts {
            let p = m.join(&parent);
            std::fs::create_dir(&p).expect("create the test cgroup's parent");
            cg.parent_dirs.push(p.clone());
            if v2 {
                // Controllers reach a child only when every ancestor enables them.
                let _ = std::fs::write(m.join("cgroup.subtree_control"), "+cpu +memory");
                std::fs::write(p.join("cgroup.subtree_control"), "+cpu +memory")
                    .expect("enable cpu and memory for the test cgroup");
            }
            let d = m.join(path.trim_start_matches('/'));
            std::fs::create_dir(&d).expect("create the test cgroup");
            cg.dirs.push(d);
        }
        if let Some((q, p)) = quota {
            let cpu_dir = if v2 {
                cg.dirs[0].clone()
            } else {
                let cpu = cgroup_mount("cpu").expect("cpu");
                cpu.join(path.trim_start_matches('/'))
            };
            if v2 {
                std::fs::write(cpu_dir.join("cpu.max"), format!("{q} {p}")).expect("cpu.max");
            } else {
                std::fs::write(cpu_dir.join("cpu.cfs_period_us"), p.to_string())
                    .expect("cfs_period_us");
                std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), q.to_string())
                    .expect("cfs_quota_us");
            }
        }
        cg
    }

    /// `sh -c '<join the cgroup in every hierarchy>; exec <cmd>'`; the child's pid is `cmd`'s.
    pub fn spawn(&self, cmd: &str) -> Child {
        let joins: Vec<String> = self
            .dirs
            .iter()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .collect();
        Command::new("sh")
            .arg("-c")
            .arg(format!("{} && exec {cmd}", joins.join(" && ")))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn into the test cgroup")
    }
}

impl Drop for ContainerCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            for d in &self.dirs {
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill(2) on pids in our own test cgroup; at worst ESRCH.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let mut left = false;
            for d in self.dirs.iter().chain(&self.parent_dirs) {
                if d.exists() && std::fs::remove_dir(d).is_err() {
                    left = true;
                }
            }
            if !left {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
