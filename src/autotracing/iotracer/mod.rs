//! `iotracer`: a disk stays saturated (util above a threshold, or read/write await above a
//! threshold) for consecutive samples of `/proc/diskstats` → per-process and per-file IO on that
//! disk for the next seconds, captured in BPF: bytes and operations at the filesystem side
//! (read/write syscalls from the raw syscall tracepoints, the fd resolved to its file in the
//! kernel) and at the disk side (bios
//! charged to the task that queued them and to their file), with queue→complete (q2c) and
//! issue→complete (d2c) latency from the block request tracepoints. Aggregated in a BPF map; no
//! message per IO reaches user space. Paths are resolved in user space from the processes' open
//! files.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use libbpf_rs::skel::{OpenSkel, Skel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags};
use serde::{Deserialize, Serialize};

use crate::bpf as bq_bpf;
use crate::config::filter::Filter;
use crate::config::{check_range, parse_section, ConfigResult};
use crate::host::HostRoot;
use crate::procfs::diskstats;
use crate::tracer::detect::{counter_deltas, round2};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Capability, Mode, Requirement, RunContext, Tracer,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("iotracer");
}
use skel::types::{io_key, io_stall, io_val};
use skel::IotracerSkelBuilder;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "iotracer",
    mode: Mode::Autotracing,
    description: "a disk's util or await above a threshold for consecutive samples: per-process, per-file IO on it (bytes, ops, q2c/d2c latency)",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(
            Capability::SysPtrace,
            "no open files of other users' processes (/proc/<pid>/fd)",
        ),
        Requirement::Btf,
        Requirement::HostFile("proc/diskstats"),
        Requirement::BtfTracepoint("block_bio_queue"),
        Requirement::BtfTracepoint("block_rq_issue"),
        Requirement::BtfTracepoint("block_rq_complete"),
        Requirement::BtfTracepoint("sys_enter"),
        Requirement::BtfTracepoint("sys_exit"),
        Requirement::BtfTracepoint("sched_switch"),
    ],
    default_enabled: true,
    build,
};

/// RAM disks, floppies, MD arrays (their members are watched instead).
pub const DEFAULT_DEVICE_EXCLUDE: &str = r"^(md|ram|zram|fd)\d+$";

// Mirrors iotracer.h.
const IOT_STAT_MAP_FULL: u32 = 0;
const IOT_STAT_NO_BIO: u32 = 1;
const IOT_STAT_INFLIGHT_FULL: u32 = 2;
const IOT_STAT_STALLS_FULL: u32 = 3;
const IOT_KIND_FILE: u32 = 1;
const IOT_KIND_BLOCKDEV: u32 = 2;
const IOT_FLAG_DIRECT: u32 = 1;
const IOT_FLAG_BUFFERED: u32 = 2;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoTracerConfig {
    pub interval_secs: u64,
    /// At most one capture per disk per cooldown.
    pub cooldown_secs: u64,
    /// Samples in a row a disk must be over a threshold before the capture.
    pub consecutive_samples: u32,
    /// Busy share of wall time (diskstats io_ticks).
    pub util_threshold_percent: f64,
    /// Average time of a completed read or write request, queue included.
    pub await_threshold_ms: f64,
    /// NVMe disks are often busy 100% while far from saturated: their util rule also needs
    /// read or write throughput above these.
    pub nvme_read_threshold_mib_per_sec: f64,
    pub nvme_write_threshold_mib_per_sec: f64,
    /// How long a capture traces.
    pub capture_secs: u64,
    pub top_processes: usize,
    pub top_files_per_process: usize,
    /// IO waits (a task blocked in io_schedule) at least this long are kept with their stack.
    pub io_stall_threshold_ms: u64,
    /// The longest IO waits (one per thread) kept in a record.
    pub top_io_stalls: usize,
    pub device_include: Option<String>,
    pub device_exclude: Option<String>,
}

