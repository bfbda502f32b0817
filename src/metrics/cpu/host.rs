//! The host's CPU time and utilisation (`/proc/stat`) and softirq counts (`/proc/softirqs`).

use std::time::Instant;

use anyhow::Result;

use crate::exposition::{Kind, MetricSink};
use crate::procfs::stat::MODES;
use crate::procfs::{clk_tck, softirqs, stat};

use super::{util_between, Cpu, State};

impl Cpu {
    pub(super) fn collect_host(&self, out: &mut MetricSink, st: &mut State) -> Result<()> {
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
}
