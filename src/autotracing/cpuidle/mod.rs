//! `cpuidle`: a container's CPU usage (user, sys or total, normalised to its cores: CFS quota,
//! else cpuset, else all CPUs) is above a threshold and jumped since the previous sample → a CPU
//! profile of that container's cgroup. Cgroup v1 (`cpuacct.usage`, `cpuacct.stat`,
//! `cpu.cfs_quota_us`) and v2 (`cpu.stat`, `cpu.max`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::{check_range, parse_section, ConfigResult};
use crate::container::cgroup_mount;
use crate::host::HostRoot;
use crate::profiler::parse_cpu_list;
use crate::tracer::detect::{counter_deltas, round2, Jump, JumpState, ProfileConfig};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Mode, Requirement, RunContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "cpuidle",
    mode: Mode::Autotracing,
    description: "a container's CPU usage above a threshold and jumped: CPU profile of its cgroup",
    requires: &[Requirement::Root, Requirement::Btf],
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

/// Cumulative CPU time of a cgroup, ns: user, system, total.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CgroupCpu {
    pub user_ns: u64,
    pub system_ns: u64,
    pub usage_ns: u64,
}

/// v1 `cpuacct.stat` (`user N\nsystem N`, USER_HZ ticks) and `cpuacct.usage` (ns).
pub fn parse_cpuacct(stat: &str, usage: &str, ticks_per_sec: u64) -> Result<CgroupCpu> {
    let field = |name: &str| -> Result<u64> {
        stat.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no `{name}` in cpuacct.stat"))?
            .trim()
            .parse()
            .with_context(|| format!("cpuacct.stat {name} is not a number"))
    };
    let tick_ns = 1_000_000_000 / ticks_per_sec.max(1);
    Ok(CgroupCpu {
        user_ns: field("user")? * tick_ns,
        system_ns: field("system")? * tick_ns,
        usage_ns: usage
            .trim()
            .parse()
            .context("cpuacct.usage is not a number")?,
    })
}

/// v2 `cpu.stat`: `usage_usec`, `user_usec`, `system_usec`.
pub fn parse_cpu_stat_v2(text: &str) -> Result<CgroupCpu> {
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .with_context(|| format!("no `{name}` in cpu.stat"))?
            .trim()
            .parse::<u64>()
            .map(|us| us * 1000)
            .with_context(|| format!("cpu.stat {name} is not a number"))
    };
    Ok(CgroupCpu {
        user_ns: field("user_usec")?,
        system_ns: field("system_usec")?,
        usage_ns: field("usage_usec")?,
    })
}

/// Cores a cgroup may use: CFS quota/period when limited, else its cpuset, else `online`.
/// `quota` is v1 `cpu.cfs_quota_us` (-1 = none) or the first field of v2 `cpu.max` (`max`).
pub fn cgroup_cores(
    quota: Option<&str>,
    period: Option<&str>,
    cpuset: Option<&str>,
    online: usize,
) -> f64 {
    let q = quota
        .and_then(|q| q.trim().parse::<i64>().ok())
        .filter(|q| *q > 0);
    let p = period
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|p| *p > 0);
    if let (Some(q), Some(p)) = (q, p) {
        return q as f64 / p as f64;
    }
    if let Some(n) = cpuset
        .map(parse_cpu_list)
        .map(|l| l.len())
        .filter(|n| *n > 0)
    {
        return n as f64;
    }
    online.max(1) as f64
}

/// (user%, sys%, total%) of the cgroup's cores between two samples; `None` on rollback.
pub fn usage_percent(
    prev: &CgroupCpu,
    cur: &CgroupCpu,
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
    prev: Option<(CgroupCpu, Instant)>,
    state: JumpState,
}

impl ContainerDetector {
    /// Returns (values, deltas) of [user, sys, total] when an anomaly starts.
    pub fn sample(
        &mut self,
        rules: &[Jump; 3],
        cur: CgroupCpu,
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

struct Mounts {
    cpuacct: Option<PathBuf>,
    cpu: Option<PathBuf>,
    cpuset: Option<PathBuf>,
    v2: bool,
}

fn under_root(host: &HostRoot, mp: PathBuf) -> PathBuf {
    host.root().join(mp.strip_prefix("/").unwrap_or(&mp))
}

fn mounts(host: &HostRoot) -> Result<Mounts> {
    let mi = std::fs::read_to_string(host.proc("self/mountinfo")).context("reading mountinfo")?;
    let cpuacct = cgroup_mount(&mi, "cpuacct").map(|p| under_root(host, p));
    let v2 = cpuacct.as_deref().is_some_and(|p| {
        !p.join("cpuacct.usage").exists() && p.join("cgroup.controllers").exists()
    });
    Ok(Mounts {
        cpu: cgroup_mount(&mi, "cpu").map(|p| under_root(host, p)),
        cpuset: cgroup_mount(&mi, "cpuset").map(|p| under_root(host, p)),
        cpuacct,
        v2,
    })
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file)).ok()
}

