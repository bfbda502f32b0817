//! `waitrate`: CPU contention between containers. Every interval each container's run-queue
//! wait share and CFS throttling share are sampled; when either is above its threshold and rose
//! by more than its delta since the previous sample, the host is profiled (with the samples of
//! every container counted apart) and the containers that used, waited for or were throttled
//! off the CPU most in that window are listed.
//!
//! Sources, chosen to work on cgroup v1, v2 and hybrid hosts alike:
//! - throttling: the cpu controller's `cpu.stat` (v1 `nr_periods`, `nr_throttled`,
//!   `throttled_time`; v2 `nr_periods`, `nr_throttled`, `throttled_usec`) — present wherever
//!   the cpu controller is, whatever the kernel config;
//! - run-queue wait: v1 `cpu.stat` `wait_sum` where the kernel has schedstats on
//!   (`kernel.sched_schedstats=1`), else the run-queue wait the `runqlat` tracer measures in BPF
//!   per cpu cgroup (its histogram sum), when that tracer runs; v2 has no `wait_sum`, so there
//!   it is always BPF. Neither costs anything extra: the files are read once per interval and
//!   the BPF sums are kept anyway.
//!
//! wait % = Δwait / (Δwait + Δusage) — the share of the time the container's tasks were runnable
//! that they spent waiting (HuaTuo's `wait_sum_percent`); throttled % = Δnr_throttled /
//! Δnr_periods, counted once at least [`MIN_PERIODS`] enforcement periods passed in a sample.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::cgroupfs::cpu::{read_usage, wait_sum_percent};
use crate::cgroupfs::Layout;
use crate::config::{check_range, parse_section, ConfigResult};
use crate::container::Container;
use crate::host::HostRoot;
use crate::procfs::clk_tck;
use crate::tracer::detect::{counter_deltas, round2, Jump, JumpState, ProfileConfig};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Mode, Requirement, RunContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "waitrate",
    mode: Mode::Autotracing,
    description: "a container's run-queue wait or CFS throttling share jumped: host CPU profile per container, top contending containers",
    requires: &[Requirement::BPF, Requirement::Btf],
    default_enabled: true,
    build,
};

/// Fewer CFS periods than this in a sample say too little to call a container throttled
/// (one throttled period out of one would read 100 %).
pub const MIN_PERIODS: u64 = 5;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WaitRateConfig {
    pub interval_secs: u64,
    /// Per container.
    pub cooldown_secs: u64,
    /// Run-queue wait, percent of the container's runnable time, above this…
    pub wait_threshold_percent: f64,
    /// …and risen by more than this many percentage points since the previous sample.
    pub wait_delta_threshold_percent: f64,
    /// Throttled CFS periods, percent of the periods in the sample, above this…
    pub throttled_threshold_percent: f64,
    /// …and risen by more than this many percentage points.
    pub throttled_delta_threshold_percent: f64,
    /// Containers listed in a record (by CPU used in the capture window).
    pub top_containers: usize,
    pub profile_secs: u64,
    pub profile_frequency_hz: u64,
    pub profile_top_stacks: usize,
}

impl Default for WaitRateConfig {
    fn default() -> Self {
        let p = ProfileConfig::default();
        WaitRateConfig {
            interval_secs: 10,
            cooldown_secs: 1800,
            wait_threshold_percent: 50.0,
            wait_delta_threshold_percent: 30.0,
            throttled_threshold_percent: 50.0,
            throttled_delta_threshold_percent: 30.0,
            top_containers: 10,
            profile_secs: p.profile_secs,
            profile_frequency_hz: p.profile_frequency_hz,
            profile_top_stacks: p.profile_top_stacks,
        }
    }
}