impl Default for IoTracerConfig {
    fn default() -> Self {
        IoTracerConfig {
            interval_secs: 5,
            cooldown_secs: 600,
            consecutive_samples: 2,
            util_threshold_percent: 90.0,
            await_threshold_ms: 100.0,
            nvme_read_threshold_mib_per_sec: 2000.0,
            nvme_write_threshold_mib_per_sec: 1500.0,
            capture_secs: 10,
            top_processes: 10,
            top_files_per_process: 5,
            io_stall_threshold_ms: 100,
            top_io_stalls: 20,
            device_include: None,
            device_exclude: Some(DEFAULT_DEVICE_EXCLUDE.into()),
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: IoTracerConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(&key("consecutive_samples"), cfg.consecutive_samples, 1, 100)?;
    check_range(
        &key("util_threshold_percent"),
        cfg.util_threshold_percent,
        0.0,
        100.0,
    )?;
    check_range(
        &key("await_threshold_ms"),
        cfg.await_threshold_ms,
        0.0,
        3_600_000.0,
    )?;
    check_range(
        &key("nvme_read_threshold_mib_per_sec"),
        cfg.nvme_read_threshold_mib_per_sec,
        0.0,
        10_000_000.0,
    )?;
    check_range(
        &key("nvme_write_threshold_mib_per_sec"),
        cfg.nvme_write_threshold_mib_per_sec,
        0.0,
        10_000_000.0,
    )?;
    check_range(&key("capture_secs"), cfg.capture_secs, 1, 300)?;
    check_range(&key("top_processes"), cfg.top_processes, 1, 1000)?;
    check_range(
        &key("top_files_per_process"),
        cfg.top_files_per_process,
        1,
        1000,
    )?;
    check_range(
        &key("io_stall_threshold_ms"),
        cfg.io_stall_threshold_ms,
        0,
        3_600_000,
    )?;
    check_range(&key("top_io_stalls"), cfg.top_io_stalls, 1, 1000)?;
    let filter = Filter::new(
        ctx.section,
        "device_include",
        cfg.device_include.as_deref(),
        "device_exclude",
        cfg.device_exclude.as_deref(),
    )?;
    Ok(Tracer::Autotracing(Box::new(IoTracer {
        thresholds: Thresholds {
            util_percent: cfg.util_threshold_percent,
            await_ms: cfg.await_threshold_ms,
            nvme_read_bps: cfg.nvme_read_threshold_mib_per_sec * MIB,
            nvme_write_bps: cfg.nvme_write_threshold_mib_per_sec * MIB,
        },
        host: ctx.host.clone(),
        filter,
        state: Mutex::new(State::default()),
        cfg,
    })))
}

/// A disk's rates between two diskstats samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct IoStat {
    pub read_bps: f64,
    pub write_bps: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    /// Average time of the reads (writes) completed in the interval; 0 without any.
    pub read_await_ms: f64,
    pub write_await_ms: f64,
    pub io_util_percent: f64,
    /// Average number of requests in flight (weighted io time / wall time).
    pub queue_size: f64,
}

/// Cumulative diskstats counters the rates are made of (index into `DiskStats::f`): reads,
/// sectors read, read ms, writes, sectors written, write ms, io ticks, weighted io ms. Field 8
/// (in flight) is a gauge and not among them.
const COUNTERS: [usize; 8] = [0, 2, 3, 4, 6, 7, 9, 10];

/// Rates between two samples `secs` apart; `None` when a counter went backwards (device
/// replaced, counters reset) or no time passed.
pub fn iostat(prev: &[u64; 17], cur: &[u64; 17], secs: f64) -> Option<IoStat> {
    if secs <= 0.0 {
        return None;
    }
    let p: Vec<u64> = COUNTERS.iter().map(|&i| prev[i]).collect();
    let c: Vec<u64> = COUNTERS.iter().map(|&i| cur[i]).collect();
    let d = counter_deltas(&p, &c)?;
    let (reads, rsect, rms, writes, wsect, wms, ticks, weighted) =
        (d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
    let per = |n: u64| n as f64 / secs;
    let avg = |ms: u64, n: u64| if n == 0 { 0.0 } else { ms as f64 / n as f64 };
    Some(IoStat {
        read_bps: per(rsect * 512),
        write_bps: per(wsect * 512),
        read_iops: per(reads),
        write_iops: per(writes),
        read_await_ms: avg(rms, reads),
        write_await_ms: avg(wms, writes),
        io_util_percent: (ticks as f64 / (secs * 1000.0) * 100.0).min(100.0),
        queue_size: weighted as f64 / (secs * 1000.0),
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub util_percent: f64,
    pub await_ms: f64,
    pub nvme_read_bps: f64,
    pub nvme_write_bps: f64,
}

/// Which rule a sample breaks (HuaTuo's reason types), if any: `ioutil` (or for NVMe, whose util
/// must come with throughput, `read_bps` / `write_bps`), then `read_await`, `write_await`.
pub fn over(s: &IoStat, nvme: bool, t: &Thresholds) -> Option<&'static str> {
    if s.io_util_percent > t.util_percent {
        if !nvme {
            return Some("ioutil");
        }
        if s.read_bps > t.nvme_read_bps {
            return Some("read_bps");
        }
        if s.write_bps > t.nvme_write_bps {
            return Some("write_bps");
        }
    }
    if s.read_await_ms > t.await_ms {
        return Some("read_await");
    }
    if s.write_await_ms > t.await_ms {
        return Some("write_await");
    }
    None
}

/// One disk: fires once when it has been over a threshold for `need` samples in a row, again
/// only after a sample below. A counter rollback starts a new baseline.
#[derive(Debug, Clone, Default)]
pub struct DiskDetector {
    prev: Option<[u64; 17]>,
    over_count: u32,
    fired: bool,
}

impl DiskDetector {
    pub fn sample(
        &mut self,
        cur: &[u64; 17],
        secs: f64,
        nvme: bool,
        t: &Thresholds,
        need: u32,
    ) -> Option<(&'static str, IoStat)> {
        let prev = self.prev.replace(*cur)?;
        let Some(stat) = iostat(&prev, cur, secs) else {
            self.over_count = 0;
            self.fired = false;
            return None;
        };
        let Some(reason) = over(&stat, nvme, t) else {
            self.over_count = 0;
            self.fired = false;
            return None;
        };
        self.over_count = self.over_count.saturating_add(1);
        if self.over_count >= need && !self.fired {
            self.fired = true;
            return Some((reason, stat));
        }
        None
    }
}

#[derive(Default)]
struct State {
    disks: HashMap<String, DiskDetector>,
    /// Names seen that are not whole disks (partitions) or are filtered out; forgotten when
    /// they leave diskstats.
    ignored: HashSet<String>,
    last: Option<Instant>,
}

struct IoTracer {
    cfg: IoTracerConfig,
    thresholds: Thresholds,
    host: HostRoot,
    filter: Filter,
    state: Mutex<State>,
}

fn iostat_json(s: &IoStat) -> serde_json::Value {
    serde_json::json!({
        "read_bps": s.read_bps.round() as u64,
        "write_bps": s.write_bps.round() as u64,
        "read_iops": round2(s.read_iops),
        "write_iops": round2(s.write_iops),
        "read_await_ms": round2(s.read_await_ms),
        "write_await_ms": round2(s.write_await_ms),
        "io_util_percent": round2(s.io_util_percent),
        "queue_size": round2(s.queue_size),
    })
}

/// Kernel encoding of a device number (`MKDEV`: major << 20 | minor).
fn kdev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xfffff)
}

fn kdev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xfffff)
}

