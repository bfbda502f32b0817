//! `memreclaim`: tasks stalled in memory reclaim longer than a threshold (default 900 ms):
//! direct reclaim (the page allocator is short of memory) and memcg reclaim (a memory cgroup at
//! its limit reclaims from itself).
//!
//! Hooks: `tp_btf/mm_vmscan_direct_reclaim_begin/_end` and `mm_vmscan_memcg_reclaim_begin/_end`
//! (HuaTuo uses a kprobe pair on `try_to_free_pages`). Every reclaim is timed and counted in
//! BPF; only stalls over the threshold pass the rate limit and reach user space.

use std::mem::MaybeUninit;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("memreclaim", OpenMemreclaimSkel);
}
use skel::types::{counter_slot as Slot, reclaim_event, reclaim_kind};
use skel::MemreclaimSkelBuilder;

// SAFETY: generated from memreclaim.h: integers and arrays of integers only.
unsafe impl Plain for reclaim_event {}

/// The label of each kind of reclaim.
const KIND_NAMES: [(reclaim_kind, &str); 2] = [
    (reclaim_kind::KIND_DIRECT, "direct"),
    (reclaim_kind::KIND_MEMCG, "memcg"),
];
const _: () = assert!(KIND_NAMES.len() == reclaim_kind::KINDS.0 as usize);

fn kind_name(kind: u32) -> &'static str {
    KIND_NAMES
        .iter()
        .find(|(k, _)| k.0 == kind)
        .map_or("unknown", |(_, name)| name)
}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memreclaim",
    mode: Mode::Event,
    description:
        "direct and memcg reclaim stalls over a threshold (tp_btf/mm_vmscan_*_reclaim_begin/end)",
    requires: &[
        Requirement::BPF,
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
        let threshold_ns = self.cfg.threshold_ms * 1_000_000;
        let mut storage = MaybeUninit::uninit();
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .load(MemreclaimSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.threshold_ns = threshold_ns;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                Ok(())
            })?
            // Ends first: a begin without its end would only wait in the task's storage.
            .attach(&["bq_direct_end", "bq_memcg_end"])?
            .poll(|e: &reclaim_event, clock| save(ctx, e, clock, threshold_ns))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Reclaim stalls at or over the threshold, by kind (direct or memcg).",
            Kind::Counter,
        );
        for (kind, name) in KIND_NAMES {
            let slot = Slot::SLOT_SLOW.0 + kind.0;
            out.sample(&[("kind", name)], c.get(slot as usize) as f64);
        }
        out.family(
            "reclaims_total",
            "Reclaims seen, by kind (direct or memcg), whatever they took.",
            Kind::Counter,
        );
        for (kind, name) in KIND_NAMES {
            let slot = Slot::SLOT_SEEN.0 + kind.0;
            out.sample(&[("kind", name)], c.get(slot as usize) as f64);
        }
        Refused::new(
            "Reclaim stalls over the threshold",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .write(&c, out);
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

/// One stall as the kernel reported it (no lookups: what the record says alone).
fn decode(e: &reclaim_event, threshold_ns: u64) -> ReclaimData {
    ReclaimData {
        pid: e.pid,
        tid: e.tid,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        kind: kind_name(e.kind),
        duration_ns: e.duration_ns,
        threshold_ns,
        nr_reclaimed: e.nr_reclaimed,
        order: e.order,
        gfp_flags: format!("{:#x}", e.gfp_flags),
        memory_cgroup_path: (e.memcg_id != 0).then(|| {
            bq_bpf::cgroup_path_from_names(
                e.memcg_path.depth,
                e.memcg_path.truncated != 0,
                e.memcg_path.names.iter().map(|n| &n.s[..]),
            )
        }),
        cpu: e.cpu,
    }
}

/// Saves one stall, attributed to the reclaiming task's container.
fn save(ctx: &RunContext, e: &reclaim_event, clock: &BootClock, threshold_ns: u64) {
    let data = decode(e, threshold_ns);
    let container = ctx.container_of_memcg(e.memcg_id, data.memory_cgroup_path.as_deref());
    ctx.save_data_at(clock.wall_ns(e.time_ns), container, &data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memcg reclaim of tests/memreclaim.rs (`dd` filling a 64 MiB memory cgroup with page
    /// cache, threshold 1 ms), captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs).
    const STALL: &str = include_str!("records.hex");

    #[test]
    fn decodes_a_captured_memcg_reclaim_stall() {
        let e: reclaim_event = program::captured_record(STALL, 0);
        let d = decode(&e, 1_000_000);
        assert_eq!((d.kind, d.comm.as_str()), ("memcg", "dd"));
        assert_eq!(d.duration_ns, 283_695_770);
        assert_eq!(d.threshold_ns, 1_000_000);
        assert_eq!(d.nr_reclaimed, 257);
        assert_eq!(d.order, 0);
        assert_eq!(d.memory_cgroup_path.as_deref(), Some("/bq-reclaim-911-0"));
        assert_eq!(kind_name(reclaim_kind::KIND_DIRECT.0), "direct");
        assert_eq!(kind_name(reclaim_kind::KINDS.0), "unknown");
    }

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