impl WaitRateConfig {
    /// [wait %, throttled %].
    pub fn rules(&self) -> [Jump; 2] {
        [
            Jump {
                threshold: self.wait_threshold_percent,
                delta: self.wait_delta_threshold_percent,
            },
            Jump {
                threshold: self.throttled_threshold_percent,
                delta: self.throttled_delta_threshold_percent,
            },
        ]
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: WaitRateConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(&key("top_containers"), cfg.top_containers, 1, 1000)?;
    for (k, v) in [
        ("wait_threshold_percent", cfg.wait_threshold_percent),
        (
            "wait_delta_threshold_percent",
            cfg.wait_delta_threshold_percent,
        ),
        (
            "throttled_threshold_percent",
            cfg.throttled_threshold_percent,
        ),
        (
            "throttled_delta_threshold_percent",
            cfg.throttled_delta_threshold_percent,
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
    Ok(Tracer::Autotracing(Box::new(WaitRate {
        host: ctx.host.clone(),
        profile,
        cfg,
        state: Mutex::new(HashMap::new()),
    })))
}

/// Where a container's run-queue wait came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitSource {
    /// v1 `cpu.stat` `wait_sum` (schedstats).
    Schedstats,
    /// The `runqlat` tracer's per-cgroup BPF sum.
    Bpf,
}

/// A container's cumulative CPU counters, ns and periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    pub usage_ns: u64,
    pub wait: Option<(WaitSource, u64)>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_ns: u64,
}

/// What happened between two samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Δwait / (Δwait + Δusage) × 100; None without a wait source.
    pub wait_percent: Option<f64>,
    pub wait_source: Option<WaitSource>,
    /// Δnr_throttled / Δnr_periods × 100 (0 under [`MIN_PERIODS`] periods).
    pub throttled_percent: f64,
    /// CPU used, in cores (Δusage / wall time).
    pub usage_cores: f64,
    /// Run-queue wait, in tasks waiting on average (Δwait / wall time).
    pub wait_cores: Option<f64>,
    pub periods: u64,
    pub throttled_periods: u64,
    pub throttled_seconds: f64,
}

/// Rates between two samples `wall` apart; `None` on a counter rollback (cgroup recreated,
/// runqlat restarted) or when the wait source appeared, vanished or changed.
pub fn rates(prev: &CpuSample, cur: &CpuSample, wall: Duration) -> Option<Rates> {
    let mut p = vec![
        prev.usage_ns,
        prev.nr_periods,
        prev.nr_throttled,
        prev.throttled_ns,
    ];
    let mut c = vec![
        cur.usage_ns,
        cur.nr_periods,
        cur.nr_throttled,
        cur.throttled_ns,
    ];
    match (prev.wait, cur.wait) {
        (Some((s0, w0)), Some((s1, w1))) if s0 == s1 => {
            p.push(w0);
            c.push(w1);
        }
        (None, None) => {}
        _ => return None,
    }
    let d = counter_deltas(&p, &c)?;
    let wall_ns = wall.as_nanos().max(1) as f64;
    let source = cur.wait.map(|(s, _)| s);
    let wait_percent = d
        .get(4)
        .and_then(|&dw| wait_sum_percent((0, 0), (dw, d[0])));
    Some(Rates {
        wait_percent,
        wait_source: source,
        throttled_percent: if d[1] >= MIN_PERIODS {
            (d[2] as f64 / d[1] as f64 * 100.0).min(100.0)
        } else {
            0.0
        },
        usage_cores: d[0] as f64 / wall_ns,
        wait_cores: d.get(4).map(|&dw| dw as f64 / wall_ns),
        periods: d[1],
        throttled_periods: d[2],
        throttled_seconds: d[3] as f64 / 1e9,
    })
}

/// The per-container detector: samples in, "an anomaly started" out.
#[derive(Debug, Clone, Default)]
pub struct ContainerDetector {
    prev: Option<(CpuSample, Instant)>,
    state: JumpState,
}

impl ContainerDetector {
    /// Returns the rates and the deltas of [wait %, throttled %] when an anomaly starts.
    pub fn sample(
        &mut self,
        rules: &[Jump; 2],
        cur: CpuSample,
        at: Instant,
    ) -> Option<(Rates, Vec<f64>)> {
        let (prev, prev_at) = self.prev.replace((cur, at))?;
        let Some(r) = rates(&prev, &cur, at.saturating_duration_since(prev_at)) else {
            self.state.reset();
            return None;
        };
        let deltas = self
            .state
            .sample(rules, &[r.wait_percent.unwrap_or(0.0), r.throttled_percent])?;
        Some((r, deltas))
    }
}

