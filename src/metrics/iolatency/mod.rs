//! `iolatency`: block request latency per disk as Prometheus histograms: queue→complete
//! (`q2c_seconds`, from the scheduler insert) and issue→complete (`d2c_seconds`, time in the
//! driver and device), from tp_btf `block_rq_insert`, `block_rq_issue`, `block_rq_complete`;
//! per container the same two (all disks together, few buckets), by the blkio cgroup the
//! request is charged to. Under HuaTuo's names also HuaTuo's zone counters: `blkdisk_q2c` and
//! `blkdisk_d2c` `{disk="maj:min",zone}` per disk and `container_blkdisk_q2c/d2c{zone}` per
//! container (all disks together: the container histograms are not kept per disk), zones
//! "0".."5" = [20,30], (30,50], (50,100], (100,200], (200,400], >400 ms; waits under 20 ms are
//! not counted (HuaTuo). No `blkdisk_freeze` (queue freezes are not traced).

use std::collections::{HashMap, HashSet};
use std::mem::MaybeUninit;
use std::sync::Mutex;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapHandle};

use crate::bpf::hist;
use crate::bpf::hist::Hist;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::diskstats;
use crate::tracer::program::{self, BpfProgram};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, RunContext, ScrapeContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("iolatency", OpenIolatencySkel);
}
use skel::IolatencySkelBuilder;

/// Bucket upper bounds, seconds (includes HuaTuo's 20/30/50/100/200/400 ms zone edges).
pub const BOUNDS: [f64; 17] = [
    5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2e-2, 3e-2, 5e-2, 1e-1, 2e-1, 4e-1, 1.0,
    2.5, 5.0,
];
/// The `le` buckets kept per container (a subset of [`BOUNDS`]): 2 families × 9 series.
pub const CONTAINER_BOUNDS: [f64; 6] = [5e-4, 2.5e-3, 1e-2, 5e-2, 2e-1, 1.0];

/// HuaTuo's zone edges, seconds (each one of [`BOUNDS`]); the zone below the first is dropped.
const HUATUO_ZONES: [f64; 6] = [2e-2, 3e-2, 5e-2, 1e-1, 2e-1, 4e-1];
const ZONE_NAMES: [&str; 6] = ["0", "1", "2", "3", "4", "5"];

/// HuaTuo's zone counts of a histogram: (zone name, count) from 20 ms up.
fn huatuo_zones(h: &Hist) -> impl Iterator<Item = (&'static str, u64)> {
    let z = h.zones(&BOUNDS, &HUATUO_ZONES);
    ZONE_NAMES.into_iter().zip(z.into_iter().skip(1))
}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "iolatency",
    mode: Mode::Metric,
    description: "block I/O latency histograms per disk, queue→complete and issue→complete (tp_btf block_rq_*); metrics only",
    requires: &[
        Requirement::BPF,
        Requirement::Btf,
        Requirement::BtfTracepoint("block_rq_insert"),
        Requirement::BtfTracepoint("block_rq_issue"),
        Requirement::BtfTracepoint("block_rq_complete"),
    ],
    default_enabled: true,
    build,
};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct IoLatencyConfig {
    containers: bool,
}

impl Default for IoLatencyConfig {
    fn default() -> Self {
        IoLatencyConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: IoLatencyConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(IoLatency {
        diskstats: ProcFile::new(ctx.host.proc("diskstats")),
        hist: Mutex::new(None),
        containers: cfg.containers,
        cg: Mutex::new(None),
    })))
}

struct CgMaps {
    wanted: MapHandle,
    hist: MapHandle,
    current: HashSet<u64>,
}

struct IoLatency {
    diskstats: ProcFile,
    /// Kept after a run ends so counts do not vanish between restarts.
    hist: Mutex<Option<MapHandle>>,
    containers: bool,
    /// Per-container maps of the running program.
    cg: Mutex<Option<CgMaps>>,
}

const KIND_Q2C: u64 = 0;
const KIND_D2C: u64 = 1;
const FAMILIES: [(u64, &str, &str); 2] = [
    (
        KIND_Q2C,
        "q2c_seconds",
        "Block request latency from scheduler insert to completion, per disk.",
    ),
    (
        KIND_D2C,
        "d2c_seconds",
        "Block request latency from issue to the driver to completion, per disk.",
    ),
];
const CONTAINER_FAMILIES: [(u64, &str, &str); 2] = [
    (
        KIND_Q2C,
        "container_q2c_seconds",
        "Block request latency from scheduler insert to completion of the container's requests (by blkio cgroup), all disks.",
    ),
    (
        KIND_D2C,
        "container_d2c_seconds",
        "Block request latency from issue to the driver to completion of the container's requests (by blkio cgroup), all disks.",
    ),
];

/// The kernel's device number (`MKDEV`: major << 20 | minor, as the BPF side keys requests)
/// → device name, from /proc/diskstats.
fn device_names(text: &str) -> HashMap<u64, String> {
    diskstats::devices(text)
        .map(|(major, minor, name)| (u64::from(major) << 20 | u64::from(minor), name.to_string()))
        .collect()
}

