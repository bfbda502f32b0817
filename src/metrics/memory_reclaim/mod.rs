//! `memory_reclaim`: time tasks stalled in memory reclaim, as Prometheus histograms: memcg limit
//! reclaim (host-wide and per container), global direct reclaim and direct compaction, from
//! tp_btf `mm_vmscan_memcg_reclaim_begin/end`, `mm_vmscan_direct_reclaim_begin/end` and
//! `mm_compaction_begin/end` (runs with `compact_control.direct_compaction` set; HuaTuo hooks
//! `try_to_compact_pages` with kprobes, which this project cannot use).
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `memory_reclaim_container_directstall` (count of
//! memcg reclaim stalls per container) and its `memory_free` collector's cumulative
//! `compaction_stall` and `allocpages_stall` (milliseconds) are exported too.

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::sync::Mutex;

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use crate::bpf::hist;
use crate::bpf::hist::Hist;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, RunContext, ScrapeContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("memory_reclaim", OpenMemoryReclaimSkel);
}
use skel::MemoryReclaimSkelBuilder;

pub const BOUNDS: [f64; 14] = [
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 2.5e-1, 5e-1, 1.0, 2.5, 5.0,
];
pub const CONTAINER_BOUNDS: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0];
const SLOTS: u32 = 3 * (BOUNDS.len() as u32 + 2);

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_reclaim",
    mode: Mode::Metric,
    description: "memory reclaim stall histograms: memcg (host, containers), direct reclaim and direct compaction (tp_btf mm_vmscan_*, mm_compaction_*); metrics only",
    requires: &[
        Requirement::BPF,
        Requirement::Btf,
        Requirement::BtfTracepoint("mm_vmscan_memcg_reclaim_begin"),
        Requirement::BtfTracepoint("mm_vmscan_memcg_reclaim_end"),
        Requirement::BtfTracepoint("mm_vmscan_direct_reclaim_begin"),
        Requirement::BtfTracepoint("mm_vmscan_direct_reclaim_end"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ReclaimConfig {
    containers: bool,
}

impl Default for ReclaimConfig {
    fn default() -> Self {
        ReclaimConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: ReclaimConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(MemoryReclaim {
        containers: cfg.containers,
        counters: Default::default(),
        maps: Mutex::new(None),
        compaction: Default::default(),
    })))
}

struct Maps {
    wanted: MapHandle,
    hist: MapHandle,
    current: HashSet<u64>,
}

struct MemoryReclaim {
    containers: bool,
    counters: crate::bpf::counters::CountersCell,
    maps: Mutex<Option<Maps>>,
    /// The compaction programs are attached (the kernel has the tracepoints).
    compaction: std::sync::atomic::AtomicBool,
}

impl Collector for MemoryReclaim {
    fn owns_program(&self) -> bool {
        true
    }

    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        // Kernels without CONFIG_COMPACTION have no compaction tracepoints: the reclaim
        // histograms still work.
        let compaction = ["mm_compaction_begin", "mm_compaction_end"]
            .iter()
            .all(|tp| Requirement::BtfTracepoint(tp).check(ctx.host()).is_ok());
        let mut storage = MaybeUninit::uninit();
        let loaded = BpfProgram::new(ctx).counters(&self.counters, SLOTS).load(
            MemoryReclaimSkelBuilder::default(),
            &mut storage,
            |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.hist_bounds_ns = hist::bounds_ns(&BOUNDS);
                rodata.hist_nbounds = BOUNDS.len() as u32;
                if !compaction {
                    open.progs.bq_compaction_begin.set_autoload(false);
                    open.progs.bq_compaction_end.set_autoload(false);
                }
                Ok(())
            },
        )?;
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = Some(Maps {
            wanted: MapHandle::try_from(&loaded.skel.maps.cg_wanted).context("cg_wanted map")?,
            hist: MapHandle::try_from(&loaded.skel.maps.cg_hist).context("cg_hist map")?,
            current: HashSet::new(),
        });
        let loaded = loaded.attach(&[])?;
        self.compaction
            .store(compaction, std::sync::atomic::Ordering::Relaxed);
        loaded.wait_for_stop();
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        let nb = BOUNDS.len();
        out.family(
            "memcg_stall_seconds",
            "Time tasks stalled reclaiming memory because their memory cgroup hit its limit (host-wide).",
            Kind::Histogram,
        );
        Hist::from_counters(&c, 0, nb, None).write(out, &[], &[], &BOUNDS, None);
        out.family(
            "direct_stall_seconds",
            "Time tasks stalled in global direct reclaim (allocation found too little free memory).",
            Kind::Histogram,
        );
        let direct = Hist::from_counters(&c, 1, nb, None);
        direct.write(out, &[], &[], &BOUNDS, None);
        let compact = self
            .compaction
            .load(std::sync::atomic::Ordering::Relaxed)
            .then(|| Hist::from_counters(&c, 2, nb, None));
        if let Some(h) = &compact {
            out.family(
                "compaction_stall_seconds",
                "Time tasks stalled in direct compaction (one observation per zone compacted for an allocation).",
                Kind::Histogram,
            );
            h.write(out, &[], &[], &BOUNDS, None);
        }
        if out.huatuo_names() {
            // HuaTuo's `memory_free` collector: cumulative stall time in ms, as gauges.
            out.set_collector("memory_free");
            if let Some(h) = &compact {
                out.single(
                    "compaction_stall",
                    "time stalled in direct compaction, cumulative milliseconds",
                    Kind::Gauge,
                    h.sum_ns as f64 / 1e6,
                );
            }
            out.single(
                "allocpages_stall",
                "time stalled in direct reclaim during page allocation, cumulative milliseconds",
                Kind::Gauge,
                direct.sum_ns as f64 / 1e6,
            );
            out.set_collector("memory_reclaim");
        }
        if !self.containers {
            return Ok(());
        }
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = maps.as_mut() else {
            return Ok(());
        };
        let snap = ctx.cgroups();
        let by_id = snap.by_cgroup_id("memory");
        let want: HashSet<u64> = by_id.keys().copied().collect();
        hist::sync_wanted(&m.wanted, &m.hist, &mut m.current, &want)?;
        let mut rows: Vec<(usize, Hist)> = hist::read_keyed(&m.hist, nb)?
            .into_iter()
            .filter_map(|(id, h)| by_id.get(&id).map(|&i| (i, h)))
            .collect();
        rows.sort_by_key(|(i, _)| *i);
        if out.huatuo_names() && !snap.containers.is_empty() {
            out.family(
                "container_directstall",
                "counter of cgroup reclaim when try_charge",
                Kind::Gauge,
            );
            for (i, ct) in snap.containers.iter().enumerate() {
                let n = rows
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map(|(_, h)| h.count())
                    .unwrap_or(0);
                out.sample(&ct.labels(), n as f64);
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        out.family(
            "container_memcg_stall_seconds",
            "Time the container's tasks stalled reclaiming memory at its memory cgroup limit.",
            Kind::Histogram,
        );
        for (i, h) in &rows {
            h.write(
                out,
                &snap.containers[*i].labels(),
                &[],
                &BOUNDS,
                Some(&CONTAINER_BOUNDS),
            );
        }
        Ok(())
    }
}
