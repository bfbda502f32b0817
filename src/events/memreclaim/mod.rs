//! `memreclaim`: tasks stalled in memory reclaim longer than a threshold (default 900 ms):
//! direct reclaim (the page allocator is short of memory) and memcg reclaim (a memory cgroup at
//! its limit reclaims from itself).
//!
//! Hooks: `tp_btf/mm_vmscan_direct_reclaim_begin/_end` and `mm_vmscan_memcg_reclaim_begin/_end`
//! (HuaTuo uses a kprobe pair on `try_to_free_pages`). Every reclaim is timed and counted in
//! BPF; only stalls over the threshold pass the rate limit and reach user space.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("memreclaim");
}
use skel::types::reclaim_event;
use skel::MemreclaimSkelBuilder;

// Mirrors memreclaim.h.
const KINDS: [&str; 2] = ["direct", "memcg"];
const SLOT_SUPPRESSED: usize = 4;
const SLOT_RINGBUF_FULL: usize = 5;
const COUNTER_SLOTS: u32 = 6;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memreclaim",
    mode: Mode::Event,
    description:
        "direct and memcg reclaim stalls over a threshold (tp_btf/mm_vmscan_*_reclaim_begin/end)",
    requires: &[
        Requirement::Root,
        Requirement::Btf,
        Requirement::BtfTracepoint("mm_vmscan_direct_reclaim_begin"),
        Requirement::BtfTracepoint("mm_vmscan_direct_reclaim_end"),
        Requirement::BtfTracepoint("mm_vmscan_memcg_reclaim_begin"),
        Requirement::BtfTracepoint("mm_vmscan_memcg_reclaim_end"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemreclaimConfig {
    /// A reclaim that takes at least this long is recorded.
    pub threshold_ms: u64,
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
}

impl Default for MemreclaimConfig {
    fn default() -> Self {
        MemreclaimConfig {
            threshold_ms: 900,
            max_events_per_second: 100,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: MemreclaimConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.threshold_ms", ctx.section),
        cfg.threshold_ms,
        1,
        600_000,
    )?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        100_000,
    )?;
    Ok(Tracer::Event(Box::new(Memreclaim {
        cfg,
        counters: Default::default(),
    })))
}

pub struct Memreclaim {
    cfg: MemreclaimConfig,
    counters: crate::bpf::counters::CountersCell,
}

impl EventTracer for Memreclaim {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = MemreclaimSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.threshold_ns = self.cfg.threshold_ms * 1_000_000;
        rodata.max_events_per_second = self.cfg.max_events_per_second;
        rodata.counter_slots = COUNTER_SLOTS;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        // Ends first: a begin without its end would only wait in the LRU map.
        let _links = [
            skel.progs.bq_direct_end.attach(),
            skel.progs.bq_memcg_end.attach(),
            skel.progs.bq_direct_begin.attach(),
            skel.progs.bq_memcg_begin.attach(),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("attaching to the vmscan reclaim tracepoints")?;
        ctx.attached();

        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        let threshold_ns = self.cfg.threshold_ms * 1_000_000;
        bq_bpf::poll_ring_buffer(&|| ctx.stopping(), &skel.maps.events, |data| {
            if let Some(e) = bq_bpf::read_record::<reclaim_event>(data) {
                record(ctx, &e, clock_offset, threshold_ns);
            }
            0
        })?;
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Reclaim stalls at or over the threshold, by kind (direct or memcg).",
            Kind::Counter,
        );
        for (i, kind) in KINDS.iter().enumerate() {
            out.sample(&[("kind", kind)], c.get(KINDS.len() + i) as f64);
        }
        out.family(
            "reclaims_total",
            "Reclaims seen, by kind (direct or memcg), whatever they took.",
            Kind::Counter,
        );
        for (i, kind) in KINDS.iter().enumerate() {
            out.sample(&[("kind", kind)], c.get(i) as f64);
        }
        out.single(
            "suppressed_total",
            "Reclaim stalls over the threshold not recorded because of the rate limit.",
            Kind::Counter,
            c.get(SLOT_SUPPRESSED) as f64,
        );
        out.single(
            "ringbuf_lost_total",
            "Reclaim stalls that passed the rate limit but found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct ReclaimData {
    pid: u32,
    tid: u32,
    comm: String,
    /// `direct` (page allocator) or `memcg` (memory cgroup at its limit).
    kind: &'static str,
    duration_ns: u64,
    threshold_ns: u64,
    nr_reclaimed: u64,
    order: i32,
    gfp_flags: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_cgroup_path: Option<String>,
    cpu: u32,
}

fn record(ctx: &RunContext, e: &reclaim_event, clock_offset: i64, threshold_ns: u64) {
    let path = (e.memcg_id != 0).then(|| {
        bq_bpf::cgroup_path_from_names(
            e.memcg_path.depth,
            e.memcg_path.truncated != 0,
            e.memcg_path.names.iter().map(|n| &n.s[..]),
        )
    });
    let container = ctx.container_of_memcg(e.memcg_id, path.as_deref());
    let data = ReclaimData {
        pid: e.pid,
        tid: e.tid,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        kind: KINDS.get(e.kind as usize).copied().unwrap_or("unknown"),
        duration_ns: e.duration_ns,
        threshold_ns,
        nr_reclaimed: e.nr_reclaimed,
        order: e.order,
        gfp_flags: format!("{:#x}", e.gfp_flags),
        memory_cgroup_path: path,
        cpu: e.cpu,
    };
    ctx.save_data_at(e.time_ns as i64 + clock_offset, container, &data);
}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for reclaim_event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_ranges_name_the_key() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.memreclaim",
        };
        let t: toml::Table = toml::from_str("threshold_ms = 0").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.memreclaim.threshold_ms"), "{err}");
        let t: toml::Table = toml::from_str("threshold_ms = 1").unwrap();
        assert!(build(&bctx, &t).is_ok());
        let t: toml::Table = toml::from_str("threshold = 1").unwrap();
        assert!(build(&bctx, &t).is_err());
    }
}
