//! `cpu`: host CPU time and utilisation from `/proc/stat` (and softirq counts from
//! `/proc/softirqs`), and per container usage (normalised to the container's quota or cpuset
//! cores) and CFS throttling from cgroup v1 `cpuacct`/`cpu` or v2 `cpu.stat`.
//!
//! Names follow HuaTuo's `cpu_util` and `cpu_stat` collectors: `cpu_util_usr` (%),
//! `cpu_util_container_total`, `cpu_stat_container_nr_throttled`…

mod containers;
mod host;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;

use crate::config::ConfigResult;
use crate::exposition::MetricSink;
use crate::host::file::ProcFile;
use crate::procfs::stat::CpuTimes;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "cpu",
    mode: Mode::Metric,
    description:
        "CPU time and usage % (host /proc/stat; containers: cgroup cpuacct/cpu.stat, throttling)",
    requires: &[Requirement::HostFile("proc/stat")],
    default_enabled: true,
    build,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct CpuConfig {
    /// Also export `seconds_total{cpu,mode}` per CPU (cardinality: CPUs × 10).
    per_cpu: bool,
    /// Per-container series (default on).
    containers: Option<bool>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: CpuConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Cpu {
        per_cpu: cfg.per_cpu,
        containers: cfg.containers.unwrap_or(true),
        stat: ProcFile::new(ctx.host.proc("stat")),
        softirqs: ProcFile::new(ctx.host.proc("softirqs")),
        state: Mutex::new(State::default()),
    })))
}

struct Cpu {
    per_cpu: bool,
    containers: bool,
    stat: ProcFile,
    softirqs: ProcFile,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Host baseline for utilisation, and the last computed values.
    host_base: Option<(Instant, CpuTimes)>,
    host_util: Util,
    /// Per container: baseline (time, usage, `wait_sum` ns) and the last computed values.
    containers: HashMap<String, containers::ContainerBase>,
    buf: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Util {
    usr: f64,
    sys: f64,
    total: f64,
}

/// Utilisation between two samples, in percent of `cores` (None if the counters went back or
/// no time passed).
fn util_between(d_total: f64, d_usr: f64, d_sys: f64, d_busy: f64) -> Option<Util> {
    if d_total <= 0.0 || d_usr < 0.0 || d_sys < 0.0 || d_busy < 0.0 {
        return None;
    }
    let pct = |v: f64| (v * 100.0 / d_total).clamp(0.0, 100.0);
    Some(Util {
        usr: pct(d_usr),
        sys: pct(d_sys),
        total: pct(d_busy),
    })
}

impl Collector for Cpu {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        self.collect_host(out, &mut st)?;
        if self.containers {
            self.collect_containers(ctx, out, &mut st)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utilisation() {
        let u = util_between(200.0, 50.0, 30.0, 100.0).unwrap();
        assert_eq!(
            u,
            Util {
                usr: 25.0,
                sys: 15.0,
                total: 50.0
            }
        );
        assert!(util_between(0.0, 0.0, 0.0, 0.0).is_none());
        assert!(util_between(10.0, -1.0, 0.0, 0.0).is_none());
    }
}