/// Paths of files by (kernel dev, inode) — or (device number, 0) for block devices — from the
/// open file descriptors of processes.
#[derive(Default)]
struct PathResolver {
    paths: HashMap<(u32, u64), String>,
}

impl PathResolver {
    fn scan_pid(&mut self, proc_dir: &Path, pid: u32) {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let dir = proc_dir.join(pid.to_string()).join("fd");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for e in entries.flatten() {
            let link = e.path();
            // Follows the magic link to the open file (works for deleted files too).
            let Ok(md) = std::fs::metadata(&link) else {
                continue;
            };
            let key = if md.file_type().is_file() {
                let d = md.dev();
                (kdev(libc::major(d), libc::minor(d)), md.ino())
            } else if md.file_type().is_block_device() {
                let d = md.rdev();
                (kdev(libc::major(d), libc::minor(d)), 0)
            } else {
                continue;
            };
            if self.paths.contains_key(&key) {
                continue;
            }
            if let Ok(target) = std::fs::read_link(&link) {
                self.paths
                    .insert(key, target.to_string_lossy().into_owned());
            }
        }
    }

    /// `/dev/<name>` of a block device number, from `/sys/dev/block/<major>:<minor>`.
    fn add_block_device(&mut self, host: &HostRoot, dev: u32) {
        if self.paths.contains_key(&(dev, 0)) {
            return;
        }
        let (major, minor) = kdev_parts(dev);
        let link = host.sys(&format!("dev/block/{major}:{minor}"));
        if let Some(name) = std::fs::read_link(link)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        {
            self.paths.insert((dev, 0), format!("/dev/{name}"));
        }
    }

    fn get(&self, dev: u32, ino: u64) -> Option<&String> {
        self.paths.get(&(dev, ino))
    }
}

/// The longest IO wait of one thread in a record.
#[derive(Debug, Clone, Serialize)]
pub struct IoStall {
    pub pid: u32,
    pub tid: u32,
    pub cpu: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_hostname: Option<String>,
    pub max_latency_ns: u64,
    /// All its waits over the threshold in the window.
    pub total_latency_ns: u64,
    pub count: u64,
    /// Kernel stack of the longest wait, innermost first.
    pub stack: Vec<String>,
}

