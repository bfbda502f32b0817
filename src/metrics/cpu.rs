//! `cpu`: host CPU time and utilisation from `/proc/stat` (and softirq counts from
//! `/proc/softirqs`), and per container usage (normalised to the container's quota or cpuset
//! cores) and CFS throttling from cgroup v1 `cpuacct`/`cpu` or v2 `cpu.stat`.
//!
//! Names follow HuaTuo's `cpu_util` and `cpu_stat` collectors: `cpu_util_usr` (%),
//! `cpu_util_container_total`, `cpu_stat_container_nr_throttled`…

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;

use crate::cgroupfs::cpu::{read_cores, read_usage, wait_sum_percent, CgroupUsage, Throttling};
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::stat::{CpuTimes, MODES};
use crate::procfs::{clk_tck, softirqs, stat};
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
    containers: HashMap<String, ContainerBase>,
    buf: String,
}

#[derive(Debug, Clone, Copy)]
struct ContainerBase {
    at: Instant,
    usage: CgroupUsage,
    wait_sum_ns: Option<u64>,
    util: Util,
    /// `wait_sum_percent` over the last window (None until two samples with `wait_sum`).
    wait_percent: Option<f64>,
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

impl Cpu {
    fn collect_host(&self, out: &mut MetricSink, st: &mut State) -> Result<()> {
        let tck = clk_tck() as f64;
        let Some(stat) = self.stat.with(stat::parse)? else {
            return Ok(());
        };
        let now = Instant::now();
        let t = stat.total;
        // Utilisation since the previous baseline; scrapes closer than 1 s reuse the last
        // values (as HuaTuo does) so that rapid scrapes stay meaningful.
        match st.host_base {
            Some((at, base)) if now.duration_since(at).as_secs_f64() < 1.0 => {
                let _ = base;
            }
            base => {
                let b = base.map(|(_, b)| b).unwrap_or_default();
                let d = |a: u64, b: u64| a as f64 - b as f64;
                if let Some(u) = util_between(
                    d(t.total(), b.total()),
                    d(t.usr(), b.usr()),
                    d(t.sys(), b.sys()),
                    d(t.total() - t.0[3] - t.0[4], b.total() - b.0[3] - b.0[4]),
                ) {
                    st.host_util = u;
                }
                st.host_base = Some((now, t));
            }
        }
        out.single(
            "util_usr",
            "Host CPU time in user mode (user + nice), percent of all CPUs, since the previous sample (>= 1 s).",
            Kind::Gauge,
            st.host_util.usr,
        );
        out.single(
            "util_sys",
            "Host CPU time in kernel mode (system + irq + softirq), percent of all CPUs.",
            Kind::Gauge,
            st.host_util.sys,
        );
        let huatuo = out.huatuo_names();
        // HuaTuo's `util_total` is a gauge; `_total` is for counters in Prometheus' conventions.
        out.single(
            if huatuo { "util_total" } else { "util_busy" },
            "Host CPU busy time (all but idle and iowait), percent of all CPUs.",
            Kind::Gauge,
            st.host_util.total,
        );
        out.family(
            "seconds_total",
            "CPU time spent in each mode, summed over CPUs (/proc/stat).",
            Kind::Counter,
        );
        for (i, m) in MODES.iter().enumerate() {
            out.sample(&[("mode", m)], t.0[i] as f64 / tck);
        }
        if self.per_cpu {
            out.family(
                "cpu_seconds_total",
                "CPU time spent in each mode, per CPU (/proc/stat).",
                Kind::Counter,
            );
            let mut num = String::new();
            for (cpu, times) in &stat.per_cpu {
                num.clear();
                use std::fmt::Write as _;
                let _ = write!(num, "{cpu}");
                for (i, m) in MODES.iter().enumerate() {
                    out.sample(&[("cpu", &num), ("mode", m)], times.0[i] as f64 / tck);
                }
            }
        }
        out.single(
            "online",
            "CPUs listed in /proc/stat.",
            Kind::Gauge,
            stat.per_cpu.len() as f64,
        );
        let opt = |out: &mut MetricSink, name, help, kind, v: Option<u64>| {
            if let Some(v) = v {
                out.single(name, help, kind, v as f64);
            }
        };
        opt(
            out,
            "context_switches_total",
            "Context switches since boot.",
            Kind::Counter,
            stat.ctxt,
        );
        opt(
            out,
            "interrupts_total",
            "Interrupts serviced since boot.",
            Kind::Counter,
            stat.intr,
        );
        opt(
            out,
            "forks_total",
            "Processes and threads created since boot.",
            Kind::Counter,
            stat.processes,
        );
        opt(
            out,
            "boot_time_seconds",
            "Boot time, seconds since the epoch.",
            Kind::Gauge,
            stat.btime,
        );
        opt(
            out,
            "procs_running",
            "Tasks runnable right now.",
            Kind::Gauge,
            stat.procs_running,
        );
        opt(
            out,
            "procs_blocked",
            "Tasks blocked on I/O right now.",
            Kind::Gauge,
            stat.procs_blocked,
        );
        self.softirqs.with(|text| {
            let softirqs = softirqs::parse(text)?;
            out.family(
                "softirqs_total",
                "Softirqs raised since boot, by type, summed over CPUs (/proc/softirqs).",
                Kind::Counter,
            );
            for (name, n) in &softirqs {
                out.sample(&[("type", name)], *n as f64);
            }
            Ok(())
        })?;
        Ok(())
    }