impl Collector for IoLatency {
    fn owns_program(&self) -> bool {
        true
    }

    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let previous = self.hist.lock().unwrap_or_else(|e| e.into_inner()).take();
        let loaded =
            BpfProgram::new(ctx).load(IolatencySkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.hist_bounds_ns = hist::bounds_ns(&BOUNDS);
                rodata.hist_nbounds = BOUNDS.len() as u32;
                // The disk histograms outlive a run: counts never go back on a restart.
                if let Some(h) = &previous {
                    open.maps
                        .disk_hist
                        .reuse_fd(std::os::fd::AsFd::as_fd(h))
                        .context("reusing the histogram map")?;
                }
                Ok(())
            })?;
        let maps = &loaded.skel.maps;
        *self.hist.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(MapHandle::try_from(&maps.disk_hist).context("disk_hist map")?);
        *self.cg.lock().unwrap_or_else(|e| e.into_inner()) = Some(CgMaps {
            wanted: MapHandle::try_from(&maps.cg_wanted).context("cg_wanted map")?,
            hist: MapHandle::try_from(&maps.cg_hist).context("cg_hist map")?,
            current: HashSet::new(),
        });
        loaded.attach(&[])?.wait_for_stop();
        *self.cg.lock().unwrap_or_else(|e| e.into_inner()) = None;
        Ok(())
    }

    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let guard = self.hist.lock().unwrap_or_else(|e| e.into_inner());
        let Some(map) = guard.as_ref() else {
            return Ok(());
        };
        let mut rows = hist::read_keyed(map, BOUNDS.len())?;
        drop(guard);
        rows.sort_by_key(|(k, _)| *k);
        let names = self
            .diskstats
            .with(|t| Ok(device_names(t)))?
            .unwrap_or_default();
        let label = |dev: u64| {
            names
                .get(&dev)
                .cloned()
                .unwrap_or_else(|| format!("{}:{}", dev >> 20, dev & 0xfffff))
        };
        for (kind, name, help) in FAMILIES {
            out.family(name, help, Kind::Histogram);
            for (k, h) in rows.iter().filter(|(k, _)| k & 1 == kind) {
                let dev = label(k >> 1);
                Hist::write(h, out, &[("device", &dev)], &[], &BOUNDS, None);
            }
        }
        if out.huatuo_names() {
            for (kind, name, help) in [
                (KIND_Q2C, "blkdisk_q2c", "the disk q2c latency"),
                (KIND_D2C, "blkdisk_d2c", "the disk d2c latency"),
            ] {
                out.family(name, help, Kind::Gauge);
                for (k, h) in rows.iter().filter(|(k, _)| k & 1 == kind) {
                    let dev = k >> 1;
                    let disk = format!("{}:{}", dev >> 20, dev & 0xfffff);
                    for (zone, n) in huatuo_zones(h) {
                        out.sample(&[("disk", &disk), ("zone", zone)], n as f64);
                    }
                }
            }
        }
        if self.containers {
            self.collect_containers(ctx, out)?;
        }
        Ok(())
    }
}

impl IoLatency {
    fn collect_containers(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut guard = self.cg.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = guard.as_mut() else {
            return Ok(());
        };
        let snap = ctx.cgroups();
        let by_id = snap.by_cgroup_id("blkio");
        let want: HashSet<u64> = by_id.keys().copied().collect();
        let hist = &m.hist;
        hist::sync_wanted_with(&m.wanted, &mut m.current, &want, |id| {
            for kind in [KIND_Q2C, KIND_D2C] {
                let _ = hist.delete(&(id << 1 | kind).to_ne_bytes());
            }
        })?;
        let mut rows: Vec<(usize, u64, Hist)> = hist::read_keyed(&m.hist, BOUNDS.len())?
            .into_iter()
            .filter_map(|(k, h)| by_id.get(&(k >> 1)).map(|&i| (i, k & 1, h)))
            .collect();
        drop(guard);
        rows.sort_by_key(|(i, kind, _)| (*i, *kind));
        for (kind, name, help) in CONTAINER_FAMILIES {
            if !rows.iter().any(|(_, k, _)| *k == kind) {
                continue;
            }
            out.family(name, help, Kind::Histogram);
            for (i, _, h) in rows.iter().filter(|(_, k, _)| *k == kind) {
                h.write(
                    out,
                    &snap.containers[*i].labels(),
                    &[],
                    &BOUNDS,
                    Some(&CONTAINER_BOUNDS),
                );
            }
        }
        if out.huatuo_names() {
            for (kind, name, help) in [
                (
                    KIND_Q2C,
                    "container_blkdisk_q2c",
                    "container blkio q2c latency",
                ),
                (
                    KIND_D2C,
                    "container_blkdisk_d2c",
                    "container blkio d2c latency",
                ),
            ] {
                if !rows.iter().any(|(_, k, _)| *k == kind) {
                    continue;
                }
                out.family(name, help, Kind::Gauge);
                for (i, _, h) in rows.iter().filter(|(_, k, _)| *k == kind) {
                    let labels = snap.containers[*i].labels();
                    for (zone, n) in huatuo_zones(h) {
                        let mut l = labels.to_vec();
                        l.push(("zone", zone));
                        out.sample(&l, n as f64);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huatuo_zones_start_at_20ms() {
        // One count per bucket of BOUNDS (and +Inf).
        let h = Hist {
            counts: vec![1; BOUNDS.len() + 1],
            sum_ns: 0,
        };
        let z: Vec<(&str, u64)> = huatuo_zones(&h).collect();
        // ≤30 ms: the 30 ms bucket; ≤50; ≤100; ≤200; ≤400; above: 1, 2.5, 5 s and +Inf.
        assert_eq!(
            z,
            [("0", 1), ("1", 1), ("2", 1), ("3", 1), ("4", 1), ("5", 4)]
        );
    }

    #[test]
    fn names_devices() {
        let m = device_names("   7       0 loop0 0 0\n 254 1 vda1 1 2\nbad\n");
        assert_eq!(m[&(7 << 20)], "loop0");
        assert_eq!(m[&(254 << 20 | 1)], "vda1");
    }
}