/// Every value of a map.
fn read_map<T: bq_bpf::Plain>(map: &dyn MapCore) -> Vec<T> {
    map.keys()
        .filter_map(|k| map.lookup(&k, MapFlags::ANY).ok().flatten())
        .filter_map(|v| bq_bpf::read_record::<T>(&v))
        .collect()
}

/// Every (key, value) of the `io` map.
fn read_io_map(map: &dyn MapCore) -> Vec<(io_key, io_val)> {
    let mut out = Vec::new();
    for k in map.keys() {
        let (Some(key), Ok(Some(v))) = (
            bq_bpf::read_record::<io_key>(&k),
            map.lookup(&k, MapFlags::ANY),
        ) else {
            continue;
        };
        if let Some(val) = bq_bpf::read_record::<io_val>(&v) {
            out.push((key, val));
        }
    }
    out
}

/// One file of one process in a record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileIo {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
    /// `file`, `block_device`, or `unknown` (disk IO whose file could not be told).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The dentry name seen in the kernel (when the path could not be resolved).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub file_name: String,
    pub is_direct: bool,
    pub fs_read_bytes: u64,
    pub fs_write_bytes: u64,
    pub fs_read_ops: u64,
    pub fs_write_ops: u64,
    pub fs_read_avg_ns: u64,
    pub fs_write_avg_ns: u64,
    pub fs_max_ns: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub disk_read_ops: u64,
    pub disk_write_ops: u64,
    pub q2c_avg_ns: u64,
    pub d2c_avg_ns: u64,
    pub q2c_max_ns: u64,
    pub d2c_max_ns: u64,
}

impl FileIo {
    fn weight(&self) -> u64 {
        (self.disk_read_bytes + self.disk_write_bytes)
            .saturating_add(self.fs_read_bytes + self.fs_write_bytes)
    }
}

/// One process in a record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcessIo {
    pub pid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_hostname: Option<String>,
    pub total_fs_read_bytes: u64,
    pub total_fs_write_bytes: u64,
    pub total_disk_read_bytes: u64,
    pub total_disk_write_bytes: u64,
    pub total_file_count: usize,
    pub files: Vec<FileIo>,
    #[serde(skip)]
    pub memcg_id: u64,
}

fn file_io(k: &io_key, v: &io_val, paths: &PathResolver) -> FileIo {
    let (major, minor) = kdev_parts(k.dev);
    let avg = |ns: u64, n: u64| ns.checked_div(n).unwrap_or(0);
    let lat_ops = v.lat_ops[0] + v.lat_ops[1];
    let kind = match k.kind {
        IOT_KIND_FILE => "file",
        IOT_KIND_BLOCKDEV => "block_device",
        _ => "unknown",
    };
    FileIo {
        major,
        minor,
        inode: k.ino,
        kind,
        path: (k.kind != 0)
            .then(|| paths.get(k.dev, k.ino).cloned())
            .flatten(),
        file_name: bq_bpf::c_str(&v.name.map(|c| c as u8)),
        is_direct: v.flags & IOT_FLAG_DIRECT != 0 && v.flags & IOT_FLAG_BUFFERED == 0,
        fs_read_bytes: v.fs_bytes[0],
        fs_write_bytes: v.fs_bytes[1],
        fs_read_ops: v.fs_ops[0],
        fs_write_ops: v.fs_ops[1],
        fs_read_avg_ns: avg(v.fs_ns[0], v.fs_ops[0]),
        fs_write_avg_ns: avg(v.fs_ns[1], v.fs_ops[1]),
        fs_max_ns: v.fs_max_ns[0].max(v.fs_max_ns[1]),
        disk_read_bytes: v.disk_bytes[0],
        disk_write_bytes: v.disk_bytes[1],
        disk_read_ops: v.disk_ops[0],
        disk_write_ops: v.disk_ops[1],
        q2c_avg_ns: avg(v.q2c_ns[0] + v.q2c_ns[1], lat_ops),
        d2c_avg_ns: avg(v.d2c_ns[0] + v.d2c_ns[1], lat_ops),
        q2c_max_ns: v.q2c_max_ns[0].max(v.q2c_max_ns[1]),
        d2c_max_ns: v.d2c_max_ns[0].max(v.d2c_max_ns[1]),
    }
}

