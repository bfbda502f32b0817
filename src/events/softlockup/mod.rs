//! `softlockup`: "BUG: soft lockup - CPU#N stuck for Ns!" on any CPU.
//!
//! There is no tracepoint for it (and no kprobe on `add_taint` here), so the tracer reads the
//! kernel log from `/dev/kmsg`, keeps kernel-facility messages only (a user process writing to
//! /dev/kmsg gets another facility, so it cannot forge a report), and assembles the header, the
//! `RIP:` line and the call trace into one record. Optional `extra_patterns` record other
//! kernel log lines too (RCU stalls, hard lockups…), rate-limited.

pub mod kmsg;

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::config::{check_range, parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::record::ContainerFields;
use crate::tracer::{
    BuildContext, Capability, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

use kmsg::{Lockup, LockupParser};

/// A report still open this long after its last line is complete (the kernel prints one
/// report in a burst).
const REPORT_IDLE: Duration = Duration::from_millis(500);
/// How long the reader sleeps with nothing logged before it looks again (a bound: a record
/// or the stop wakes it at once).
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Longest /dev/kmsg record (the kernel's limit is 1024 bytes of text plus the dictionary).
const RECORD_BUF: usize = 8192;
const MAX_EXTRA_PATTERNS: usize = 32;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "softlockup",
    mode: Mode::Event,
    description: "soft lockups from the kernel log (/dev/kmsg, kernel facility only): cpu, task, stuck time, RIP, call trace",
    requires: &[
        // /dev/kmsg refuses readers without it under kernel.dmesg_restrict=1.
        Requirement::Caps(&[Capability::Syslog]),
        Requirement::HostFile("dev/kmsg"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftlockupConfig {
    /// Kernel log lines containing any of these strings are recorded too
    /// (`tracer_data.kind = "kernel_log"`).
    pub extra_patterns: Vec<String>,
    /// `extra_patterns` records per second at most; the rest are counted as suppressed.
    pub max_pattern_records_per_second: u32,
}

impl Default for SoftlockupConfig {
    fn default() -> Self {
        SoftlockupConfig {
            extra_patterns: Vec::new(),
            max_pattern_records_per_second: 10,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: SoftlockupConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_pattern_records_per_second", ctx.section),
        cfg.max_pattern_records_per_second,
        1,
        1000,
    )?;
    if cfg.extra_patterns.len() > MAX_EXTRA_PATTERNS {
        return Err(ConfigError(format!(
            "{}.extra_patterns: at most {MAX_EXTRA_PATTERNS} patterns, found {}",
            ctx.section,
            cfg.extra_patterns.len()
        )));
    }
    if cfg.extra_patterns.iter().any(|p| p.trim().is_empty()) {
        return Err(ConfigError(format!(
            "{}.extra_patterns: a pattern is empty (it would match every line)",
            ctx.section
        )));
    }
    Ok(Tracer::Event(Box::new(Softlockup {
        cfg,
        lockups: AtomicU64::new(0),
        kernel_records: AtomicU64::new(0),
        user_records: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        pattern_matches: AtomicU64::new(0),
        suppressed: AtomicU64::new(0),
        last_seq: AtomicU64::new(0),
    })))
}

pub struct Softlockup {
    cfg: SoftlockupConfig,
    lockups: AtomicU64,
    kernel_records: AtomicU64,
    user_records: AtomicU64,
    lost: AtomicU64,
    pattern_matches: AtomicU64,
    suppressed: AtomicU64,
    /// Sequence number of the last record read + 1 (0: nothing read yet), so a restarted run
    /// continues where the last one stopped instead of skipping to the end.
    last_seq: AtomicU64,
}

#[derive(Debug, Serialize)]
struct LockupData {
    kind: &'static str,
    cpu: u32,
    pid: u32,
    comm: String,
    stuck_seconds: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    rip: Option<String>,
    /// Call trace, innermost first (unreliable `?` frames left out).
    stack: Vec<String>,
    /// The report as the kernel printed it.
    kernel_log: Vec<String>,
    /// /proc/sys/kernel/tainted when the report was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_tainted: Option<u64>,
}

#[derive(Debug, Serialize)]
struct PatternData {
    kind: &'static str,
    pattern: String,
    message: String,
    level: u8,
    seq: u64,
}

/// Monotonic-clock (printk clock) microseconds → wall-clock nanoseconds.
fn mono_to_wall_offset_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    crate::record::now_ns() - (ts.tv_sec * 1_000_000_000 + ts.tv_nsec)
}

/// Reads kmsg records without blocking; `Ok(None)` when there is nothing more for now.
fn read_record(
    file: &mut File,
    buf: &mut [u8],
    lost: &AtomicU64,
) -> std::io::Result<Option<usize>> {
    loop {
        match file.read(buf) {
            Ok(n) => return Ok(Some(n)),
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => return Ok(None),
                Some(libc::EINTR) => continue,
                // The ring overwrote records we had not read yet; the next read resumes.
                Some(libc::EPIPE) => {
                    lost.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => return Err(e),
            },
        }
    }
}

struct PatternLimiter {
    second: Instant,
    passed: u32,
}

impl EventTracer for Softlockup {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let path = ctx.host().dev("kmsg");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    TracerError::Unsupported(format!("{} does not exist", path.display()))
                }
                // Without privilege this never changes by itself: `inactive` once, not an
                // ERROR every restart interval.
                std::io::ErrorKind::PermissionDenied => TracerError::Unsupported(format!(
                    "no permission to read {} (needs root or CAP_SYSLOG when kernel.dmesg_restrict = 1)",
                    path.display()
                )),
                _ => TracerError::Failed(
                    anyhow::Error::new(e).context(format!("opening {}", path.display())),
                ),
            })?;
        let resume_after = self.last_seq.load(Ordering::Relaxed);
        let whence = if resume_after == 0 {
            libc::SEEK_END
        } else {
            libc::SEEK_SET
        };
        // SAFETY: lseek on an fd we own; /dev/kmsg supports SEEK_SET/SEEK_END with offset 0.
        if unsafe { libc::lseek(file.as_raw_fd(), 0, whence) } < 0 {
            return Err(anyhow::Error::new(std::io::Error::last_os_error())
                .context("seeking in /dev/kmsg")
                .into());
        }
        ctx.attached();

        let clock_offset = mono_to_wall_offset_ns();
        let mut parser = LockupParser::default();
        let mut last_line = Instant::now();
        let mut limiter = PatternLimiter {
            second: Instant::now(),
            passed: 0,
        };
        let mut buf = vec![0u8; RECORD_BUF];
        while !ctx.stopping() {
            // An open report is closed REPORT_IDLE after its last line; otherwise sleep until
            // the kernel logs something (or the stop).
            let wait = if parser.pending() {
                REPORT_IDLE.saturating_sub(last_line.elapsed()) + Duration::from_millis(10)
            } else {
                IDLE_WAIT
            };
            ctx.wait_readable(file.as_fd(), wait);
            while let Some(n) =
                read_record(&mut file, &mut buf, &self.lost).context("reading /dev/kmsg")?
            {
                let Some(rec) = kmsg::parse_record(&buf[..n]) else {
                    continue;
                };
                if rec.seq < resume_after {
                    continue;
                }
                self.last_seq.store(rec.seq + 1, Ordering::Relaxed);
                if !rec.from_kernel() {
                    self.user_records.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                self.kernel_records.fetch_add(1, Ordering::Relaxed);
                last_line = Instant::now();
                if let Some(done) = parser.feed(&rec.message, rec.ts_us) {
                    self.save_lockup(ctx, done, clock_offset);
                }
                self.match_patterns(ctx, &rec, clock_offset, &mut limiter);
            }
            if parser.pending() && last_line.elapsed() >= REPORT_IDLE {
                if let Some(done) = parser.flush() {
                    self.save_lockup(ctx, done, clock_offset);
                }
            }
        }
        if let Some(done) = parser.flush() {
            self.save_lockup(ctx, done, clock_offset);
        }
        Ok(())
    }

    fn collect(
        &self,
        _ctx: &crate::tracer::ScrapeContext,
        out: &mut MetricSink,
    ) -> anyhow::Result<()> {
        out.single(
            "events_total",
            "Soft lockups the kernel reported.",
            Kind::Counter,
            self.lockups.load(Ordering::Relaxed) as f64,
        );
        // HuaTuo's name for the same count.
        out.single(
            "total",
            "Soft lockups the kernel reported.",
            Kind::Counter,
            self.lockups.load(Ordering::Relaxed) as f64,
        );
        out.family(
            "kmsg_records_total",
            "Kernel log records read from /dev/kmsg, by source (kernel, or user: written by a process, ignored).",
            Kind::Counter,
        )
        .sample(
            &[("source", "kernel")],
            self.kernel_records.load(Ordering::Relaxed) as f64,
        )
        .sample(
            &[("source", "user")],
            self.user_records.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "kmsg_lost_total",
            "Times the kernel log ring overwrote records before they were read.",
            Kind::Counter,
            self.lost.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "pattern_matches_total",
            "Kernel log lines matching extra_patterns.",
            Kind::Counter,
            self.pattern_matches.load(Ordering::Relaxed) as f64,
        );
        out.single(
            "suppressed_total",
            "extra_patterns matches not recorded because of the rate limit.",
            Kind::Counter,
            self.suppressed.load(Ordering::Relaxed) as f64,
        );
        Ok(())
    }
}

/// The container of a running task: its memory cgroup (from /proc) looked up by inode.
fn task_container(ctx: &RunContext, pid: u32) -> Option<ContainerFields> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(ctx.host().proc(&format!("{pid}/cgroup"))).ok()?;
    let path = crate::procfs::pid_cgroup::path_of(&text, "memory")?.to_string();
    let root = ctx.containers().memory_root()?;
    let id = std::fs::metadata(root.join(path.trim_start_matches('/')))
        .map(|m| m.ino())
        .unwrap_or(0);
    ctx.container_of_memcg(id, Some(&path))
}

impl Softlockup {
    fn save_lockup(&self, ctx: &RunContext, l: Lockup, clock_offset: i64) {
        self.lockups.fetch_add(1, Ordering::Relaxed);
        // The stuck task's container, if it still exists (it usually does: it is spinning).
        let container = task_container(ctx, l.header.pid);
        let data = LockupData {
            kind: "soft_lockup",
            cpu: l.header.cpu,
            pid: l.header.pid,
            comm: l.header.comm,
            stuck_seconds: l.header.stuck_seconds,
            rip: l.rip,
            stack: l.stack,
            kernel_log: l.lines,
            kernel_tainted: std::fs::read_to_string(ctx.host().proc("sys/kernel/tainted"))
                .ok()
                .and_then(|s| s.trim().parse().ok()),
        };
        ctx.save_data_at(l.ts_us as i64 * 1000 + clock_offset, container, &data);
    }

    fn match_patterns(
        &self,
        ctx: &RunContext,
        rec: &kmsg::KmsgRecord,
        clock_offset: i64,
        limiter: &mut PatternLimiter,
    ) {
        let Some(pattern) = self
            .cfg
            .extra_patterns
            .iter()
            .find(|p| rec.message.contains(p.as_str()))
        else {
            return;
        };
        self.pattern_matches.fetch_add(1, Ordering::Relaxed);
        if limiter.second.elapsed() >= Duration::from_secs(1) {
            limiter.second = Instant::now();
            limiter.passed = 0;
        }
        if limiter.passed >= self.cfg.max_pattern_records_per_second {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        limiter.passed += 1;
        let data = PatternData {
            kind: "kernel_log",
            pattern: pattern.clone(),
            message: rec.message.clone(),
            level: rec.level,
            seq: rec.seq,
        };
        ctx.save_data_at(rec.ts_us as i64 * 1000 + clock_offset, None, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_validated() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.softlockup",
        };
        let t: toml::Table = toml::from_str("extra_patterns = [\"\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.softlockup.extra_patterns"), "{err}");
        let t: toml::Table = toml::from_str("max_pattern_records_per_second = 0").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0
                .contains("events.softlockup.max_pattern_records_per_second"),
            "{err}"
        );
        let t: toml::Table =
            toml::from_str("extra_patterns = [\"rcu_sched detected stalls\"]").unwrap();
        assert!(build(&bctx, &t).is_ok());
    }
}
