//! `dload`: the number of tasks in uninterruptible sleep (D state), smoothed like the kernel's
//! 1-minute load average, stays above a threshold — on the host or in one container (cgroup v1
//! and v2 alike: tasks are read from /proc) → the kernel stacks of every D-state task, with pid,
//! comm, container and how long the detector has seen it blocked.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::config::{check_range, parse_section, ConfigResult};
use crate::container::container_of_cgroup_path;
use crate::host::HostRoot;
use crate::procfs::{pid_cgroup, pid_stack, tasks};
use crate::tracer::{
    Anomaly, AutoTracer, BuildContext, Capability, Mode, Requirement, RunContext, Tracer,
    TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "dload",
    mode: Mode::Autotracing,
    description: "D-state task load above a threshold (host or container): kernel stacks of every D-state task",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(
            Capability::SysAdmin,
            "no kernel stacks of blocked tasks (/proc/<pid>/stack is CAP_SYS_ADMIN only)",
        ),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DloadConfig {
    pub interval_secs: u64,
    pub cooldown_secs: u64,
    /// Fires when the smoothed number of D-state tasks exceeds this.
    pub threshold_load: f64,
    /// Smoothing window of the D-state load (the kernel's load average uses 60 s).
    pub load_window_secs: u64,
    /// At most this many tasks' stacks in a record.
    pub max_tasks: usize,
}

impl Default for DloadConfig {
    fn default() -> Self {
        DloadConfig {
            interval_secs: 10,
            cooldown_secs: 1800,
            threshold_load: 5.0,
            load_window_secs: 60,
            max_tasks: 100,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: DloadConfig = parse_section(ctx.section, table)?;
    let key = |k: &str| format!("{}.{k}", ctx.section);
    check_range(&key("interval_secs"), cfg.interval_secs, 1, 3600)?;
    check_range(&key("cooldown_secs"), cfg.cooldown_secs, 0, 86_400)?;
    check_range(&key("threshold_load"), cfg.threshold_load, 0.0, 1_000_000.0)?;
    check_range(&key("load_window_secs"), cfg.load_window_secs, 1, 3600)?;
    check_range(&key("max_tasks"), cfg.max_tasks, 1, 10_000)?;
    Ok(Tracer::Autotracing(Box::new(Dload {
        host: ctx.host.clone(),
        state: Mutex::new(State::default()),
        cfg,
    })))
}

/// Exponentially smoothed load with a rising edge, as the kernel's load average:
/// `load = load·e + n·(1 − e)`, `e = exp(−interval/window)`.
#[derive(Debug, Clone, Default)]
pub struct LoadDetector {
    load: f64,
    above: bool,
}

impl LoadDetector {
    /// Feeds a count; returns the smoothed load when it crosses `threshold` upwards.
    pub fn sample(&mut self, n: usize, decay: f64, threshold: f64) -> Option<f64> {
        self.load = self.load * decay + n as f64 * (1.0 - decay);
        let was = self.above;
        self.above = self.load > threshold;
        (self.above && !was).then_some(self.load)
    }

    pub fn load(&self) -> f64 {
        self.load
    }
}

#[derive(Default)]
struct State {
    /// "host" or a container id → its detector.
    detectors: HashMap<String, LoadDetector>,
    /// tid → when it was first seen in D state (kept while it stays there).
    blocked_since: HashMap<u32, Instant>,
}

struct Dload {
    cfg: DloadConfig,
    host: HostRoot,
    state: Mutex<State>,
}

/// A task in D state.
#[derive(Debug, Clone, Serialize)]
pub struct DTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// How long the detector has seen it in D state (at least; 0 when first seen now).
    pub blocked_ms: u64,
    pub stack: Vec<String>,
}

fn container_of_pid(proc_dir: &Path, pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(proc_dir.join(pid.to_string()).join("cgroup")).ok()?;
    let id = pid_cgroup::parse(&text).find_map(|m| container_of_cgroup_path(m.path))?;
    Some(id.1)
}

impl AutoTracer for Dload {
    fn interval(&self) -> Duration {
        Duration::from_secs(self.cfg.interval_secs)
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs(self.cfg.cooldown_secs)
    }

    fn detect(&self, ctx: &RunContext) -> Result<Vec<Anomaly>> {
        let proc_dir = self.host.proc("");
        let blocked = tasks::in_state(&proc_dir, 'D', usize::MAX);
        let now = Instant::now();
        let mut per_target: HashMap<String, usize> = HashMap::new();
        per_target.insert("host".into(), blocked.len());
        for t in &blocked {
            if let Some(id) = container_of_pid(&proc_dir, t.pid) {
                *per_target.entry(id).or_default() += 1;
            }
        }
        let decay = (-(self.cfg.interval_secs as f64) / self.cfg.load_window_secs as f64).exp();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.blocked_since
            .retain(|tid, _| blocked.iter().any(|t| t.tid == *tid));
        for t in &blocked {
            st.blocked_since.entry(t.tid).or_insert(now);
        }
        // Targets without D tasks now still decay; forget them once their load is negligible.
        let known: Vec<String> = st.detectors.keys().cloned().collect();
        for k in known {
            per_target.entry(k).or_insert(0);
        }
        let mut out = Vec::new();
        for (target, n) in per_target {
            let det = st.detectors.entry(target.clone()).or_default();
            let fired = det.sample(n, decay, self.cfg.threshold_load);
            if target != "host" && det.load() < 0.01 && n == 0 {
                st.detectors.remove(&target);
                continue;
            }
            let Some(load) = fired else { continue };
            let container = if target == "host" {
                None
            } else {
                ctx.containers().get(&target).map(|c| c.fields())
            };
            out.push(Anomaly {
                target: target.clone(),
                container,
                data: serde_json::json!({
                    "dload_avg": (load * 100.0).round() / 100.0,
                    "threshold": self.cfg.threshold_load,
                    "nr_uninterruptible": n,
                    "scope": if target == "host" { "host" } else { "container" },
                }),
            });
        }
        Ok(out)
    }

    fn capture(&self, anomaly: &Anomaly, _ctx: &RunContext) -> Result<serde_json::Value> {
        let proc_dir = self.host.proc("");
        let only = anomaly.container.as_ref().map(|c| c.id.clone());
        let since = self
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocked_since
            .clone();
        let now = Instant::now();
        let mut out = Vec::new();
        for task in tasks::in_state(&proc_dir, 'D', usize::MAX) {
            let container_id = container_of_pid(&proc_dir, task.pid);
            if only.is_some() && container_id != only {
                continue;
            }
            let stack = std::fs::read_to_string(task.dir(&proc_dir).join("stack"))
                .map(|t| pid_stack::frames(&t).map(str::to_string).collect())
                .unwrap_or_default();
            out.push(DTask {
                pid: task.pid,
                tid: task.tid,
                comm: task.comm,
                container_id,
                blocked_ms: since
                    .get(&task.tid)
                    .map(|t| now.saturating_duration_since(*t).as_millis() as u64)
                    .unwrap_or(0),
                stack,
            });
            if out.len() >= self.cfg.max_tasks {
                break;
            }
        }
        out.sort_by(|a, b| b.blocked_ms.cmp(&a.blocked_ms).then(a.tid.cmp(&b.tid)));
        Ok(serde_json::json!({ "d_state_tasks": out }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_d_state_counts_fire_once_while_the_load_stays_high() {
        let decay = (-10.0f64 / 60.0).exp();
        let mut d = LoadDetector::default();
        // 8 tasks stuck for a while, then released, then stuck again.
        let counts = [
            0, 8, 8, 8, 8, 8, 8, 8, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 8, 8, 8,
        ];
        let fired: Vec<usize> = counts
            .iter()
            .enumerate()
            .filter_map(|(i, n)| d.sample(*n, decay, 5.0).map(|_| i))
            .collect();
        // The smoothed load passes 5 after ~6 samples of 8 tasks; it fires once per episode.
        assert_eq!(fired.len(), 2, "{fired:?}");
        assert!(fired[0] >= 5 && fired[0] <= 8, "{fired:?}");
        assert!(fired[1] > 19, "{fired:?}");
    }
}
