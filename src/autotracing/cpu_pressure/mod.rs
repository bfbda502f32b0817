//! `cpu_pressure`: when the host's CPU pressure (PSI `some avg10`) crosses a threshold, capture
//! which processes were using the CPU over a short window, with their containers.
//!
//! The smallest complete autotracer, used as the worked example in docs/custom-tracers.md:
//! a pure rising-edge detector, a capture, and the framework doing sampling and cooldown.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::{check_range, parse_section, ConfigResult};
use crate::container::container_of_cgroup_path;
use crate::host::HostRoot;
use crate::procfs::{clk_tck, pid_cgroup, pid_stat, pressure};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Mode, Requirement, RunContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "cpu_pressure",
    mode: Mode::Autotracing,
    description: "host CPU pressure (PSI some avg10) crossing a threshold: top processes by CPU, with containers",
    requires: &[Requirement::HostFile("proc/pressure/cpu")],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuPressureConfig {
    /// Fires when `some avg10` rises above this (percent of time some task waited for a CPU).
    pub threshold_percent: f64,
    pub interval_secs: u64,
    /// At most one capture per this many seconds.
    pub cooldown_secs: u64,
    /// How long the CPU usage of processes is measured.
    pub capture_ms: u64,
    pub top_processes: usize,
}

impl Default for CpuPressureConfig {
    fn default() -> Self {
        CpuPressureConfig {
            threshold_percent: 40.0,
            interval_secs: 10,
            cooldown_secs: 600,
            capture_ms: 1000,
            top_processes: 10,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: CpuPressureConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("threshold_percent"), cfg.threshold_percent, 0.1, 100.0)?;
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(&key("capture_ms"), cfg.capture_ms, 100, 60_000)?;
    check_range(&key("top_processes"), cfg.top_processes, 1, 100)?;
    Ok(Tracer::Autotracing(Box::new(CpuPressure {
        detector: Mutex::new(RisingEdge::new(cfg.threshold_percent)),
        psi_path: ctx.host.proc("pressure/cpu"),
        host: ctx.host.clone(),
        cfg,
    })))
}

/// Fires once when a value goes from at-or-below the threshold to above it; a value that stays
/// above does not fire again until it has dropped back.
#[derive(Debug, Clone)]
pub struct RisingEdge {
    threshold: f64,
    above: bool,
}

impl RisingEdge {
    pub fn new(threshold: f64) -> RisingEdge {
        // Starting "above" means an agent started during a spike does not report it as new.
        RisingEdge {
            threshold,
            above: true,
        }
    }

    pub fn sample(&mut self, value: f64) -> bool {
        let was_above = self.above;
        self.above = value > self.threshold;
        self.above && !was_above
    }
}

struct CpuPressure {
    cfg: CpuPressureConfig,
    detector: Mutex<RisingEdge>,
    psi_path: PathBuf,
    host: HostRoot,
}

#[derive(Serialize)]
struct ProcessCpu {
    pid: u32,
    comm: String,
    cpu_percent: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup: Option<String>,
}

fn cpu_times(proc_dir: &Path) -> HashMap<u32, (String, u64)> {
    let mut out = HashMap::new();
    let Ok(entries) = std::fs::read_dir(proc_dir) else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(e.path().join("stat")) {
            if let Ok(s) = pid_stat::parse(&text) {
                out.insert(pid, (s.comm.to_string(), s.utime.saturating_add(s.stime)));
            }
        }
    }
    out
}

/// The memory-cgroup (or unified) path from `/proc/<pid>/cgroup`.
fn process_cgroup(proc_dir: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("cgroup")).ok()?;
    pid_cgroup::path_of(&text, "memory").map(str::to_string)
}

impl AutoTracer for CpuPressure {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, _ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let text = std::fs::read_to_string(&self.psi_path)
            .with_context(|| format!("reading {}", self.psi_path.display()))?;
        let avg10 = pressure::find(&text, "some")
            .with_context(|| format!("parsing {}", self.psi_path.display()))?
            .avg[0];
        if !self
            .detector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(avg10)
        {
            return Ok(Vec::new());
        }
        Ok(vec![Anomaly {
            target: "host".into(),
            container: None,
            data: serde_json::json!({
                "cpu_some_avg10_percent": avg10,
                "threshold_percent": self.cfg.threshold_percent,
            }),
        }])
    }

    fn capture(&self, _anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let proc_dir = self.host.proc("");
        let ticks = clk_tck() as f64;
        let before = cpu_times(&proc_dir);
        let start = Instant::now();
        ctx.sleep(Duration::from_millis(self.cfg.capture_ms));
        let after = cpu_times(&proc_dir);
        let secs = start.elapsed().as_secs_f64().max(0.001);
        let mut top: Vec<(u32, String, f64)> = after
            .into_iter()
            .filter_map(|(pid, (comm, t1))| {
                let t0 = before.get(&pid).map(|(_, t)| *t)?;
                let pct = t1.saturating_sub(t0) as f64 / ticks / secs * 100.0;
                (pct > 0.0).then_some((pid, comm, pct))
            })
            .collect();
        top.sort_by(|a, b| b.2.total_cmp(&a.2));
        top.truncate(self.cfg.top_processes);
        let processes: Vec<ProcessCpu> = top
            .into_iter()
            .map(|(pid, comm, pct)| {
                let cgroup = process_cgroup(&proc_dir, pid);
                let container_id = cgroup
                    .as_deref()
                    .and_then(container_of_cgroup_path)
                    .map(|(_, id)| id);
                ProcessCpu {
                    pid,
                    comm,
                    cpu_percent: (pct * 10.0).round() / 10.0,
                    container_id,
                    cgroup,
                }
            })
            .collect();
        Ok(serde_json::json!({ "capture_ms": self.cfg.capture_ms, "top_processes": processes }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rising_edge_fires_once_per_crossing() {
        let mut d = RisingEdge::new(10.0);
        let fired: Vec<bool> = [50.0, 5.0, 12.0, 30.0, 9.0, 11.0]
            .iter()
            .map(|v| d.sample(*v))
            .collect();
        // Started above (no report of an old spike), dropped, crossed (fire), stayed, dropped, crossed.
        assert_eq!(fired, vec![false, false, true, false, false, true]);
    }
}
