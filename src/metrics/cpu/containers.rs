//! Per container: usage normalised to the container's cores, CFS throttling and run-queue wait
//! (cgroup v1 `cpuacct`/`cpu` or v2 `cpu.stat`, read by [`crate::cgroupfs::cpu`]).

use std::time::Instant;

use anyhow::Result;

use crate::cgroupfs::cpu::{read_cores, read_usage, wait_sum_percent, CgroupUsage, Throttling};
use crate::exposition::{Kind, MetricSink};
use crate::procfs::clk_tck;
use crate::tracer::ScrapeContext;

use super::{util_between, Cpu, State, Util};

/// A container's baseline (time, usage, `wait_sum` ns) and the last values computed from it.
#[derive(Debug, Clone, Copy)]
pub(super) struct ContainerBase {
    at: Instant,
    usage: CgroupUsage,
    wait_sum_ns: Option<u64>,
    util: Util,
    /// `wait_sum_percent` over the last window (None until two samples with `wait_sum`).
    wait_percent: Option<f64>,
}

impl Cpu {
    pub(super) fn collect_containers(
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
