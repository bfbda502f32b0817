//! `softirq`: a CPU that spent longer than a threshold (default 10 ms) in one softirq run —
//! the time nothing else runs on that CPU but interrupts.
//!
//! Hooks: `tp_btf/softirq_entry` and `softirq_exit`. Runs over the threshold are counted by type
//! and, through the rate limit, recorded with the interrupted task and the kernel stack. Type
//! names (`NET_RX`, `TIMER`…) come from the tracepoint's format, never a built-in table.
//!
//! The same programs (plus `tp_btf/softirq_raise`) keep the raise→entry latency histograms
//! (`latency.rs`), read from the per-CPU counters at scrape time.
//!
//! Tick gaps: a scheduler tick that came more than a threshold after the previous one on its
//! CPU means interrupts were off that long (`tp_btf/hrtimer_expire_entry` on the tick handler;
//! a gap across an idle period, when the tick is stopped on purpose, is ignored by the tick's
//! own per-CPU `tick_cpu_sched.idle_entrytime`). Recorded like a long
//! softirq, with `event = "tick_gap"` and the stack where the tick finally landed. In a VM, the
//! time the hypervisor did not run the CPU (steal) is taken off the gap first: a late tick that
//! steal explains is only counted (`tick_gaps_steal_total`).

mod latency;

use std::mem::MaybeUninit;
use std::sync::RwLock;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::counters::PerCpuCounters;
use crate::bpf::{self as bq_bpf};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::metrics::bpfhist;
use crate::metrics::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("softirq");
}
use skel::types::softirq_event;
use skel::SoftirqSkelBuilder;

