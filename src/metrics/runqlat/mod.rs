//! `runqlat`: run-queue latency (runnable → running) as a Prometheus histogram, host-wide and
//! per container, from tp_btf `sched_wakeup`, `sched_wakeup_new` and `sched_switch`. Counts live
//! in BPF maps (per-CPU) and are read at scrape time; nothing is sent per event.
//!
//! Under the `huatuo_bamai` prefix HuaTuo's `runqlat_latency{zone}` counters are exported too
//! (zones [0,10), [10,20), [20,50), [50,∞) ms).

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::MapHandle;

use crate::bpf::hist;
use crate::bpf::hist::Hist;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::HostRoot;
use crate::metrics::cgroup;
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("runqlat");
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
    mode: Mode::Event,
    description: "run-queue latency histograms, host and per container (tp_btf sched_wakeup/sched_switch); metrics only",
    requires: &[
        Requirement::Root,
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
    let maps: SharedMaps = Arc::new(Mutex::new(None));
    if cfg.containers {
        *SHARED.lock().unwrap_or_else(|e| e.into_inner()) = Some((ctx.host.clone(), maps.clone()));
    }
    Ok(Tracer::Event(Box::new(Runqlat {
        host: ctx.host.clone(),
        containers: cfg.containers,
        counters: Default::default(),
        maps,
    })))
}

type SharedMaps = Arc<Mutex<Option<Maps>>>;

/// The per-container maps of the agent's runqlat tracer (when built with containers on), so
/// that other tracers can read the run-queue wait it measures (see [`container_wait_ns`]).
static SHARED: Mutex<Option<(HostRoot, SharedMaps)>> = Mutex::new(None);

/// Total run-queue wait (ns) per container id, from the running runqlat tracer's per-cgroup
/// histograms (their sums). `None` when runqlat is not running or keeps no container series.
/// The counts start when a container is first asked for (here or by a scrape; 0 until its first
/// wait) and restart with the tracer: callers treat a decrease as a rollback.
pub fn container_wait_ns() -> Option<HashMap<String, u64>> {
    let (host, maps) = SHARED.lock().unwrap_or_else(|e| e.into_inner()).clone()?;
    let mut maps = maps.lock().unwrap_or_else(|e| e.into_inner());
    let m = maps.as_mut()?;
    let snap = cgroup::snapshot(&host);
    let rows = container_rows(m, &snap).ok()?;
    let mut out: HashMap<String, u64> = rows
        .into_iter()
        .map(|(i, h)| (snap.containers[i].id.clone(), h.sum_ns))
        .collect();
    // A watched cgroup gets its histogram at its first wait: until then it waited 0 ns (so that
    // the first wait does not look like a new source to the reader).
    for c in &snap.containers {
        if !out.contains_key(&c.id)
            && snap
                .layout
                .dir("cpu", &c.rel)
                .is_some_and(|d| d.path.is_dir())
        {
            out.insert(c.id.clone(), 0);
        }
    }
    Some(out)
}

/// Syncs the BPF `cg_wanted` set with the containers of `snap` and reads their histograms:
/// (index into `snap.containers`, histogram), in container order.
fn container_rows(m: &mut Maps, snap: &cgroup::Snapshot) -> Result<Vec<(usize, Hist)>> {
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    for (i, ct) in snap.containers.iter().enumerate() {
        if let Some(id) = snap
            .layout
            .dir("cpu", &ct.rel)
            .and_then(|d| hist::cgroup_id(&d.path))
        {
            by_id.insert(id, i);
        }
    }
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
    host: HostRoot,
    containers: bool,
    /// Outlives a run: counters never go back when the tracer restarts.
    counters: crate::bpf::counters::CountersCell,
    maps: SharedMaps,
}

impl EventTracer for Runqlat {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = RunqlatSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.hist_bounds_ns = hist::bounds_ns(&BOUNDS);
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
        let _l1 = skel
            .progs
            .bq_sched_wakeup
            .attach()
            .context("attaching tp_btf/sched_wakeup")?;
        let _l2 = skel
            .progs
            .bq_sched_wakeup_new
            .attach()
            .context("attaching tp_btf/sched_wakeup_new")?;
        let _l3 = skel
            .progs
            .bq_sched_switch
            .attach()
            .context("attaching tp_btf/sched_switch")?;
        ctx.attached();
        while ctx.sleep(Duration::from_millis(200)) {}
        *self.maps.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
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
        let snap = cgroup::snapshot(&self.host);
        let rows = container_rows(m, &snap)?;
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
