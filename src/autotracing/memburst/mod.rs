//! `memburst`: the host's anonymous memory (`Active(anon)` + `Inactive(anon)`) grows past a
//! multiple of its level a window ago and past a share of total memory → the top processes by RSS
//! growth over that window, with their containers, and the memory cgroup stats of those
//! containers.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cgroupfs::Layout;
use crate::config::{check_range, parse_section, ConfigResult};
use crate::container::container_of_cgroup_path;
use crate::host::HostRoot;
use crate::procfs::{meminfo, page_size, pid_cgroup, pid_statm};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Mode, Requirement, RunContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memburst",
    mode: Mode::Autotracing,
    description: "anonymous memory burst (grew past a multiple of its level a window ago): top processes by RSS growth",
    requires: &[Requirement::HostFile("proc/meminfo")],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemBurstConfig {
    pub interval_secs: u64,
    pub cooldown_secs: u64,
    /// Samples in the sliding window (the level compared with is the oldest one).
    pub window_samples: usize,
    /// Fires when anon memory grew by at least this much over the window (100 = doubled)…
    pub burst_percent: f64,
    /// …and anon memory is at least this share of MemTotal.
    pub anon_threshold_percent: f64,
    pub top_processes: usize,
}

impl Default for MemBurstConfig {
    fn default() -> Self {
        MemBurstConfig {
            interval_secs: 10,
            cooldown_secs: 1800,
            window_samples: 60,
            burst_percent: 100.0,
            anon_threshold_percent: 70.0,
            top_processes: 10,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: MemBurstConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(&key("window_samples"), cfg.window_samples, 2, 10_000)?;
    check_range(&key("burst_percent"), cfg.burst_percent, 1.0, 100_000.0)?;
    check_range(
        &key("anon_threshold_percent"),
        cfg.anon_threshold_percent,
        0.0,
        100.0,
    )?;
    check_range(&key("top_processes"), cfg.top_processes, 1, 1000)?;
    Ok(Tracer::Autotracing(Box::new(MemBurst {
        state: Mutex::new(State {
            detector: BurstDetector::new(&cfg),
            snapshots: VecDeque::new(),
        }),
        host: ctx.host.clone(),
        cfg,
    })))
}

/// (MemTotal, anon = Active(anon) + Inactive(anon)) in bytes from `/proc/meminfo` (the other
/// lines are not looked at).
pub fn total_and_anon(meminfo_text: &str) -> Result<(u64, u64)> {
    let bytes = |key| meminfo::bytes(meminfo_text, key);
    Ok((
        bytes("MemTotal")?,
        bytes("Active(anon)")?.saturating_add(bytes("Inactive(anon)")?),
    ))
}

/// Sliding window of anon levels with a rising edge.
#[derive(Debug, Clone)]
pub struct BurstDetector {
    window: VecDeque<u64>,
    len: usize,
    factor: f64,
    share: f64,
    active: bool,
}

impl BurstDetector {
    pub fn new(cfg: &MemBurstConfig) -> BurstDetector {
        BurstDetector {
            window: VecDeque::new(),
            len: cfg.window_samples.max(2),
            factor: 1.0 + cfg.burst_percent / 100.0,
            share: cfg.anon_threshold_percent / 100.0,
            active: false,
        }
    }

    /// Feeds one sample; returns the oldest level in the window when a burst starts.
    pub fn sample(&mut self, total: u64, anon: u64) -> Option<u64> {
        self.window.push_back(anon);
        while self.window.len() > self.len {
            self.window.pop_front();
        }
        let oldest = *self.window.front()?;
        let burst = self.window.len() >= 2
            && anon as f64 >= self.factor * oldest as f64
            && anon as f64 >= self.share * total as f64;
        let was = self.active;
        self.active = burst;
        (burst && !was).then_some(oldest)
    }
}

struct State {
    detector: BurstDetector,
    /// Per-process RSS at each sample in the window, oldest first.
    snapshots: VecDeque<HashMap<u32, u64>>,
}

struct MemBurst {
    cfg: MemBurstConfig,
    state: Mutex<State>,
    host: HostRoot,
}

fn rss_all(proc_dir: &Path) -> HashMap<u32, u64> {
    let page = page_size();
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(rss) = std::fs::read_to_string(e.path().join("statm"))
            .ok()
            .and_then(|t| pid_statm::resident_pages(&t))
            .map(|pages| pages.saturating_mul(page))
            .filter(|r| *r > 0)
        {
            out.insert(pid, rss);
        }
    }
    out
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Grower {
    pub pid: u32,
    pub comm: String,
    pub rss_bytes: u64,
    pub rss_growth_bytes: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

/// Processes by RSS growth between two snapshots (a process new since `old` grew from 0).
pub fn top_growth(
    old: &HashMap<u32, u64>,
    now: &HashMap<u32, u64>,
    n: usize,
) -> Vec<(u32, u64, i64)> {
    let mut v: Vec<(u32, u64, i64)> = now
        .iter()
        .map(|(pid, rss)| {
            (
                *pid,
                *rss,
                *rss as i64 - old.get(pid).copied().unwrap_or(0) as i64,
            )
        })
        .collect();
    v.sort_by(|a, b| b.2.cmp(&a.2).then(a.0.cmp(&b.0)));
    v.truncate(n);
    v
}

fn memory_cgroup_of(proc_dir: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("cgroup")).ok()?;
    pid_cgroup::path_of(&text, "memory").map(str::to_string)
}

fn memory_stat(
    host: &HostRoot,
    cgroup: &str,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let dir = Layout::read(host).dir("memory", cgroup)?.path;
    let text = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
    let mut m = serde_json::Map::new();
    for l in text.lines() {
        if let Some((k, v)) = l.split_once(' ') {
            if let Ok(v) = v.trim().parse::<u64>() {
                m.insert(k.to_string(), v.into());
            }
        }
    }
    Some(m)
}

impl AutoTracer for MemBurst {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, _ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let path = self.host.proc("meminfo");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let (total, anon) = total_and_anon(&text)?;
        let rss = rss_all(&self.host.proc(""));
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.snapshots.push_back(rss);
        while st.snapshots.len() > self.cfg.window_samples {
            st.snapshots.pop_front();
        }
        let Some(oldest) = st.detector.sample(total, anon) else {
            return Ok(Vec::new());
        };
        let old = st.snapshots.front().cloned().unwrap_or_default();
        let now = st.snapshots.back().cloned().unwrap_or_default();
        let top = top_growth(&old, &now, self.cfg.top_processes);
        Ok(vec![Anomaly {
            target: "host".into(),
            container: None,
            data: serde_json::json!({
                "anon_bytes": anon,
                "anon_window_start_bytes": oldest,
                "mem_total_bytes": total,
                "anon_percent": (anon as f64 / total.max(1) as f64 * 10_000.0).round() / 100.0,
                "burst_percent_threshold": self.cfg.burst_percent,
                "anon_percent_threshold": self.cfg.anon_threshold_percent,
                "window_secs": self.cfg.interval_secs * (self.cfg.window_samples as u64 - 1),
                "growth": top.iter().map(|(p, r, g)| serde_json::json!([p, r, g])).collect::<Vec<_>>(),
            }),
        }])
    }

    fn capture(&self, anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let proc_dir = self.host.proc("");
        let growth = anomaly
            .data
            .get("growth")
            .and_then(|g| g.as_array())
            .cloned()
            .unwrap_or_default();
        let mut cgroups: HashMap<String, String> = HashMap::new();
        let mut top = Vec::new();
        for g in growth {
            let (Some(pid), Some(rss), Some(grew)) = (g[0].as_u64(), g[1].as_u64(), g[2].as_i64())
            else {
                continue;
            };
            let pid = pid as u32;
            let comm = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            let cgroup = memory_cgroup_of(&proc_dir, pid);
            let container_id = cgroup
                .as_deref()
                .and_then(container_of_cgroup_path)
                .map(|(_, id)| id);
            if let (Some(id), Some(cg)) = (&container_id, &cgroup) {
                cgroups.insert(id.clone(), cg.clone());
            }
            top.push(Grower {
                pid,
                comm,
                rss_bytes: rss,
                rss_growth_bytes: grew,
                container_id,
            });
        }
        let stats: serde_json::Map<String, serde_json::Value> = cgroups
            .iter()
            .filter_map(|(id, cg)| {
                let _ = ctx;
                Some((
                    id.clone(),
                    serde_json::Value::Object(memory_stat(&self.host, cg)?),
                ))
            })
            .collect();
        Ok(serde_json::json!({
            "top_memory_usage": top,
            "container_memory_stat": stats,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn total_and_anon_from_meminfo() {
        let t = "MemTotal:       1000 kB\nActive(anon):     100 kB\nInactive(anon):   50 kB\n";
        assert_eq!(total_and_anon(t).unwrap(), (1_024_000, 153_600));
        assert!(total_and_anon("MemTotal: 1 kB\n").is_err());
    }

    #[test]
    fn recorded_sequence_fires_once_per_burst() {
        let cfg = MemBurstConfig {
            window_samples: 3,
            burst_percent: 100.0,
            anon_threshold_percent: 50.0,
            ..Default::default()
        };
        let mut d = BurstDetector::new(&cfg);
        let total = 100;
        // 30 → 40 → 65 (≥ 2×30 and ≥ 50%: fire) → 70 (same burst) → 70, 70 (flat, over) → 35 →
        // 30 (a new level) → 75 (2× 35 and ≥ 50%: fire again).
        let fired: Vec<bool> = [30, 40, 65, 70, 70, 70, 35, 30, 75]
            .iter()
            .map(|a| d.sample(total, *a).is_some())
            .collect();
        assert_eq!(
            fired,
            vec![false, false, true, false, false, false, false, false, true]
        );
        // Doubling below the share of total memory does not fire.
        let mut d = BurstDetector::new(&cfg);
        assert!(d.sample(total, 10).is_none());
        assert!(d.sample(total, 40).is_none());
    }

    #[test]
    fn ranks_by_growth() {
        let old: HashMap<u32, u64> = [(1, 100), (2, 1000)].into_iter().collect();
        let now: HashMap<u32, u64> = [(1, 500), (2, 1100), (3, 50)].into_iter().collect();
        assert_eq!(
            top_growth(&old, &now, 2),
            vec![(1, 500, 400), (2, 1100, 100)]
        );
    }
}