fn rel(path: &str) -> &str {
    path.trim_start_matches('/')
}

impl CpuIdle {
    fn sample_container(
        &self,
        m: &Mounts,
        cgroup: &str,
        online: usize,
        ticks: u64,
    ) -> Option<(CgroupCpu, f64)> {
        let acct = m.cpuacct.as_ref()?.join(rel(cgroup));
        if m.v2 {
            let cpu = parse_cpu_stat_v2(&read(&acct, "cpu.stat")?).ok()?;
            let max = read(&acct, "cpu.max").unwrap_or_default();
            let mut f = max.split_whitespace();
            let (q, p) = (f.next(), f.next());
            let cpuset = read(&acct, "cpuset.cpus.effective");
            return Some((cpu, cgroup_cores(q, p, cpuset.as_deref(), online)));
        }
        let cpu = parse_cpuacct(
            &read(&acct, "cpuacct.stat")?,
            &read(&acct, "cpuacct.usage")?,
            ticks,
        )
        .ok()?;
        let cpu_dir = m.cpu.as_ref().map(|p| p.join(rel(cgroup)));
        let quota = cpu_dir.as_deref().and_then(|d| read(d, "cpu.cfs_quota_us"));
        let period = cpu_dir
            .as_deref()
            .and_then(|d| read(d, "cpu.cfs_period_us"));
        let cpuset = m
            .cpuset
            .as_ref()
            .and_then(|p| read(&p.join(rel(cgroup)), "cpuset.cpus"));
        Some((
            cpu,
            cgroup_cores(
                quota.as_deref(),
                period.as_deref(),
                cpuset.as_deref(),
                online,
            ),
        ))
    }
}

impl AutoTracer for CpuIdle {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let m = mounts(&self.host)?;
        let online = std::fs::read_to_string(self.host.sys("devices/system/cpu/online"))
            .map(|t| parse_cpu_list(&t).len())
            .unwrap_or(1);
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        let rules = self.cfg.rules();
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for c in ctx.containers().list() {
            if c.exited.is_some() {
                continue;
            }
            let Some((cpu, cores)) = self.sample_container(&m, &c.cgroup_path, online, ticks)
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
    fn parses_cgroup_files() {
        let c = parse_cpuacct("user 150\nsystem 50\n", "2000000000\n", 100).unwrap();
        assert_eq!(
            c,
            CgroupCpu {
                user_ns: 1_500_000_000,
                system_ns: 500_000_000,
                usage_ns: 2_000_000_000
            }
        );
        let v2 =
            parse_cpu_stat_v2("usage_usec 300\nuser_usec 200\nsystem_usec 100\nnr_periods 0\n")
                .unwrap();
        assert_eq!(
            (v2.usage_ns, v2.user_ns, v2.system_ns),
            (300_000, 200_000, 100_000)
        );
        assert!(parse_cpuacct("user x\n", "1", 100).is_err());
        assert!(parse_cpu_stat_v2("nr_periods 0\n").is_err());
    }

    #[test]
    fn cores_from_quota_cpuset_or_host() {
        assert_eq!(
            cgroup_cores(Some("100000\n"), Some("100000\n"), Some("0-3"), 8),
            1.0
        );
        assert_eq!(
            cgroup_cores(Some("-1\n"), Some("100000"), Some("0-3\n"), 8),
            4.0
        );
        assert_eq!(cgroup_cores(Some("max"), Some("100000"), None, 8), 8.0);
        assert_eq!(cgroup_cores(Some("50000"), Some("100000"), None, 8), 0.5);
    }

    #[test]
    fn recorded_container_sequence_fires_once_and_resets_on_rollback() {
        let rules = CpuIdleConfig::default().rules();
        let mut d = ContainerDetector::default();
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let cpu = |user_s: f64, sys_s: f64| CgroupCpu {
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
        let a = CgroupCpu {
            user_ns: 0,
            system_ns: 0,
            usage_ns: 0,
        };
        let b = CgroupCpu {
            user_ns: 1_000_000_000,
            system_ns: 0,
            usage_ns: 1_000_000_000,
        };
        let v = usage_percent(&a, &b, Duration::from_secs(1), 2.0).unwrap();
        assert_eq!(v, [50.0, 0.0, 50.0]);
        assert!(usage_percent(&b, &a, Duration::from_secs(1), 2.0).is_none());
    }
}