/// Groups the map entries by process, ranks processes and their files by bytes (disk + fs),
/// keeps the top `n` processes and `m` files each.
fn summarize(
    entries: &[(io_key, io_val)],
    paths: &PathResolver,
    n: usize,
    m: usize,
) -> (Vec<ProcessIo>, usize) {
    let mut by_pid: HashMap<u32, ProcessIo> = HashMap::new();
    for (k, v) in entries {
        let f = file_io(k, v, paths);
        let p = by_pid.entry(k.pid).or_insert_with(|| ProcessIo {
            pid: k.pid,
            comm: bq_bpf::c_str(&v.comm.map(|c| c as u8)),
            container_id: None,
            container_hostname: None,
            total_fs_read_bytes: 0,
            total_fs_write_bytes: 0,
            total_disk_read_bytes: 0,
            total_disk_write_bytes: 0,
            total_file_count: 0,
            files: Vec::new(),
            memcg_id: v.memcg_id,
        });
        p.total_fs_read_bytes += f.fs_read_bytes;
        p.total_fs_write_bytes += f.fs_write_bytes;
        p.total_disk_read_bytes += f.disk_read_bytes;
        p.total_disk_write_bytes += f.disk_write_bytes;
        p.total_file_count += 1;
        p.files.push(f);
    }
    let total = by_pid.len();
    let weight = |p: &ProcessIo| {
        (p.total_disk_read_bytes + p.total_disk_write_bytes)
            .saturating_add(p.total_fs_read_bytes + p.total_fs_write_bytes)
    };
    let mut procs: Vec<ProcessIo> = by_pid.into_values().collect();
    procs.sort_by(|a, b| weight(b).cmp(&weight(a)).then(a.pid.cmp(&b.pid)));
    procs.truncate(n);
    for p in &mut procs {
        p.files
            .sort_by(|a, b| b.weight().cmp(&a.weight()).then(a.inode.cmp(&b.inode)));
        p.files.truncate(m);
    }
    (procs, total)
}

/// `(first minor count)` of a disk from `/sys/block/<name>/range`; 1 when absent.
fn disk_minors(host: &HostRoot, name: &str) -> u32 {
    std::fs::read_to_string(host.sys(&format!("block/{name}/range")))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(1)
}

