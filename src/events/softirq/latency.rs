//! Delay from a softirq being raised to its handler running, per softirq type (and per CPU with
//! `per_cpu = true`), as Prometheus histograms. softirq.bpf.c keeps them at the start of the
//! tracer's per-CPU counters (tp_btf `irq/softirq_raise` and `irq/softirq_entry`); this module
//! sizes that part and exports it. Part of the `softirq` tracer.
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `softirq_latency{type,cpuid,zone}` counters for
//! NET_TX and NET_RX are exported too (zones <10 µs, <100 µs, <1 ms, ≥1 ms).

use anyhow::Result;

use crate::bpf::btf::EnumNames;
use crate::bpf::counters::PerCpuCounters;
use crate::bpf::hist::Hist;
use crate::exposition::{Kind, MetricSink};

/// Bucket upper bounds, seconds (includes HuaTuo's 10 µs, 100 µs and 1 ms zone edges).
pub const BOUNDS: [f64; 13] = [
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2,
];
const HUATUO_ZONES: [f64; 3] = [1e-5, 1e-4, 1e-3];
const ZONE_NAMES: [&str; 4] = ["0", "1", "2", "3"];
/// Softirq vectors with a histogram each.
pub const VECTORS: usize = super::skel::types::softirq_vec::VEC_SLOTS.0 as usize;
/// Counter slots the histograms take, before the long-run counters.
pub const SLOTS: u32 = (VECTORS * (BOUNDS.len() + 2)) as u32;

/// The raise→entry latency histograms of the `softirq` tracer.
pub struct Latency {
    per_cpu: bool,
}

impl Latency {
    pub fn new(per_cpu: bool) -> Latency {
        Latency { per_cpu }
    }

    pub fn collect(
        &self,
        c: &PerCpuCounters,
        names: &EnumNames,
        out: &mut MetricSink,
    ) -> Result<()> {
        let nb = BOUNDS.len();
        // Named vectors; without names, those that ever counted.
        let vectors: Vec<(usize, String)> = (0..VECTORS)
            .filter(|&v| {
                (v < names.len() && names.name(v as u32).parse::<u32>().is_err())
                    || Hist::from_counters(c, v, nb, None).count() > 0
            })
            .map(|v| (v, names.name(v as u32).into_owned()))
            .collect();
        out.family(
            "latency_seconds",
            "Delay from a softirq being raised to its handler starting, by softirq type.",
            Kind::Histogram,
        );
        for (v, name) in &vectors {
            Hist::from_counters(c, *v, nb, None).write(out, &[("type", name)], &[], &BOUNDS, None);
        }
        let cpu_names: Vec<String> = (0..c.cpus()).map(|i| i.to_string()).collect();
        if self.per_cpu {
            out.family(
                "cpu_latency_seconds",
                "Delay from a softirq being raised to its handler starting, by type and CPU.",
                Kind::Histogram,
            );
            for (v, name) in &vectors {
                for (cpu, cpu_name) in cpu_names.iter().enumerate() {
                    Hist::from_counters(c, *v, nb, Some(cpu)).write(
                        out,
                        &[("type", name), ("cpu", cpu_name)],
                        &[],
                        &BOUNDS,
                        None,
                    );
                }
            }
        }
        if out.huatuo_names() {
            out.family("latency", "softirq latency", Kind::Counter);
            for (v, name) in vectors
                .iter()
                .filter(|(_, n)| n == "NET_TX" || n == "NET_RX")
            {
                for (cpu, cpu_name) in cpu_names.iter().enumerate() {
                    let h = Hist::from_counters(c, *v, nb, Some(cpu));
                    for (z, n) in h.zones(&BOUNDS, &HUATUO_ZONES).iter().enumerate() {
                        out.sample(
                            &[("cpuid", cpu_name), ("type", name), ("zone", ZONE_NAMES[z])],
                            *n as f64,
                        );
                    }
                }
            }
        }
        Ok(())
    }
}
