//! `runqlat`: run-queue latency (runnable → running) as a Prometheus histogram, host-wide and
//! per container, from tp_btf `sched_wakeup`, `sched_wakeup_new` and `sched_switch`. Counts live
//! in BPF maps (per-CPU) and are read at scrape time; nothing is sent per event.
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `runqlat_latency{zone}` counters are exported too
//! (zones [0,10), [10,20), [20,50), [50,∞) ms).

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use libbpf_rs::MapHandle;

use crate::bpf::hist;
use crate::bpf::hist::Hist;
use crate::config::ConfigResult;
use crate::container::view::ContainerCgroups;
use crate::exposition::{Kind, MetricSink};
use crate::tracer::context::RunqueueWait;
use crate::tracer::program::{self, BpfProgram};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, RunContext, ScrapeContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("runqlat", OpenRunqlatSkel);
}
use skel::RunqlatSkelBuilder;

/// Bucket upper bounds, seconds (includes HuaTuo's 10, 20 and 50 ms zone edges).
pub const BOUNDS: [f64; 17] = [
    5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1,
    2.5e-1, 5e-1, 1.0,
];
/// The buckets written per container (cardinality budget).
pub const CONTAINER_BOUNDS: [f64; 7] = [1e-4, 1e-3, 1e-2, 2e-2, 5e-2, 1e-1, 1.0];
const HUATUO_ZONES: [f64; 3] = [1e-2, 2e-2, 5e-2];
const ZONE_NAMES: [&str; 4] = ["0", "1", "2", "3"];
const SLOTS: u32 = BOUNDS.len() as u32 + 2;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "runqlat",
    mode: Mode::Metric,
    description: "run-queue latency histograms, host and per container (tp_btf sched_wakeup/sched_switch); metrics only",
    requires: &[
        Requirement::BPF,
        Requirement::Btf,
        Requirement::BtfTracepoint("sched_switch"),
        Requirement::BtfTracepoint("sched_wakeup"),
        Requirement::BtfTracepoint("sched_wakeup_new"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RunqlatConfig {
    containers: bool,
}

impl Default for RunqlatConfig {
    fn default() -> Self {
        RunqlatConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: RunqlatConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Runqlat {
        containers: cfg.containers,
        counters: Default::default(),
        maps: Arc::new(Mutex::new(None)),
    })))
}

type SharedMaps = Arc<Mutex<Option<Maps>>>;

/// What runqlat publishes for other tracers while it runs with container series on: the
/// per-container run-queue wait its histograms measure.
struct ContainerWait(SharedMaps);

impl RunqueueWait for ContainerWait {
    /// The sums of the per-container histograms. The counts start when a container is first
    /// asked for (here or by a scrape; 0 until its first wait) and restart with the tracer:
    /// callers treat a decrease as a rollback.
    fn wait_ns(&self, cgroups: &ContainerCgroups) -> Option<HashMap<String, u64>> {
        let mut maps = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let m = maps.as_mut()?;
        let rows = container_rows(m, cgroups).ok()?;
        let mut out: HashMap<String, u64> = rows
            .into_iter()
            .map(|(i, h)| (cgroups.containers[i].id.clone(), h.sum_ns))
            .collect();
        // A watched cgroup gets its histogram at its first wait: until then it waited 0 ns (so
        // that the first wait does not look like a new source to the reader).
        for c in &cgroups.containers {
            if !out.contains_key(&c.id)
                && cgroups
                    .layout
                    .dir("cpu", &c.rel)
                    .is_some_and(|d| d.path.is_dir())
            {
                out.insert(c.id.clone(), 0);
            }
        }
        Some(out)
    }
}

/// Syncs the BPF `cg_wanted` set with the containers of `snap` and reads their histograms:
/// (index into `snap.containers`, histogram), in container order.
fn container_rows(m: &mut Maps, snap: &ContainerCgroups) -> Result<Vec<(usize, Hist)>> {
    let by_id = snap.by_cgroup_id("cpu");
    let want: HashSet<u64> = by_id.keys().copied().collect();
    hist::sync_wanted(&m.wanted, &m.hist, &mut m.current, &want)?;
    let mut rows: Vec<(usize, Hist)> = hist::read_keyed(&m.hist, BOUNDS.len())?
        .into_iter()
        .filter_map(|(id, h)| by_id.get(&id).map(|&i| (i, h)))
        .collect();
    rows.sort_by_key(|(i, _)| *i);
    Ok(rows)
}

struct Maps {
    wanted: MapHandle,
    hist: MapHandle,
    current: HashSet<u64>,
}

struct Runqlat {
    containers: bool,
    /// Outlives a run: counters never go back when the tracer restarts.
    counters: crate::bpf::counters::CountersCell,
    maps: SharedMaps,
}

impl Collector for Runqlat {
    fn owns_program(&self) -> bool {
        true
    }

    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let loaded = BpfProgram::new(ctx).counters(&self.counters, SLOTS).load(
            RunqlatSkelBuilder::default(),
            &mut storage,
            |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.hist_bounds_ns = hist::bounds_ns(&BOUNDS);
                rodata.hist_nbounds = BOUNDS.len() as u32;
                Ok(())
            },
        )?;
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = Some(Maps {
            wanted: MapHandle::try_from(&loaded.skel.maps.cg_wanted).context("cg_wanted map")?,
            hist: MapHandle::try_from(&loaded.skel.maps.cg_hist).context("cg_hist map")?,
            current: HashSet::new(),
        });
        if self.containers {
            ctx.shared()
                .publish_runqueue_wait(Some(Arc::new(ContainerWait(self.maps.clone()))));
        }
        let loaded = loaded.attach(&[])?;
        loaded.wait_for_stop();
        ctx.shared().publish_runqueue_wait(None);
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        let host = Hist::from_counters(&c, 0, BOUNDS.len(), None);
        out.family(
            "latency_seconds",
            "Time tasks waited on a run queue between becoming runnable and running (host).",
            Kind::Histogram,
        );
        host.write(out, &[], &[], &BOUNDS, None);
        let huatuo = out.huatuo_names();
        if huatuo {
            out.family(
                "latency",
                "cpu run queue latency for the host",
                Kind::Counter,
            );
            for (z, n) in host.zones(&BOUNDS, &HUATUO_ZONES).iter().enumerate() {
                out.sample(&[("zone", ZONE_NAMES[z])], *n as f64);
            }
        }
        if !self.containers {
            return Ok(());
        }
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = maps.as_mut() else {
            return Ok(());
        };
        let snap = ctx.cgroups();
        let rows = container_rows(m, snap)?;
        drop(maps);
        if rows.is_empty() {
            return Ok(());
        }
        out.family(
            "container_latency_seconds",
            "Time the container's tasks waited on a run queue before running.",
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
        if huatuo {
            out.family(
                "container_latency",
                "cpu run queue latency for the containers",
                Kind::Counter,
            );
            for (i, h) in &rows {
                for (z, n) in h.zones(&BOUNDS, &HUATUO_ZONES).iter().enumerate() {
                    out.sample2(
                        &snap.containers[*i].labels(),
                        &[("zone", ZONE_NAMES[z])],
                        *n as f64,
                    );
                }
            }
        }
        Ok(())
    }
}