struct WaitRate {
    cfg: WaitRateConfig,
    profile: ProfileConfig,
    host: HostRoot,
    /// Container id → its detector.
    state: Mutex<HashMap<String, ContainerDetector>>,
}

/// One container in a record's `contenders` list.
#[derive(Debug, Clone, Serialize)]
pub struct Contender {
    pub container_id: String,
    pub container_name: String,
    pub cgroup: String,
    /// CPU used in the capture window, cores.
    pub cpu_cores: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_cores: Option<f64>,
    pub throttled_percent: f64,
    pub throttled_periods: u64,
    pub throttled_seconds: f64,
    /// Profiler samples of the container's tasks.
    pub profile_samples: u64,
}

/// Reads one container's counters (cpu controller `cpu.stat`, cpuacct usage on v1).
fn sample_container(
    layout: &Layout,
    c: &Container,
    buf: &mut String,
    tck: u64,
    bpf_wait: Option<&HashMap<String, u64>>,
) -> Option<CpuSample> {
    let (usage, throttling) = read_usage(layout, &c.cgroup_path, buf, tck).ok()?;
    let usage = usage?;
    let t = throttling.unwrap_or_default();
    let wait = match t.wait_sum_ns {
        Some(w) => Some((WaitSource::Schedstats, w)),
        None => bpf_wait
            .and_then(|m| m.get(&c.id))
            .map(|w| (WaitSource::Bpf, *w)),
    };
    Some(CpuSample {
        usage_ns: usage.usage_ns,
        wait,
        nr_periods: t.nr_periods.unwrap_or(0),
        nr_throttled: t.nr_throttled.unwrap_or(0),
        throttled_ns: t.throttled_ns.unwrap_or(0),
    })
}

impl WaitRate {
    /// Every live container's counters now.
    fn sample_all(&self, ctx: &RunContext) -> Result<Vec<(std::sync::Arc<Container>, CpuSample)>> {
        let layout = Layout::read(&self.host);
        let tck = clk_tck();
        // Where the kernel keeps no schedstats, the run-queue wait runqlat measures.
        let bpf_wait = ctx
            .shared()
            .runqueue_wait()
            .and_then(|w| w.wait_ns(&ctx.cgroups()));
        let mut buf = String::new();
        Ok(ctx
            .containers()
            .list()
            .into_iter()
            .filter(|c| c.exited.is_none())
            .filter_map(|c| {
                let s = sample_container(&layout, &c, &mut buf, tck, bpf_wait.as_ref())?;
                Some((c, s))
            })
            .collect())
    }
}

