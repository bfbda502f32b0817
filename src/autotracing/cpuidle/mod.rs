//! `cpuidle`: a container's CPU usage (user, sys or total, normalised to its cores: CFS quota,
//! else cpuset, else all CPUs) is above a threshold and jumped since the previous sample → a CPU
//! profile of that container's cgroup. Cgroup v1 (`cpuacct.usage`, `cpuacct.stat`,
//! `cpu.cfs_quota_us`) and v2 (`cpu.stat`, `cpu.max`), read by [`crate::cgroupfs::cpu`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::cgroupfs::cpu::{read_cores, read_usage, CgroupUsage};
use crate::cgroupfs::Layout;
use crate::config::{check_range, parse_section, ConfigResult};
use crate::host::HostRoot;
use crate::procfs::{clk_tck, cpulist};
use crate::tracer::detect::{counter_deltas, round2, Jump, JumpState, ProfileConfig};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Capability, Mode, Requirement, RunContext, Tracer,
    TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "cpuidle",
    mode: Mode::Autotracing,
    description: "a container's CPU usage above a threshold and jumped: CPU profile of its cgroup",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(Capability::Syslog, "kernel frames of the profile unnamed"),
        Requirement::Degrades(
            Capability::SysPtrace,
            "user frames of other users' processes unnamed",
        ),
        Requirement::Btf,
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuIdleConfig {
    pub interval_secs: u64,
    /// Per container.
    pub cooldown_secs: u64,
    pub user_threshold_percent: f64,
    pub user_delta_threshold_percent: f64,
    pub sys_threshold_percent: f64,
    pub sys_delta_threshold_percent: f64,
    pub usage_threshold_percent: f64,
    pub usage_delta_threshold_percent: f64,
    pub profile_secs: u64,
    pub profile_frequency_hz: u64,
    pub profile_top_stacks: usize,
}

impl Default for CpuIdleConfig {
    fn default() -> Self {
        let p = ProfileConfig::default();
        CpuIdleConfig {
            interval_secs: 10,
            cooldown_secs: 1800,
            user_threshold_percent: 75.0,
            user_delta_threshold_percent: 45.0,
            sys_threshold_percent: 45.0,
            sys_delta_threshold_percent: 20.0,
            usage_threshold_percent: 90.0,
            usage_delta_threshold_percent: 55.0,
            profile_secs: p.profile_secs,
            profile_frequency_hz: p.profile_frequency_hz,
            profile_top_stacks: p.profile_top_stacks,
        }
    }
}

