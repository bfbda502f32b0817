//! `cpusys`: the host's system CPU share (from `/proc/stat`) is above a threshold and jumped
//! since the previous sample → a host-wide CPU profile (flame graph) of the next seconds.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::{check_range, parse_section, ConfigResult};
use crate::procfs::stat;
use crate::tracer::detect::{counter_deltas, round2, Jump, JumpState, ProfileConfig};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Capability, Mode, Requirement, RunContext, Tracer,
    TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "cpusys",
    mode: Mode::Autotracing,
    description: "host sys% above a threshold and jumped: host-wide CPU profile (flame graph)",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(Capability::Syslog, "kernel frames of the profile unnamed"),
        Requirement::Degrades(
            Capability::SysPtrace,
            "user frames of other users' processes unnamed",
        ),
        Requirement::Btf,
        Requirement::HostFile("proc/stat"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CpuSysConfig {
    pub interval_secs: u64,
    pub cooldown_secs: u64,
    /// sys% (of all CPUs' time) above this…
    pub sys_threshold_percent: f64,
    /// …and risen by more than this many percentage points since the previous sample.
    pub sys_delta_threshold_percent: f64,
    pub profile_secs: u64,
    pub profile_frequency_hz: u64,
    pub profile_top_stacks: usize,
}

impl Default for CpuSysConfig {
    fn default() -> Self {
        let p = ProfileConfig::default();
        CpuSysConfig {
            interval_secs: 10,
            cooldown_secs: 1800,
            sys_threshold_percent: 45.0,
            sys_delta_threshold_percent: 20.0,
            profile_secs: p.profile_secs,
            profile_frequency_hz: p.profile_frequency_hz,
            profile_top_stacks: p.profile_top_stacks,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: CpuSysConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(
        &key("sys_threshold_percent"),
        cfg.sys_threshold_percent,
        0.0,
        100.0,
    )?;
    check_range(
        &key("sys_delta_threshold_percent"),
        cfg.sys_delta_threshold_percent,
        0.0,
        100.0,
    )?;
    let profile = ProfileConfig {
        profile_secs: cfg.profile_secs,
        profile_frequency_hz: cfg.profile_frequency_hz,
        profile_top_stacks: cfg.profile_top_stacks,
    };
    profile.check(ctx.section)?;
    Ok(Tracer::Autotracing(Box::new(CpuSys {
        detector: Mutex::new(SysDetector::new(Jump {
            threshold: cfg.sys_threshold_percent,
            delta: cfg.sys_delta_threshold_percent,
        })),
        stat_path: ctx.host.proc("stat"),
        profile,
        cfg,
    })))
}

/// sys% between two samples of `/proc/stat`'s `cpu` line (user … steal:
/// [`stat::CpuTimes::without_guest`]); `None` on a counter rollback or no elapsed time.
pub fn sys_percent(prev: &[u64; 8], cur: &[u64; 8]) -> Option<f64> {
    let d = counter_deltas(prev, cur)?;
    let total: u64 = d.iter().sum();
    (total > 0).then(|| d[2] as f64 / total as f64 * 100.0)
}

/// The detector: counters in, "an anomaly started" out.
#[derive(Debug, Clone)]
pub struct SysDetector {
    rule: Jump,
    prev: Option<[u64; 8]>,
    state: JumpState,
}

impl SysDetector {
    pub fn new(rule: Jump) -> SysDetector {
        SysDetector {
            rule,
            prev: None,
            state: JumpState::default(),
        }
    }

    /// Returns (sys%, Δsys%) when an anomaly starts.
    pub fn sample(&mut self, cur: [u64; 8]) -> Option<(f64, f64)> {
        let prev = self.prev.replace(cur)?;
        let Some(sys) = sys_percent(&prev, &cur) else {
            self.state.reset();
            return None;
        };
        let deltas = self.state.sample(&[self.rule], &[sys])?;
        Some((sys, deltas[0]))
    }
}

struct CpuSys {
    cfg: CpuSysConfig,
    profile: ProfileConfig,
    detector: Mutex<SysDetector>,
    stat_path: PathBuf,
}

impl AutoTracer for CpuSys {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, _ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let text = std::fs::read_to_string(&self.stat_path)
            .with_context(|| format!("reading {}", self.stat_path.display()))?;
        let cur = stat::parse_total(&text)?.without_guest();
        let fired = self
            .detector
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .sample(cur);
        Ok(fired
            .map(|(sys, delta)| Anomaly {
                target: "host".into(),
                container: None,
                data: serde_json::json!({
                    "system_percent": round2(sys),
                    "system_percent_threshold": self.cfg.sys_threshold_percent,
                    "system_percent_delta": round2(delta),
                    "system_percent_delta_threshold": self.cfg.sys_delta_threshold_percent,
                }),
            })
            .into_iter()
            .collect())
    }

    fn capture(&self, _anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let profile = self.profile.run(ctx, None)?;
        Ok(serde_json::json!({ "profile": profile }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(user: u64, system: u64, idle: u64) -> [u64; 8] {
        [user, 0, system, idle, 0, 0, 0, 0]
    }

    #[test]
    fn fires_on_a_sys_spike_once_and_resets_on_rollback() {
        let mut d = SysDetector::new(Jump {
            threshold: 45.0,
            delta: 20.0,
        });
        // Recorded sequence (cumulative ticks): calm 5% sys, then a spike to 80%, sustained, calm.
        let samples = [
            stat(0, 0, 0),
            stat(90, 5, 5),     // first delta: 5% sys (baseline)
            stat(180, 10, 10),  // 5%
            stat(190, 90, 20),  // 80% → fire
            stat(200, 170, 30), // 80% sustained → same anomaly
            stat(290, 175, 35), // 5% → over
            stat(10, 10, 10),   // rollback (counters reset): new baseline
            stat(15, 90, 15),   // first delta after rollback: baseline only
            stat(105, 95, 20),  // 5%
            stat(110, 175, 25), // 80% → fire again
        ];
        let fired: Vec<bool> = samples.iter().map(|s| d.sample(*s).is_some()).collect();
        assert_eq!(
            fired,
            vec![false, false, false, true, false, false, false, false, false, true]
        );
    }
}