impl AutoTracer for WaitRate {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let samples = self.sample_all(ctx)?;
        let rules = self.cfg.rules();
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (c, s) in &samples {
            let det = state.entry(c.id.clone()).or_default();
            let Some((r, d)) = det.sample(&rules, *s, now) else {
                continue;
            };
            out.push(Anomaly {
                target: c.id.clone(),
                container: Some(c.fields()),
                data: serde_json::json!({
                    "wait_percent": r.wait_percent.map(round2),
                    "wait_percent_delta": round2(d[0]),
                    "wait_source": r.wait_source,
                    "throttled_percent": round2(r.throttled_percent),
                    "throttled_percent_delta": round2(d[1]),
                    "throttled_periods": r.throttled_periods,
                    "periods": r.periods,
                    "throttled_seconds": round2(r.throttled_seconds),
                    "cpu_cores": round2(r.usage_cores),
                    "wait_percent_threshold": self.cfg.wait_threshold_percent,
                    "wait_percent_delta_threshold": self.cfg.wait_delta_threshold_percent,
                    "throttled_percent_threshold": self.cfg.throttled_threshold_percent,
                    "throttled_percent_delta_threshold": self.cfg.throttled_delta_threshold_percent,
                    "memory_cgroup_id": c.memory_cgroup_id,
                    "cgroup": c.cgroup_path,
                }),
            });
        }
        // Containers gone: forget their baselines.
        state.retain(|id, _| samples.iter().any(|(c, _)| &c.id == id));
        Ok(out)
    }

    fn capture(&self, _anomaly: &Anomaly, ctx: &RunContext) -> Result<serde_json::Value> {
        let before: HashMap<String, CpuSample> = self
            .sample_all(ctx)?
            .into_iter()
            .map(|(c, s)| (c.id.clone(), s))
            .collect();
        let start = Instant::now();
        let profile = self.profile.run(ctx, None)?;
        let wall = start.elapsed();
        let after = self.sample_all(ctx)?;
        // Profile samples per container: a container's tasks may sit in sub-cgroups, which the
        // registry maps to the container too.
        let mut per_container: HashMap<String, u64> = HashMap::new();
        let mut outside = 0u64;
        for g in &profile.cgroups {
            match ctx.containers().by_memcg(g.memory_cgroup_id) {
                Some(c) => *per_container.entry(c.id.clone()).or_default() += g.samples,
                None => outside += g.samples,
            }
        }
        let mut contenders: Vec<Contender> = after
            .iter()
            .filter_map(|(c, s)| {
                let r = rates(before.get(&c.id)?, s, wall)?;
                Some(Contender {
                    container_id: c.id.clone(),
                    container_name: c.name.clone(),
                    cgroup: c.cgroup_path.clone(),
                    cpu_cores: round2(r.usage_cores),
                    wait_percent: r.wait_percent.map(round2),
                    wait_cores: r.wait_cores.map(round2),
                    throttled_percent: round2(r.throttled_percent),
                    throttled_periods: r.throttled_periods,
                    throttled_seconds: round2(r.throttled_seconds),
                    profile_samples: per_container.get(&c.id).copied().unwrap_or(0),
                })
            })
            .collect();
        rank(&mut contenders);
        contenders.truncate(self.cfg.top_containers);
        Ok(serde_json::json!({
            "window_ms": wall.as_millis() as u64,
            "contenders": contenders,
            "profile_samples_outside_containers": outside,
            "profile": profile,
        }))
    }
}