    fn collect_containers(
        &self,
        ctx: &ScrapeContext,
        out: &mut MetricSink,
        st: &mut State,
    ) -> Result<()> {
        let snap = ctx.cgroups();
        if snap.containers.is_empty() {
            st.containers.clear();
            return Ok(());
        }
        let host_cores = std::thread::available_parallelism()
            .map(|n| n.get() as f64)
            .unwrap_or(1.0);
        let tck = clk_tck();
        let mut rows = Vec::with_capacity(snap.containers.len());
        let now = Instant::now();
        for c in &snap.containers {
            let (usage, throttling) = read_usage(&snap.layout, &c.rel, &mut st.buf, tck)?;
            let cores = read_cores(&snap.layout, &c.rel, &mut st.buf)?.unwrap_or(host_cores);
            let wait = throttling.as_ref().and_then(|t| t.wait_sum_ns);
            let (util, wait_percent) = match usage {
                None => (None, None),
                Some(u) => {
                    let entry = st.containers.entry(c.id.clone()).or_insert(ContainerBase {
                        at: now,
                        usage: u,
                        wait_sum_ns: wait,
                        util: Util::default(),
                        wait_percent: None,
                    });
                    let secs = now.duration_since(entry.at).as_secs_f64();
                    // Like HuaTuo: windows of at least 1 s; closer scrapes reuse the last values.
                    if secs >= 1.0 {
                        let wall = secs * 1e9 * cores;
                        let d = |a: u64, b: u64| a as f64 - b as f64;
                        let base = entry.usage;
                        entry.util = util_between(
                            wall,
                            d(u.user_ns, base.user_ns),
                            d(u.system_ns, base.system_ns),
                            d(u.usage_ns, base.usage_ns),
                        )
                        .unwrap_or(entry.util);
                        entry.wait_percent = match (entry.wait_sum_ns, wait) {
                            (Some(w0), Some(w1)) => {
                                wait_sum_percent((w0, base.usage_ns), (w1, u.usage_ns))
                            }
                            _ => None,
                        };
                        entry.at = now;
                        entry.usage = u;
                        entry.wait_sum_ns = wait;
                    }
                    (Some(entry.util), entry.wait_percent)
                }
            };
            rows.push((c, cores, util, throttling, wait_percent));
        }
        st.containers
            .retain(|id, _| snap.containers.iter().any(|c| &c.id == id));

        let huatuo = out.huatuo_names();
        out.family(
            "util_container_cores",
            "CPU cores a container may use: its CFS quota, else its cpuset, else all host CPUs.",
            Kind::Gauge,
        );
        for (c, cores, _, _, _) in &rows {
            out.sample(&c.labels(), *cores);
        }
        type Pick = fn(&Util) -> f64;
        let utils: [(&str, &str, Pick); 3] = [
            (
                "util_container_usr",
                "Container CPU time in user mode, percent of its cores.",
                |u| u.usr,
            ),
            (
                "util_container_sys",
                "Container CPU time in kernel mode, percent of its cores.",
                |u| u.sys,
            ),
            (
                "util_container_total",
                "Container CPU usage, percent of its cores.",
                |u| u.total,
            ),
        ];
        for (name, help, pick) in utils {
            let name = if !huatuo && name == "util_container_total" {
                "util_container_busy"
            } else {
                name
            };
            out.family(name, help, Kind::Gauge);
            for (c, _, util, _, _) in &rows {
                if let Some(u) = util {
                    out.sample(&c.labels(), pick(u));
                }
            }
        }
        type TPick = fn(&Throttling) -> Option<u64>;
        // HuaTuo: gauges, times in ns. Otherwise: counters with _total, times in seconds.
        let stats: [(&str, &str, &str, f64, TPick); 5] = [
            (
                "stat_container_nr_periods",
                "stat_container_periods_total",
                "CFS enforcement periods that elapsed.",
                1.0,
                |t| t.nr_periods,
            ),
            (
                "stat_container_nr_throttled",
                "stat_container_throttled_periods_total",
                "CFS periods in which the container was throttled.",
                1.0,
                |t| t.nr_throttled,
            ),
            (
                "stat_container_throttled_time",
                "stat_container_throttled_seconds_total",
                "Time the container was throttled.",
                1e-9,
                |t| t.throttled_ns,
            ),
            (
                "stat_container_nr_bursts",
                "stat_container_bursts_total",
                "CFS periods in which the container used burst capacity.",
                1.0,
                |t| t.nr_bursts,
            ),
            (
                "stat_container_burst_time",
                "stat_container_burst_seconds_total",
                "Time the container ran on burst capacity.",
                1e-9,
                |t| t.burst_ns,
            ),
        ];
        for (hname, name, help, scale, pick) in stats {
            if !rows.iter().any(|r| r.3.as_ref().and_then(pick).is_some()) {
                continue;
            }
            if huatuo {
                out.family(hname, help, Kind::Gauge);
            } else {
                out.family(name, help, Kind::Counter);
            }
            for (c, _, _, t, _) in &rows {
                if let Some(v) = t.as_ref().and_then(pick) {
                    out.sample(
                        &c.labels(),
                        if huatuo { v as f64 } else { v as f64 * scale },
                    );
                }
            }
        }
        // Run-queue wait (v1 `cpu.stat` `wait_sum`, present only with kernel.sched_schedstats=1).
        if !huatuo
            && rows
                .iter()
                .any(|r| r.3.is_some_and(|t| t.wait_sum_ns.is_some()))
        {
            out.family(
                "stat_container_wait_seconds_total",
                "Time the container's tasks waited on run queues (cpu.stat wait_sum; needs kernel.sched_schedstats=1).",
                Kind::Counter,
            );
            for (c, _, _, t, _) in &rows {
                if let Some(w) = t.and_then(|t| t.wait_sum_ns) {
                    out.sample(&c.labels(), w as f64 * 1e-9);
                }
            }
        }
        if rows.iter().any(|r| r.4.is_some()) {
            out.family(
                "stat_container_wait_sum_percent",
                "CFS cgroup runqueue wait as a percentage of total schedulable time (wait / (wait + usage) over the last >= 1 s; requires kernel.sched_schedstats=1).",
                Kind::Gauge,
            );
            for (c, _, _, _, w) in &rows {
                if let Some(w) = w {
                    out.sample(&c.labels(), *w);
                }
            }
        }
        Ok(())
    }
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
