//! The console's host vitals: CPU, memory, PSI and drops/s sampled every few seconds into a
//! fixed ring that holds the last hour. Nothing is kept on disk; the ring's size never changes
//! after start (a few tens of KB).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::host::HostRoot;
use crate::procfs::{meminfo, pressure, stat};

pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// One hour of samples.
pub const CAPACITY: usize = 720;

/// One sample; `None` where the file was missing or unreadable (no PSI on this kernel…).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Sample {
    /// Unix milliseconds.
    pub t: i64,
    pub cpu_percent: Option<f64>,
    pub cpu_system_percent: Option<f64>,
    pub memory_used_percent: Option<f64>,
    pub psi_cpu_some_avg10: Option<f64>,
    pub psi_memory_some_avg10: Option<f64>,
    pub psi_io_some_avg10: Option<f64>,
    /// Packet drops per second, as dropwatch counted them.
    pub drops_per_sec: Option<f64>,
}

/// What the previous sample needs to keep for rates.
#[derive(Debug, Default)]
struct Last {
    cpu: Option<stat::CpuTimes>,
    drops: Option<(i64, u64)>,
}

pub struct Vitals {
    host: HostRoot,
    ring: Mutex<(VecDeque<Sample>, Last)>,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Vitals {
    pub fn new(host: HostRoot) -> Vitals {
        Vitals {
            host,
            ring: Mutex::new((VecDeque::with_capacity(CAPACITY), Last::default())),
        }
    }

    /// Bytes the ring holds at most (the budget is 2 MB).
    pub fn capacity_bytes() -> usize {
        CAPACITY * std::mem::size_of::<Sample>() + std::mem::size_of::<Vitals>()
    }

    /// Takes one sample now; `drops_total` is dropwatch's count so far, if it runs.
    pub fn sample(&self, now_ms: i64, drops_total: Option<u64>) {
        let read = |rel: &str| std::fs::read_to_string(self.host.proc(rel)).ok();
        let cpu = read("stat").and_then(|t| stat::parse_total(&t).ok());
        let memory_used_percent = read("meminfo").and_then(|t| {
            let total = meminfo::bytes(&t, "MemTotal").ok()? as f64;
            let avail = meminfo::bytes(&t, "MemAvailable").ok()? as f64;
            (total > 0.0).then(|| round1((1.0 - avail / total) * 100.0))
        });
        let psi = |rel: &str| {
            read(rel)
                .and_then(|t| pressure::find(&t, "some").ok())
                .map(|l| round1(l.avg[0]))
        };
        let mut guard = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let (ring, last) = &mut *guard;
        let mut s = Sample {
            t: now_ms,
            memory_used_percent,
            psi_cpu_some_avg10: psi("pressure/cpu"),
            psi_memory_some_avg10: psi("pressure/memory"),
            psi_io_some_avg10: psi("pressure/io"),
            ..Default::default()
        };
        if let (Some(prev), Some(cur)) = (&last.cpu, &cpu) {
            let total = cur.total().saturating_sub(prev.total()) as f64;
            let idle = (cur.0[3] + cur.0[4]).saturating_sub(prev.0[3] + prev.0[4]) as f64;
            if total > 0.0 {
                s.cpu_percent = Some(round1((1.0 - idle / total) * 100.0));
                s.cpu_system_percent = Some(round1(
                    cur.sys().saturating_sub(prev.sys()) as f64 / total * 100.0,
                ));
            }
        }
        if let (Some((t0, d0)), Some(d1)) = (last.drops, drops_total) {
            let secs = (now_ms - t0) as f64 / 1000.0;
            if secs > 0.0 {
                s.drops_per_sec = Some(round1(d1.saturating_sub(d0) as f64 / secs));
            }
        }
        last.cpu = cpu;
        last.drops = drops_total.map(|d| (now_ms, d));
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(s);
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        let guard = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.iter().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_two_samples_and_the_ring_stays_bounded() {
        let dir = std::env::temp_dir().join(format!("bq-vitals-{}", std::process::id()));
        let proc_dir = dir.join("proc");
        std::fs::create_dir_all(proc_dir.join("pressure")).unwrap();
        let write_stat = |user: u64, sys: u64, idle: u64| {
            std::fs::write(
                proc_dir.join("stat"),
                format!("cpu  {user} 0 {sys} {idle} 0 0 0 0 0 0\ncpu0 {user} 0 {sys} {idle} 0 0 0 0 0 0\n"),
            )
            .unwrap();
        };
        std::fs::write(
            proc_dir.join("meminfo"),
            "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    250 kB\n",
        )
        .unwrap();
        std::fs::write(
            proc_dir.join("pressure/memory"),
            "some avg10=12.50 avg60=1.00 avg300=0.00 total=5\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=1\n",
        )
        .unwrap();
        let v = Vitals::new(HostRoot::new(&dir));
        write_stat(100, 100, 800);
        v.sample(1_000, Some(10));
        write_stat(150, 125, 825);
        v.sample(6_000, Some(60));
        let s = v.samples();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].cpu_percent, None);
        assert_eq!(s[1].cpu_percent, Some(75.0));
        assert_eq!(s[1].cpu_system_percent, Some(25.0));
        assert_eq!(s[1].memory_used_percent, Some(75.0));
        assert_eq!(s[1].psi_memory_some_avg10, Some(12.5));
        assert_eq!(s[1].psi_cpu_some_avg10, None);
        assert_eq!(s[1].drops_per_sec, Some(10.0));
        for i in 0..CAPACITY + 10 {
            v.sample(10_000 + i as i64, None);
        }
        assert_eq!(v.samples().len(), CAPACITY);
        assert!(Vitals::capacity_bytes() < 2 << 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