/// Most CPU first, then most wait, then most throttled.
pub fn rank(list: &mut [Contender]) {
    list.sort_by(|a, b| {
        b.cpu_cores
            .total_cmp(&a.cpu_cores)
            .then(
                b.wait_percent
                    .unwrap_or(0.0)
                    .total_cmp(&a.wait_percent.unwrap_or(0.0)),
            )
            .then(b.throttled_percent.total_cmp(&a.throttled_percent))
            .then(a.container_id.cmp(&b.container_id))
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(usage_s: f64, periods: u64, throttled: u64, wait_s: Option<f64>) -> CpuSample {
        CpuSample {
            usage_ns: (usage_s * 1e9) as u64,
            wait: wait_s.map(|w| (WaitSource::Schedstats, (w * 1e9) as u64)),
            nr_periods: periods,
            nr_throttled: throttled,
            throttled_ns: throttled * 90_000_000,
        }
    }

    fn run(seq: &[CpuSample]) -> Vec<bool> {
        let rules = WaitRateConfig::default().rules();
        let mut d = ContainerDetector::default();
        let t0 = Instant::now();
        seq.iter()
            .enumerate()
            .map(|(i, c)| {
                d.sample(&rules, *c, t0 + Duration::from_secs(10 * i as u64))
                    .is_some()
            })
            .collect()
    }

    #[test]
    fn rates_between_samples() {
        let r = rates(
            &s(0.0, 0, 0, Some(0.0)),
            &s(3.0, 100, 90, Some(1.0)),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.wait_percent, Some(25.0));
        assert_eq!(r.wait_source, Some(WaitSource::Schedstats));
        assert_eq!(r.throttled_percent, 90.0);
        assert!((r.usage_cores - 0.3).abs() < 1e-9);
        assert!((r.throttled_seconds - 8.1).abs() < 1e-9);
        // Too few periods: not called throttled.
        let r = rates(
            &s(0.0, 0, 0, None),
            &s(0.1, 2, 2, None),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!((r.throttled_percent, r.wait_percent), (0.0, None));
        // Rollback, or the wait source changing, is a new baseline.
        assert!(rates(
            &s(5.0, 10, 1, None),
            &s(1.0, 20, 1, None),
            Duration::from_secs(1)
        )
        .is_none());
        assert!(rates(
            &s(0.0, 0, 0, None),
            &s(1.0, 0, 0, Some(1.0)),
            Duration::from_secs(1)
        )
        .is_none());
        let mut bpf = s(1.0, 0, 0, Some(1.0));
        bpf.wait = Some((WaitSource::Bpf, 1_000_000_000));
        assert!(rates(&s(0.0, 0, 0, Some(0.0)), &bpf, Duration::from_secs(1)).is_none());
    }

    #[test]
    fn recorded_throttling_sequence_fires_once_and_resets_on_rollback() {
        // A container at its quota: 100 periods per 10 s sample, throttled in most of them.
        let seq = [
            s(0.0, 0, 0, None),
            s(0.5, 100, 0, None),   // calm: baseline
            s(1.0, 200, 2, None),   // 2 %
            s(2.0, 300, 92, None),  // 90 % → fire
            s(3.0, 400, 185, None), // 93 %: same anomaly
            s(3.5, 500, 186, None), // 1 %: over
            s(0.1, 10, 0, None),    // rollback (cgroup recreated): baseline reset
            s(1.1, 110, 95, None),  // 95 % but the first delta after the reset: baseline only
            s(1.6, 210, 96, None),  // 1 %
            s(2.6, 310, 186, None), // 90 % → fire again
            s(2.7, 312, 188, None), // 2 periods: too few to judge, reads 0 %
            s(3.7, 412, 280, None), // 92 % → fire (rose from 0)
        ];
        assert_eq!(
            run(&seq),
            vec![false, false, false, true, false, false, false, false, false, true, false, true]
        );
    }

    #[test]
    fn recorded_wait_sequence_fires_on_a_jump_not_on_a_creep() {
        // Cumulative (usage s, wait s) every 10 s; wait share: 5 %, 5 %, 60 % (fire), 60 %, …
        let w = |u: f64, wt: f64| s(u, 0, 0, Some(wt));
        let seq = [
            w(0.0, 0.0),
            w(9.5, 0.5),   // 5 %
            w(19.0, 1.0),  // 5 %
            w(23.0, 7.0),  // 60 % → fire
            w(27.0, 13.0), // 60 %: same
            w(36.5, 13.5), // 5 %
            w(44.5, 15.5), // 20 %
            w(50.5, 19.5), // 40 %: creeping up by 20 points, below the delta
            w(55.5, 24.5), // 50 %: at the threshold, not above
            w(60.0, 30.0), // 55 %: above, but rose only 5 points
        ];
        assert_eq!(
            run(&seq),
            vec![false, false, false, true, false, false, false, false, false, false]
        );
    }

    #[test]
    fn contenders_rank_by_cpu_then_wait_then_throttling() {
        let c = |id: &str, cpu: f64, wait: Option<f64>, thr: f64| Contender {
            container_id: id.into(),
            container_name: String::new(),
            cgroup: String::new(),
            cpu_cores: cpu,
            wait_percent: wait,
            wait_cores: None,
            throttled_percent: thr,
            throttled_periods: 0,
            throttled_seconds: 0.0,
            profile_samples: 0,
        };
        let mut l = vec![
            c("a", 0.1, None, 90.0),
            c("b", 1.9, Some(5.0), 0.0),
            c("c", 0.1, Some(40.0), 0.0),
            c("d", 0.1, None, 95.0),
        ];
        rank(&mut l);
        let ids: Vec<&str> = l.iter().map(|c| c.container_id.as_str()).collect();
        assert_eq!(ids, vec!["b", "c", "d", "a"]);
    }
}