// Mirrors softirq.h: the long-run slots follow the latency histograms.
const VEC_SLOTS: usize = latency::VECTORS;
const EVENT_BASE: usize = latency::SLOTS as usize;
const SLOT_SUPPRESSED: usize = EVENT_BASE + VEC_SLOTS;
const SLOT_RINGBUF_FULL: usize = EVENT_BASE + VEC_SLOTS + 1;
const SLOT_TICK_GAPS: usize = EVENT_BASE + VEC_SLOTS + 2;
const SLOT_TICK_GAPS_STOLEN: usize = EVENT_BASE + VEC_SLOTS + 3;
const COUNTER_SLOTS: u32 = latency::SLOTS + VEC_SLOTS as u32 + 4;
const TICK_GAP_VEC: u32 = 0xffff;
/// The tick's hrtimer function: `tick_nohz_handler` since 6.9, `tick_sched_timer` before.
const TICK_FUNCTIONS: [&str; 2] = ["tick_nohz_handler", "tick_sched_timer"];

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "softirq",
    mode: Mode::Event,
    description: "softirq runs longer than a threshold (tp_btf/softirq_entry/exit): cpu, type, duration, interrupted task, stack",
    requires: &[
        Requirement::Root,
        Requirement::Btf,
        Requirement::BtfTracepoint("softirq_entry"),
        Requirement::BtfTracepoint("softirq_exit"),
        Requirement::BtfTracepoint("softirq_raise"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftirqConfig {
    /// A softirq run at least this long is recorded (microseconds).
    pub threshold_us: u64,
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
    /// Also one latency histogram per CPU and type (cardinality: CPUs × types × buckets).
    pub per_cpu: bool,
    /// A tick this late after the previous one on its CPU is recorded (microseconds; 0 = off).
    pub tick_gap_threshold_us: u64,
}

impl Default for SoftirqConfig {
    fn default() -> Self {
        SoftirqConfig {
            threshold_us: 10_000,
            max_events_per_second: 100,
            per_cpu: false,
            tick_gap_threshold_us: 10_000,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: SoftirqConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.threshold_us", ctx.section),
        cfg.threshold_us,
        10,
        10_000_000,
    )?;
    if cfg.tick_gap_threshold_us != 0 {
        check_range(
            &format!("{}.tick_gap_threshold_us", ctx.section),
            cfg.tick_gap_threshold_us,
            1_000,
            60_000_000,
        )?;
    }
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        100_000,
    )?;
    Ok(Tracer::Event(Box::new(Softirq {
        latency: latency::Latency::new(cfg.per_cpu),
        cfg,
        names: RwLock::new(EnumNames::default()),
        counters: Default::default(),
    })))
}

pub struct Softirq {
    cfg: SoftirqConfig,
    latency: latency::Latency,
    names: RwLock<EnumNames>,
    counters: crate::bpf::counters::CountersCell,
}

/// Softirq type names from `irq/softirq_entry`'s print format (`{ 3, "NET_RX" }`…).
fn load_names() -> Result<EnumNames> {
    let dir = bq_bpf::tracefs_dir().map_err(anyhow::Error::msg)?;
    let fmt = std::fs::read_to_string(dir.join("events/irq/softirq_entry/format"))
        .context("reading the softirq_entry tracepoint format")?;
    let members = btf::parse_print_symbolic(&fmt);
    anyhow::ensure!(
        !members.is_empty(),
        "no softirq names in the softirq_entry format"
    );
    Ok(EnumNames::from_members(&members))
}

impl EventTracer for Softirq {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        match load_names() {
            Ok(n) => *self.names.write().unwrap_or_else(|e| e.into_inner()) = n,
            Err(e) => {
                tracing::warn!(tracer = "softirq", error = %format!("{e:#}"), "softirq types will be numbers")
            }
        }
        self.run_programs(ctx)
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        self.collect_long_softirqs(&c, &names, out);
        self.latency.collect(&c, &names, out)
    }
}

impl Softirq {
    /// Keeps the histograms and records softirq runs over the threshold until the tracer stops.
    fn run_programs(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let mut open = SoftirqSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.threshold_ns = self.cfg.threshold_us * 1000;
        rodata.max_events_per_second = self.cfg.max_events_per_second;
        rodata.counter_slots = COUNTER_SLOTS;
        rodata.hist_bounds_ns = bpfhist::bounds_ns(&latency::BOUNDS);
        rodata.hist_nbounds = latency::BOUNDS.len() as u32;
        let tick_fn = if self.cfg.tick_gap_threshold_us > 0 {
            tick_function()
        } else {
            None
        };
        rodata.tick_fn = tick_fn.unwrap_or(0);
        rodata.tick_gap_threshold_ns = self.cfg.tick_gap_threshold_us * 1000;
        bq_bpf::size_ring_buffer(
            &mut open.maps.events,
            self.cfg.max_events_per_second,
            std::mem::size_of::<softirq_event>(),
        )?;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        // Exit first: an exit without its entry is ignored, an entry alone would be stale.
        let _exit = skel
            .progs
            .bq_softirq_exit
            .attach()
            .context("attaching to tp_btf/softirq_exit")?;
        let _entry = skel
            .progs
            .bq_softirq_entry
            .attach()
            .context("attaching to tp_btf/softirq_entry")?;
        let _raise = skel
            .progs
            .bq_softirq_raise
            .attach()
            .context("attaching to tp_btf/softirq_raise")?;
        // Tick gaps are an extra: without the hooks or the tick's address the rest runs on.
        let mut _tick_links = Vec::new();
        if tick_fn.is_some() {
            for (prog, tp) in [
                (&skel.progs.bq_hrtimer_expire_exit, "hrtimer_expire_exit"),
                (&skel.progs.bq_hrtimer_expire_entry, "hrtimer_expire_entry"),
            ] {
                match prog.attach() {
                    Ok(l) => _tick_links.push(l),
                    Err(e) => {
                        tracing::warn!(tracer = "softirq", error = %e, "tick gaps not watched: attaching tp_btf/{tp}");
                        _tick_links.clear();
                        break;
                    }
                }
            }
        } else if self.cfg.tick_gap_threshold_us > 0 {
            tracing::warn!(
                tracer = "softirq",
                "tick gaps not watched: no tick handler ({}) in kallsyms",
                TICK_FUNCTIONS.join(" or ")
            );
        }
        ctx.attached();

        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        let threshold_ns = self.cfg.threshold_us * 1000;
        bq_bpf::poll_ring_buffer(ctx, &skel.maps.events, |data| {
            if let Some(e) = bq_bpf::read_record::<softirq_event>(data) {
                self.record(ctx, &e, clock_offset, threshold_ns);
            }
            0
        })?;
        Ok(())
    }

    fn collect_long_softirqs(&self, c: &PerCpuCounters, names: &EnumNames, out: &mut MetricSink) {
        out.family(
            "events_total",
            "Softirq runs at or over the threshold, by softirq type.",
            Kind::Counter,
        );
        let known = names.len().clamp(1, VEC_SLOTS);
        for vec in 0..VEC_SLOTS {
            let n = c.get(EVENT_BASE + vec);
            if vec < known || n > 0 {
                out.sample(&[("type", &names.name(vec as u32))], n as f64);
            }
        }
        out.single(
            "tick_gaps_total",
            "Scheduler ticks that came later than the tick-gap threshold after the previous one on their CPU (interrupts off that long).",
            Kind::Counter,
            c.get(SLOT_TICK_GAPS) as f64,
        );
        out.single(
            "tick_gaps_steal_total",
            "Late scheduler ticks not recorded because the hypervisor's steal time explains the delay.",
            Kind::Counter,
            c.get(SLOT_TICK_GAPS_STOLEN) as f64,
        );
        out.single(
            "suppressed_total",
            "Softirq runs and tick gaps over their thresholds not recorded because of the rate limit.",
            Kind::Counter,
            c.get(SLOT_SUPPRESSED) as f64,
        );
        out.single(
            "ringbuf_lost_total",
            "Softirq runs and tick gaps over their thresholds that found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
    }
}

/// The address of the tick's hrtimer function, from kallsyms.
fn tick_function() -> Option<u64> {
    TICK_FUNCTIONS
        .iter()
        .find_map(|f| crate::bpf::kallsyms_address("/proc/kallsyms".as_ref(), f))
}

#[derive(Debug, Serialize)]
struct SoftirqData {
    /// `long_softirq` (a handler ran past the threshold) or `tick_gap` (the tick came late).
    event: &'static str,
    cpu: u32,
    /// The softirq type (`NET_RX`…); absent for a tick gap.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vec: Option<u32>,
    /// The handler's run time, or the time since the previous tick.
    duration_ns: u64,
    /// Tick gaps: of `duration_ns`, the time the hypervisor did not run the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    steal_ns: Option<u64>,
    threshold_ns: u64,
    /// The task the softirq ran on top of (ksoftirqd when deferred there).
    pid: u32,
    tid: u32,
    comm: String,
    /// Kernel stack at the end of the run, innermost first.
    stack: Vec<String>,
}

impl Softirq {
    fn record(&self, ctx: &RunContext, e: &softirq_event, clock_offset: i64, threshold_ns: u64) {
        let tick_gap = e.vec == TICK_GAP_VEC;
        let stack = if e.stack_bytes > 0 {
            let n = (e.stack_bytes as usize / 8).min(e.stack.len());
            ctx.symbolizer().stack(&e.stack[..n])
        } else {
            Vec::new()
        };
        let data = SoftirqData {
            event: if tick_gap { "tick_gap" } else { "long_softirq" },
            cpu: e.cpu,
            kind: (!tick_gap).then(|| {
                self.names
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .name(e.vec)
                    .into_owned()
            }),
            vec: (!tick_gap).then_some(e.vec),
            duration_ns: e.duration_ns,
            steal_ns: tick_gap.then_some(e.steal_ns),
            threshold_ns: if tick_gap {
                self.cfg.tick_gap_threshold_us * 1000
            } else {
                threshold_ns
            },
            pid: e.pid,
            tid: e.tid,
            comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
            stack,
        };
        ctx.save_data_at(e.time_ns as i64 + clock_offset, None, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_tracepoint_format() {
        let names = load_names().unwrap();
        assert!(names.len() >= 10, "{}", names.len());
        let all: Vec<String> = (0..names.len() as u32)
            .map(|v| names.name(v).into_owned())
            .collect();
        assert!(all.contains(&"NET_RX".to_string()), "{all:?}");
        assert!(all.contains(&"TIMER".to_string()), "{all:?}");
    }

    #[test]
    fn config_is_validated() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.softirq",
        };
        let t: toml::Table = toml::from_str("threshold_us = 1").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.softirq.threshold_us"), "{err}");
        let t: toml::Table = toml::from_str("threshold_us = 100").unwrap();
        assert!(build(&bctx, &t).is_ok());
    }
}