impl CpuIdleConfig {
    fn rules(&self) -> [Jump; 3] {
        [
            Jump {
                threshold: self.user_threshold_percent,
                delta: self.user_delta_threshold_percent,
            },
            Jump {
                threshold: self.sys_threshold_percent,
                delta: self.sys_delta_threshold_percent,
            },
            Jump {
                threshold: self.usage_threshold_percent,
                delta: self.usage_delta_threshold_percent,
            },
        ]
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: CpuIdleConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    for (k, v) in [
        ("user_threshold_percent", cfg.user_threshold_percent),
        (
            "user_delta_threshold_percent",
            cfg.user_delta_threshold_percent,
        ),
        ("sys_threshold_percent", cfg.sys_threshold_percent),
        (
            "sys_delta_threshold_percent",
            cfg.sys_delta_threshold_percent,
        ),
        ("usage_threshold_percent", cfg.usage_threshold_percent),
        (
            "usage_delta_threshold_percent",
            cfg.usage_delta_threshold_percent,
        ),
    ] {
        check_range(&key(k), v, 0.0, 100.0)?;
    }
    let profile = ProfileConfig {
        profile_secs: cfg.profile_secs,
        profile_frequency_hz: cfg.profile_frequency_hz,
        profile_top_stacks: cfg.profile_top_stacks,
    };
    profile.check(ctx.section)?;
    Ok(Tracer::Autotracing(Box::new(CpuIdle {
        host: ctx.host.clone(),
        profile,
        cfg,
        state: Mutex::new(HashMap::new()),
    })))
}

/// (user%, sys%, total%) of the cgroup's cores between two samples; `None` on rollback.
pub fn usage_percent(
    prev: &CgroupUsage,
    cur: &CgroupUsage,
    wall: Duration,
    cores: f64,
) -> Option<[f64; 3]> {
    let d = counter_deltas(
        &[prev.user_ns, prev.system_ns, prev.usage_ns],
        &[cur.user_ns, cur.system_ns, cur.usage_ns],
    )?;
    let capacity = wall.as_nanos() as f64 * cores.max(0.001);
    if capacity <= 0.0 {
        return None;
    }
    let pct = |v: u64| (v as f64 / capacity * 100.0).min(100.0);
    Some([pct(d[0]), pct(d[1]), pct(d[2])])
}

/// The per-container detector: samples in, "an anomaly started" out.
#[derive(Debug, Clone, Default)]
pub struct ContainerDetector {
    prev: Option<(CgroupUsage, Instant)>,
    state: JumpState,
}

impl ContainerDetector {
    /// Returns (values, deltas) of [user, sys, total] when an anomaly starts.
    pub fn sample(
        &mut self,
        rules: &[Jump; 3],
        cur: CgroupUsage,
        at: Instant,
        cores: f64,
    ) -> Option<([f64; 3], Vec<f64>)> {
        let (prev, prev_at) = self.prev.replace((cur, at))?;
        let Some(values) = usage_percent(&prev, &cur, at.saturating_duration_since(prev_at), cores)
        else {
            self.state.reset();
            return None;
        };
        let deltas = self.state.sample(rules, &values)?;
        Some((values, deltas))
    }
}

struct CpuIdle {
    cfg: CpuIdleConfig,
    profile: ProfileConfig,
    host: HostRoot,
    /// Container id → its detector.
    state: Mutex<HashMap<String, ContainerDetector>>,
}

/// A container's cumulative CPU time and the cores it may use (its quota, else its cpuset,
/// else the host's `online` CPUs); `None` when its usage cannot be read (cgroup gone).
fn sample_container(
    layout: &Layout,
    cgroup: &str,
    online: usize,
    tck: u64,
    buf: &mut String,
) -> Option<(CgroupUsage, f64)> {
    let usage = read_usage(layout, cgroup, buf, tck).ok()?.0?;
    let cores = read_cores(layout, cgroup, buf)
        .ok()
        .flatten()
        .unwrap_or(online.max(1) as f64);
    Some((usage, cores))
}

impl AutoTracer for CpuIdle {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let layout = Layout::read(&self.host);
        let online = std::fs::read_to_string(self.host.sys("devices/system/cpu/online"))
            .ok()
            .and_then(|t| cpulist::parse(&t))
            .map_or(1, |cpus| cpus.len());
        let tck = clk_tck();
        let mut buf = String::new();
        let rules = self.cfg.rules();
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for c in ctx.containers().list() {
            if c.exited.is_some() {
                continue;
            }
            let Some((cpu, cores)) =
                sample_container(&layout, &c.cgroup_path, online, tck, &mut buf)
            else {
                continue;
            };
            seen.push(c.id.clone());
            let det = state.entry(c.id.clone()).or_default();
            let Some((v, d)) = det.sample(&rules, cpu, now, cores) else {
                continue;
            };
            out.push(Anomaly {
                target: c.id.clone(),
                container: Some(c.fields()),
                data: serde_json::json!({
                    "user_percent": round2(v[0]),
                    "system_percent": round2(v[1]),
                    "total_percent": round2(v[2]),
                    "user_percent_delta": round2(d[0]),
                    "system_percent_delta": round2(d[1]),
                    "total_percent_delta": round2(d[2]),
                    "user_percent_threshold": self.cfg.user_threshold_percent,
                    "system_percent_threshold": self.cfg.sys_threshold_percent,
                    "total_percent_threshold": self.cfg.usage_threshold_percent,
                    "user_percent_delta_threshold": self.cfg.user_delta_threshold_percent,
                    "system_percent_delta_threshold": self.cfg.sys_delta_threshold_percent,
                    "total_percent_delta_threshold": self.cfg.usage_delta_threshold_percent,
                    "cores": round2(cores),
                    "memory_cgroup_id": c.memory_cgroup_id,
                    "cgroup": c.cgroup_path,
                }),
            });
        }
        // Containers gone: forget their baselines.
        state.retain(|id, _| seen.contains(id));
        Ok(out)
    }

    fn capture(&self, anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let memcg = anomaly
            .data
            .get("memory_cgroup_id")
            .and_then(|v| v.as_u64())
            .filter(|id| *id != 0)
            .context("container has no memory cgroup id to profile")?;
        let profile = self.profile.run(ctx, Some(memcg))?;
        Ok(serde_json::json!({ "profile": profile }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_container_sequence_fires_once_and_resets_on_rollback() {
        let rules = CpuIdleConfig::default().rules();
        let mut d = ContainerDetector::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let cpu = |user_s: f64, sys_s: f64| CgroupUsage {
            user_ns: (user_s * 1e9) as u64,
            system_ns: (sys_s * 1e9) as u64,
            usage_ns: ((user_s + sys_s) * 1e9) as u64,
        };
        // One core; 10 s samples. Idle (1%), then a burner takes 98% user, stays, stops.
        let seq = [
            (cpu(0.0, 0.0), 0),
            (cpu(0.1, 0.0), 10),  // 1%: baseline
            (cpu(0.2, 0.0), 20),  // 1%
            (cpu(10.0, 0.0), 30), // 98% → fire (user and total jumped)
            (cpu(19.8, 0.0), 40), // 98% sustained → same anomaly
            (cpu(19.9, 0.0), 50), // 1%
            (cpu(1.0, 0.0), 60),  // rollback (cgroup recreated) → baseline reset
            (cpu(10.8, 0.0), 70), // 98% but first delta after the reset: baseline only
            (cpu(10.9, 0.0), 80), // 1%
            (cpu(20.7, 0.0), 90), // 98% → fire
        ];
        let fired: Vec<bool> = seq
            .iter()
            .map(|(c, t)| d.sample(&rules, *c, s(*t), 1.0).is_some())
            .collect();
        assert_eq!(
            fired,
            vec![false, false, false, true, false, false, false, false, false, true]
        );
    }

    #[test]
    fn usage_is_normalised_to_cores() {
        let a = CgroupUsage {
            user_ns: 0,
            system_ns: 0,
            usage_ns: 0,
        };
        let b = CgroupUsage {
            user_ns: 1_000_000_000,
            system_ns: 0,
            usage_ns: 1_000_000_000,
        };
        let v = usage_percent(&a, &b, Duration::from_secs(1), 2.0).unwrap();
        assert_eq!(v, [50.0, 0.0, 50.0]);
        assert!(usage_percent(&b, &a, Duration::from_secs(1), 2.0).is_none());
    }
}