impl AutoTracer for IoTracer {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, _ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let path = self.host.proc("diskstats");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let disks = diskstats::parse(&text)?;
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let secs = st
            .last
            .replace(now)
            .map(|t| now.duration_since(t).as_secs_f64())
            .unwrap_or(0.0);
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let names: HashSet<&str> = disks.iter().map(|d| d.name).collect();
        st.ignored.retain(|k| names.contains(k.as_str()));
        for d in &disks {
            if st.ignored.contains(d.name) {
                continue;
            }
            seen.insert(d.name);
            if !st.disks.contains_key(d.name) {
                // Whole disks only (partitions add up in their disk), and the configured filter.
                let whole = self.host.sys(&format!("block/{}", d.name)).exists();
                if !whole || !self.filter.matches(d.name) {
                    st.ignored.insert(d.name.to_string());
                    continue;
                }
            }
            let det = st.disks.entry(d.name.to_string()).or_default();
            let nvme = d.name.starts_with("nvme");
            let Some((reason, stat)) = det.sample(
                &d.f,
                secs,
                nvme,
                &self.thresholds,
                self.cfg.consecutive_samples,
            ) else {
                continue;
            };
            let summary = format!(
                "{} {}: util {:.1}%, read {:.1} MiB/s await {:.1} ms, write {:.1} MiB/s await {:.1} ms, queue {:.1}",
                d.name,
                reason,
                stat.io_util_percent,
                stat.read_bps / MIB,
                stat.read_await_ms,
                stat.write_bps / MIB,
                stat.write_await_ms,
                stat.queue_size
            );
            out.push(Anomaly {
                target: d.name.to_string(),
                container: None,
                data: serde_json::json!({
                    "reason_snapshot": {
                        "type": reason,
                        "device": d.name,
                        "major_num": d.major,
                        "minor_num": d.minor,
                        "iostatus": iostat_json(&stat),
                        "summary": summary,
                    },
                    "thresholds": {
                        "util_percent": self.cfg.util_threshold_percent,
                        "await_ms": self.cfg.await_threshold_ms,
                        "nvme_read_mib_per_sec": self.cfg.nvme_read_threshold_mib_per_sec,
                        "nvme_write_mib_per_sec": self.cfg.nvme_write_threshold_mib_per_sec,
                        "consecutive_samples": self.cfg.consecutive_samples,
                    },
                }),
            });
        }
        // Disks that went away: forget them (a new one of that name starts a new baseline).
        st.disks.retain(|k, _| seen.contains(k.as_str()));
        Ok(out)
    }

    fn capture(&self, anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let snap = &anomaly.data["reason_snapshot"];
        let (Some(major), Some(minor), Some(device)) = (
            snap["major_num"].as_u64(),
            snap["minor_num"].as_u64(),
            snap["device"].as_str(),
        ) else {
            bail!("anomaly without a device: {}", anomaly.data);
        };
        let minors = disk_minors(&self.host, device);

        bq_bpf::route_libbpf_log();
        let mut storage = MaybeUninit::uninit();
        let mut open = IotracerSkelBuilder::default()
            .open(&mut storage)
            .context("opening the iotracer BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("iotracer BPF object has no .rodata")?;
        rodata.target_major = major as u32;
        rodata.target_first_minor = minor as u32;
        rodata.target_minors = minors;
        rodata.watch_all = 0;
        rodata.o_direct = libc::O_DIRECT as u32;
        rodata.stall_threshold_ns = self.cfg.io_stall_threshold_ms.saturating_mul(1_000_000);
        rodata.nr_read = libc::SYS_read;
        rodata.nr_write = libc::SYS_write;
        rodata.nr_pread64 = libc::SYS_pread64;
        rodata.nr_pwrite64 = libc::SYS_pwrite64;
        rodata.nr_readv = libc::SYS_readv;
        rodata.nr_writev = libc::SYS_writev;
        rodata.nr_preadv = libc::SYS_preadv;
        rodata.nr_pwritev = libc::SYS_pwritev;
        rodata.nr_preadv2 = libc::SYS_preadv2;
        rodata.nr_pwritev2 = libc::SYS_pwritev2;
        let skel = open.load().context("loading the iotracer BPF object")?;
        let mut links = Vec::new();
        for prog in skel.object().progs_mut() {
            let name = prog.name().to_string_lossy().into_owned();
            links.push(prog.attach().with_context(|| format!("attaching {name}"))?);
        }

        let proc_dir = self.host.proc("");
        let mut paths = PathResolver::default();
        let start = Instant::now();
        let window = Duration::from_secs(self.cfg.capture_secs);
        loop {
            let left = window.saturating_sub(start.elapsed());
            if left.is_zero() || !ctx.sleep(left.min(Duration::from_secs(1))) {
                break;
            }
            // Resolve paths while the processes still hold their files open: scan the fds of
            // each process that has an entry with an unresolved file.
            let pids: HashSet<u32> = skel
                .maps
                .io
                .keys()
                .filter_map(|k| bq_bpf::read_record::<io_key>(&k))
                .filter(|k| k.kind == IOT_KIND_FILE && paths.get(k.dev, k.ino).is_none())
                .map(|k| k.pid)
                .collect();
            for pid in pids.into_iter().take(256) {
                paths.scan_pid(&proc_dir, pid);
            }
        }
        drop(links);
        let elapsed = start.elapsed();
        let entries = read_io_map(&skel.maps.io);
        for (k, _) in &entries {
            if k.kind == IOT_KIND_BLOCKDEV {
                paths.add_block_device(&self.host, k.dev);
            } else if k.kind == IOT_KIND_FILE && paths.get(k.dev, k.ino).is_none() {
                paths.scan_pid(&proc_dir, k.pid);
            }
        }
        let stat = |slot: u32| -> u64 {
            skel.maps
                .stats
                .lookup(&slot.to_ne_bytes(), MapFlags::ANY)
                .ok()
                .flatten()
                .and_then(|v| v.get(..8).and_then(|b| b.try_into().ok()))
                .map(u64::from_ne_bytes)
                .unwrap_or(0)
        };
        let (mut procs, total) = summarize(
            &entries,
            &paths,
            self.cfg.top_processes,
            self.cfg.top_files_per_process,
        );
        for p in &mut procs {
            if let Some(c) = ctx.containers().by_memcg(p.memcg_id) {
                p.container_id = Some(c.id.clone());
                p.container_hostname = Some(c.hostname.clone());
            }
        }
        let mut stalls: Vec<io_stall> = read_map::<io_stall>(&skel.maps.stalls);
        let stall_threads = stalls.len();
        stalls.sort_by(|a, b| b.max_ns.cmp(&a.max_ns).then(a.tid.cmp(&b.tid)));
        stalls.truncate(self.cfg.top_io_stalls);
        let stalls: Vec<IoStall> = stalls
            .iter()
            .map(|s| {
                let container = ctx.containers().by_memcg(s.memcg_id);
                let n = (s.stack_bytes.max(0) as usize / 8).min(s.stack.len());
                IoStall {
                    pid: s.pid,
                    tid: s.tid,
                    cpu: s.cpu,
                    comm: bq_bpf::c_str(&s.comm.map(|c| c as u8)),
                    container_id: container.as_ref().map(|c| c.id.clone()),
                    container_hostname: container.as_ref().map(|c| c.hostname.clone()),
                    max_latency_ns: s.max_ns,
                    total_latency_ns: s.total_ns,
                    count: s.count,
                    stack: ctx.symbolizer().stack(&s.stack[..n]),
                }
            })
            .collect();
        Ok(serde_json::json!({
            "capture_duration_ms": elapsed.as_millis() as u64,
            "process_count": total,
            "process_file_io_stats": procs,
            "io_stall_threshold_ns": self.cfg.io_stall_threshold_ms.saturating_mul(1_000_000),
            "io_stall_threads": stall_threads,
            "io_schedule_stalls": stalls,
            "lost": {
                "entries_map_full": stat(IOT_STAT_MAP_FULL),
                "requests_without_queued_bio": stat(IOT_STAT_NO_BIO),
                "syscalls_untracked": stat(IOT_STAT_INFLIGHT_FULL),
                "io_stalls_map_full": stat(IOT_STAT_STALLS_FULL),
            },
        }))
    }
}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for io_key {}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for io_val {}

