//! Delay from a softirq being raised to its handler running, per softirq type (and per CPU with
//! `per_cpu = true`), as Prometheus histograms, from tp_btf `irq/softirq_raise` and
//! `irq/softirq_entry` (softirq_latency.bpf.c). Part of the `softirq` tracer.
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `softirq_latency{type,cpuid,zone}` counters for
//! NET_TX and NET_RX are exported too (zones <10 µs, <100 µs, <1 ms, ≥1 ms).

use std::mem::MaybeUninit;
use std::sync::RwLock;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};

use crate::bpf::btf::EnumNames;
use crate::metrics::bpfhist::{self, Hist};
use crate::metrics::{Kind, MetricSink};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("softirq_latency");
}
use skel::SoftirqLatencySkelBuilder;

/// Bucket upper bounds, seconds (includes HuaTuo's 10 µs, 100 µs and 1 ms zone edges).
pub const BOUNDS: [f64; 13] = [
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2,
];
const HUATUO_ZONES: [f64; 3] = [1e-5, 1e-4, 1e-3];
const ZONE_NAMES: [&str; 4] = ["0", "1", "2", "3"];
/// Mirrors SOFTIRQ_SLOTS in softirq.bpf.c.
const VECTORS: usize = 16;
const SLOTS: u32 = (VECTORS * (BOUNDS.len() + 2)) as u32;

/// The raise→entry latency histograms of the `softirq` tracer.
pub struct Latency {
    per_cpu: bool,
    names: RwLock<EnumNames>,
    counters: crate::bpf::counters::CountersCell,
}

impl Latency {
    pub fn new(per_cpu: bool) -> Latency {
        Latency {
            per_cpu,
            names: RwLock::new(EnumNames::default()),
            counters: Default::default(),
        }
    }

    /// Loads and attaches the histogram programs, runs `f` while they are attached, detaches.
    pub fn with_attached<R>(&self, names: EnumNames, f: impl FnOnce() -> R) -> Result<R> {
        {
            *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
        }
        let mut storage = MaybeUninit::uninit();
        let mut open = SoftirqLatencySkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.hist_bounds_ns = bpfhist::bounds_ns(&BOUNDS);
        rodata.hist_nbounds = BOUNDS.len() as u32;
        rodata.counter_slots = SLOTS;
        self.counters.prepare(&mut open.maps.counters, SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, SLOTS)?;
        let _l1 = skel
            .progs
            .bq_softirq_raise
            .attach()
            .context("attaching tp_btf/softirq_raise")?;
        let _l2 = skel
            .progs
            .bq_softirq_entry
            .attach()
            .context("attaching tp_btf/softirq_entry")?;
        Ok(f())
    }

    pub fn collect(&self, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let nb = BOUNDS.len();
        // Named vectors; without names, those that ever counted.
        let vectors: Vec<(usize, String)> = (0..VECTORS)
            .filter(|&v| {
                (v < names.len() && names.name(v as u32).parse::<u32>().is_err())
                    || Hist::from_counters(&c, v, nb, None).count() > 0
            })
            .map(|v| (v, names.name(v as u32).into_owned()))
            .collect();
        out.family(
            "latency_seconds",
            "Delay from a softirq being raised to its handler starting, by softirq type.",
            Kind::Histogram,
        );
        for (v, name) in &vectors {
            Hist::from_counters(&c, *v, nb, None).write(out, &[("type", name)], &[], &BOUNDS, None);
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
                    Hist::from_counters(&c, *v, nb, Some(cpu)).write(
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
                    let h = Hist::from_counters(&c, *v, nb, Some(cpu));
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
