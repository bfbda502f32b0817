//! `memory_reclaim`: time tasks stalled in memory reclaim, as Prometheus histograms: memcg limit
//! reclaim (host-wide and per container) and global direct reclaim, from tp_btf
//! `mm_vmscan_memcg_reclaim_begin/end` and `mm_vmscan_direct_reclaim_begin/end`.
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `memory_reclaim_container_directstall` (count of
//! memcg reclaim stalls per container) is exported too.

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::MapHandle;

use crate::config::ConfigResult;
use crate::host::HostRoot;
use crate::metrics::bpfhist::{self, Hist};
use crate::metrics::cgroup;
use crate::metrics::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("memory_reclaim");
}
use skel::MemoryReclaimSkelBuilder;

pub const BOUNDS: [f64; 14] = [
    1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 1e-1, 2.5e-1, 5e-1, 1.0, 2.5, 5.0,
];
pub const CONTAINER_BOUNDS: [f64; 6] = [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0];
const SLOTS: u32 = 2 * (BOUNDS.len() as u32 + 2);

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_reclaim",
    mode: Mode::Event,
    description: "memory reclaim stall histograms: memcg (host, containers) and direct reclaim (tp_btf mm_vmscan_*); metrics only",
    requires: &[
        Requirement::Root,
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
    Ok(Tracer::Event(Box::new(MemoryReclaim {
        host: ctx.host.clone(),
        containers: cfg.containers,
        counters: Default::default(),
        maps: Mutex::new(None),
    })))
}

struct Maps {
    wanted: MapHandle,
    hist: MapHandle,
    current: HashSet<u64>,
}

struct MemoryReclaim {
    host: HostRoot,
    containers: bool,
    counters: crate::bpf::counters::CountersCell,
    maps: Mutex<Option<Maps>>,
}

impl EventTracer for MemoryReclaim {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = MemoryReclaimSkelBuilder::default()
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
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = Some(Maps {
            wanted: MapHandle::try_from(&skel.maps.cg_wanted).context("cg_wanted map")?,
            hist: MapHandle::try_from(&skel.maps.cg_hist).context("cg_hist map")?,
            current: HashSet::new(),
        });
        let p = &skel.progs;
        let _l1 = p
            .bq_memcg_reclaim_begin
            .attach()
            .context("attaching mm_vmscan_memcg_reclaim_begin")?;
        let _l2 = p
            .bq_memcg_reclaim_end
            .attach()
            .context("attaching mm_vmscan_memcg_reclaim_end")?;
        let _l3 = p
            .bq_direct_reclaim_begin
            .attach()
            .context("attaching mm_vmscan_direct_reclaim_begin")?;
        let _l4 = p
            .bq_direct_reclaim_end
            .attach()
            .context("attaching mm_vmscan_direct_reclaim_end")?;
        ctx.attached();
        while ctx.sleep(Duration::from_millis(200)) {}
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
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
        Hist::from_counters(&c, 1, nb, None).write(out, &[], &[], &BOUNDS, None);
        if !self.containers {
            return Ok(());
        }
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = maps.as_mut() else {
            return Ok(());
        };
        let snap = cgroup::snapshot(&self.host);
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for (i, ct) in snap.containers.iter().enumerate() {
            if let Some(id) = snap
                .layout
                .dir("memory", &ct.rel)
                .and_then(|d| bpfhist::cgroup_id(&d.path))
            {
                by_id.insert(id, i);
            }
        }
        let want: HashSet<u64> = by_id.keys().copied().collect();
        bpfhist::sync_wanted(&m.wanted, &m.hist, &mut m.current, &want)?;
        let mut rows: Vec<(usize, Hist)> = bpfhist::read_keyed(&m.hist, nb)?
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