// SAFETY: as above.
unsafe impl crate::bpf::Plain for io_stall {}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Thresholds = Thresholds {
        util_percent: 90.0,
        await_ms: 100.0,
        nvme_read_bps: 2000.0 * MIB,
        nvme_write_bps: 1500.0 * MIB,
    };

    /// Counters of one diskstats line (after the name), from text as the kernel prints it.
    fn counters(line: &str) -> [u64; 17] {
        diskstats::parse(line).unwrap()[0].f
    }

    /// A recorded sda sequence, 5 s apart: idle, saturated (util 100%), saturated, saturated,
    /// idle, saturated, saturated.
    const SDA: [&str; 7] = [
        "8 0 sda 1000 0 80000 2000 500 0 40000 1000 0 3000 3000 0 0 0 0 0 0",
        "8 0 sda 1010 0 80800 2020 510 0 40800 1020 0 3100 3040 0 0 0 0 0 0",
        "8 0 sda 1510 0 160800 4020 1510 0 200800 5020 9 8100 13040 0 0 0 0 0 0",
        "8 0 sda 2010 0 240800 6020 2510 0 360800 9020 8 13100 23040 0 0 0 0 0 0",
        "8 0 sda 2510 0 320800 8020 3510 0 520800 13020 9 18050 33040 0 0 0 0 0 0",
        "8 0 sda 2520 0 321600 8040 3520 0 521600 13040 0 18150 33080 0 0 0 0 0 0",
        "8 0 sda 3020 0 401600 10040 4520 0 681600 17040 9 23150 43080 0 0 0 0 0 0",
    ];

    fn run(lines: &[&str], nvme: bool, need: u32) -> Vec<Option<&'static str>> {
        let mut d = DiskDetector::default();
        lines
            .iter()
            .map(|l| d.sample(&counters(l), 5.0, nvme, &T, need).map(|(r, _)| r))
            .collect()
    }

    #[test]
    fn computes_rates_from_two_samples() {
        let s = iostat(&counters(SDA[1]), &counters(SDA[2]), 5.0).unwrap();
        assert_eq!(s.read_bps, 80_000.0 * 512.0 / 5.0);
        assert_eq!(s.write_iops, 200.0);
        assert_eq!(s.read_await_ms, 4.0);
        assert_eq!(s.write_await_ms, 4.0);
        assert_eq!(s.io_util_percent, 100.0);
        assert_eq!(s.queue_size, 2.0);
        assert!(iostat(&counters(SDA[1]), &counters(SDA[2]), 0.0).is_none());
    }

    #[test]
    fn fires_after_two_consecutive_samples_once_per_episode() {
        // Baseline, calm, over (1), over (2: fire), still over (same episode), calm, over (1),
        // over (2: fires again).
        assert_eq!(
            run(&SDA, false, 2),
            vec![None, None, None, Some("ioutil"), None, None, None]
        );
        let mut seq = SDA.to_vec();
        seq.push("8 0 sda 3520 0 481600 12040 5520 0 841600 21040 9 28150 53080 0 0 0 0 0 0");
        assert_eq!(run(&seq, false, 2)[7], Some("ioutil"));
        // One sample over is not enough; with consecutive_samples = 1 it is.
        assert_eq!(run(&SDA[..3], false, 2), vec![None; 3]);
        assert_eq!(run(&SDA[..3], false, 1)[2], Some("ioutil"));
    }

    #[test]
    fn nvme_util_needs_throughput_and_await_fires_alone() {
        // Busy 100% at ~8 MiB/s: an NVMe disk is not saturated by that.
        assert_eq!(run(&SDA, true, 2), vec![None; 7]);
        // Slow requests: 10 reads taking 2 s each on a mostly idle disk.
        let slow = [
            "259 0 nvme0n1 100 0 800 100 0 0 0 0 0 100 100 0 0 0 0 0 0",
            "259 0 nvme0n1 110 0 880 20100 0 0 0 0 0 600 20100 0 0 0 0 0 0",
            "259 0 nvme0n1 120 0 960 40100 0 0 0 0 0 1100 40100 0 0 0 0 0 0",
        ];
        assert_eq!(run(&slow, true, 2), vec![None, None, Some("read_await")]);
        let s = iostat(&counters(slow[0]), &counters(slow[1]), 5.0).unwrap();
        assert_eq!(over(&s, true, &T), Some("read_await"));
        // NVMe busy and fast enough.
        let fast = IoStat {
            read_bps: 2100.0 * MIB,
            write_bps: 0.0,
            read_iops: 0.0,
            write_iops: 0.0,
            read_await_ms: 0.1,
            write_await_ms: 0.0,
            io_util_percent: 99.0,
            queue_size: 1.0,
        };
        assert_eq!(over(&fast, true, &T), Some("read_bps"));
        assert_eq!(over(&fast, false, &T), Some("ioutil"));
    }

    #[test]
    fn counter_rollback_starts_a_new_baseline() {
        // Over once, then the counters reset (device re-created): the rollback sample is a new
        // baseline, so the next over sample counts as the first, not the second.
        let seq = [
            SDA[0],
            SDA[2],
            "8 0 sda 10 0 800 20 5 0 400 10 0 30 30 0 0 0 0 0 0",
            "8 0 sda 510 0 80800 2020 1005 0 160400 4010 9 5030 10030 0 0 0 0 0 0",
            "8 0 sda 1010 0 160800 4020 2005 0 320400 8010 9 10030 20030 0 0 0 0 0 0",
        ];
        assert_eq!(
            run(&seq, false, 2),
            vec![None, None, None, None, Some("ioutil")]
        );
    }

    fn key(pid: u32, dev: u32, ino: u64, kind: u32) -> io_key {
        io_key {
            pid,
            dev,
            ino,
            kind,
            ..Default::default()
        }
    }

    fn val(comm: &str, disk_write: u64, fs_write: u64) -> io_val {
        let mut v = io_val::default();
        for (i, b) in comm.bytes().enumerate() {
            v.comm[i] = b as _;
        }
        v.disk_bytes[1] = disk_write;
        v.disk_ops[1] = 1;
        v.fs_bytes[1] = fs_write;
        v.fs_ops[1] = 2;
        v.fs_ns[1] = 3000;
        v.q2c_ns[1] = 500;
        v.d2c_ns[1] = 300;
        v.lat_ops[1] = 1;
        v.flags = IOT_FLAG_DIRECT;
        v
    }

    #[test]
    fn ranks_processes_and_files_by_bytes() {
        let dev = kdev(7, 3);
        let entries = vec![
            (key(10, dev, 12, IOT_KIND_FILE), val("dd", 100, 100)),
            (key(10, dev, 13, IOT_KIND_FILE), val("dd", 5000, 5000)),
            (key(20, dev, 14, IOT_KIND_FILE), val("cp", 1, 1)),
            (key(30, 0, 0, 0), val("kworker/1:0", 900, 0)),
        ];
        let mut paths = PathResolver::default();
        paths.paths.insert((dev, 13), "/mnt/big".into());
        let (procs, total) = summarize(&entries, &paths, 2, 1);
        assert_eq!(total, 3);
        assert_eq!(procs.len(), 2);
        assert_eq!((procs[0].pid, procs[0].comm.as_str()), (10, "dd"));
        assert_eq!(procs[0].total_file_count, 2);
        assert_eq!(procs[0].total_disk_write_bytes, 5100);
        let f = &procs[0].files[..];
        assert_eq!(f.len(), 1);
        assert_eq!((f[0].major, f[0].minor, f[0].inode), (7, 3, 13));
        assert_eq!(f[0].path.as_deref(), Some("/mnt/big"));
        assert!(f[0].is_direct);
        assert_eq!(
            (f[0].fs_write_avg_ns, f[0].q2c_avg_ns, f[0].d2c_avg_ns),
            (1500, 500, 300)
        );
        assert_eq!(procs[1].comm, "kworker/1:0");
        assert_eq!(procs[1].files[0].kind, "unknown");
    }
}
