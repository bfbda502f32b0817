//! `softirq`: a CPU stuck in one softirq handler run for longer than a threshold (default
//! 10 ms) — the time nothing else runs on that CPU but interrupts — or whose scheduler tick came
//! that late (interrupts off).
//!
//! Both are watched from the tick (`tp_btf/hrtimer_expire_entry`/`_exit` on the tick handler),
//! never per softirq, so the tracer costs nothing on the network path (see softirq.bpf.c for
//! how a tick tells one handler run from the next). A long run is recorded while it still runs,
//! with the stack under the tick: the handler's own frames. Its type (`NET_RX`, `TIMER`…) is the
//! handler in that stack, or the one vector whose run count moved; names come from the
//! tracepoint's format. Durations are what the ticks saw (at least): every run longer than the
//! threshold plus one tick (4 ms at HZ=250) is caught.
//!
//! Delayed softirqs: the same ticks count, per type, each tick at which a raised softirq had been
//! pending since the previous tick without running (`delayed_ticks_total{type}`): at least one
//! tick of raise→run delay, always on and free, where the opt-in histograms below are exact.
//!
//! Tick gaps: a scheduler tick that came more than a threshold after the previous one on its
//! CPU means interrupts were off that long (a gap across an idle period, when the tick is
//! stopped on purpose, is ignored by the tick's own per-CPU `tick_cpu_sched.idle_entrytime`).
//! Recorded with `event = "tick_gap"` and the stack where the tick finally landed. In a VM, the
//! time the hypervisor did not run the CPU (steal) is taken off the gap first: a late tick that
//! steal explains is only counted (`tick_gaps_steal_total`).
//!
//! With `latency_histogram = true`, `tp_btf/softirq_raise` and `softirq_entry` also keep the
//! raise→entry latency histograms (`latency.rs`), read from the per-CPU counters at scrape
//! time. Off by default: two hooks and two clock reads per softirq.

mod latency;

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::counters::PerCpuCounters;
use crate::bpf::hist;
use crate::bpf::{self as bq_bpf};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
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

// Mirrors softirq.h: the event slots follow the latency histograms.
const VEC_SLOTS: usize = latency::VECTORS;
const EVENT_BASE: usize = latency::SLOTS as usize;
const SLOT_SUPPRESSED: usize = EVENT_BASE;
const SLOT_RINGBUF_FULL: usize = EVENT_BASE + 1;
const SLOT_TICK_GAPS: usize = EVENT_BASE + 2;
const SLOT_TICK_GAPS_STOLEN: usize = EVENT_BASE + 3;
const SLOT_PERCPU_MISMATCH: usize = EVENT_BASE + 4;
const SLOT_DELAYED: usize = EVENT_BASE + 5;
const COUNTER_SLOTS: u32 = latency::SLOTS + 5 + VEC_SLOTS as u32;
const TICK_GAP_VEC: u32 = 0xffff;
/// The tick's hrtimer function: `tick_nohz_handler` since 6.9, `tick_sched_timer` before.
const TICK_FUNCTIONS: [&str; 2] = ["tick_nohz_handler", "tick_sched_timer"];
/// Per-CPU variables the tick reads: its own state (the anchor), the preempt count, the
/// per-softirq run counts and the pending softirqs.
const PERCPU_VARS: [&str; 4] = [
    "tick_cpu_sched",
    "__preempt_count",
    "kstat",
    "__softirq_pending",
];
/// The loop that calls softirq handlers (`__do_softirq` before 6.8): the frame it called (just
/// before it in an innermost-first stack) is the running handler.
const SOFTIRQ_LOOPS: [&str; 2] = ["handle_softirqs", "__do_softirq"];
/// Softirq handlers and their types, to name a long run from its stack. A handler not listed
/// leaves the type to the run counts, or `unknown`.
const HANDLERS: [(&str, &str); 11] = [
    ("tasklet_hi_action", "HI"),
    ("run_timer_softirq", "TIMER"),
    ("net_tx_action", "NET_TX"),
    ("net_rx_action", "NET_RX"),
    ("blk_done_softirq", "BLOCK"),
    ("irq_poll_softirq", "IRQ_POLL"),
    ("tasklet_action", "TASKLET"),
    ("sched_balance_softirq", "SCHED"),
    ("run_rebalance_domains", "SCHED"),
    ("hrtimer_run_softirq", "HRTIMER"),
    ("rcu_core_si", "RCU"),
];

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "softirq",
    mode: Mode::Event,
    description: "softirq runs and tick gaps longer than a threshold, seen from the scheduler tick (tp_btf/hrtimer_expire_entry/exit): cpu, type, duration, interrupted task, stack",
    requires: &[
        Requirement::Root,
        Requirement::Btf,
        Requirement::BtfTracepoint("hrtimer_expire_entry"),
        Requirement::BtfTracepoint("hrtimer_expire_exit"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SoftirqConfig {
    /// A softirq run seen lasting at least this long is recorded (microseconds).
    pub threshold_us: u64,
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
    /// Keep raise→entry latency histograms per softirq type (two hooks per softirq).
    pub latency_histogram: bool,
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
            latency_histogram: false,
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
        1_000,
        10_000_000,
    )?;
    if cfg.per_cpu && !cfg.latency_histogram {
        return Err(crate::config::ConfigError(format!(
            "{}.per_cpu = true needs {0}.latency_histogram = true",
            ctx.section
        )));
    }
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
        recorded_runs: Default::default(),
    })))
}

pub struct Softirq {
    cfg: SoftirqConfig,
    latency: latency::Latency,
    names: RwLock<EnumNames>,
    counters: crate::bpf::counters::CountersCell,
    /// Long runs recorded, by vector (the last slot: type unknown).
    recorded_runs: [AtomicU64; VEC_SLOTS + 1],
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
        if self.cfg.latency_histogram {
            self.latency.collect(&c, &names, out)?;
        }
        Ok(())
    }
}

impl Softirq {
    /// Watches the tick (and keeps the histograms if asked) until the tracer stops.
    fn run_programs(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let tick_fn = tick_function();
        let pcpu = btf::percpu_offsets(&PERCPU_VARS);
        // What this kernel does not let the tracer watch; the rest runs on.
        let mut unwatched = Vec::new();
        if tick_fn.is_none() {
            unwatched.push(format!(
                "long runs and tick gaps: no tick handler ({}) in kallsyms",
                TICK_FUNCTIONS.join(" or ")
            ));
            if !self.cfg.latency_histogram {
                return Err(TracerError::Unsupported(unwatched.remove(0)));
            }
        } else if let Err(e) = &pcpu {
            unwatched.push(format!("long runs and delays: {e:#}"));
        }

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
        rodata.hist_bounds_ns = hist::bounds_ns(&latency::BOUNDS);
        rodata.hist_nbounds = latency::BOUNDS.len() as u32;
        rodata.tick_fn = tick_fn.unwrap_or(0);
        rodata.tick_gap_threshold_ns = self.cfg.tick_gap_threshold_us * 1000;
        if let Ok(&[tick_sched, preempt_count, kstat, pending]) = pcpu.as_deref() {
            rodata.watch_runs = 1;
            rodata.pcpu_tick_sched = tick_sched;
            rodata.pcpu_preempt_count = preempt_count;
            rodata.pcpu_kstat = kstat;
            rodata.pcpu_softirq_pending = pending;
        }
        if !self.cfg.latency_histogram {
            open.progs.bq_softirq_raise.set_autoload(false);
            open.progs.bq_softirq_entry.set_autoload(false);
        }
        bq_bpf::size_ring_buffer(
            &mut open.maps.events,
            self.cfg.max_events_per_second,
            std::mem::size_of::<softirq_event>(),
        )?;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        let mut progs = Vec::new();
        if tick_fn.is_some() {
            // Exit first: its half of a tick gap waits for the entry's.
            progs.push((&skel.progs.bq_hrtimer_expire_exit, "hrtimer_expire_exit"));
            progs.push((&skel.progs.bq_hrtimer_expire_entry, "hrtimer_expire_entry"));
        }
        if self.cfg.latency_histogram {
            // Entry first: an entry without a raise is ignored.
            progs.push((&skel.progs.bq_softirq_entry, "softirq_entry"));
            progs.push((&skel.progs.bq_softirq_raise, "softirq_raise"));
        }
        let _links = progs
            .into_iter()
            .map(|(prog, tp)| {
                prog.attach()
                    .with_context(|| format!("attaching to tp_btf/{tp}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if unwatched.is_empty() {
            ctx.attached();
        } else {
            ctx.attached_partly(&format!("not watched: {}", unwatched.join("; ")));
        }

        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        let threshold_ns = self.cfg.threshold_us * 1000;
        let counters = self.counters.get();
        let mut mismatch_said = false;
        bq_bpf::poll_ring_buffer_with_tick(
            &|| ctx.stopping(),
            &skel.maps.events,
            |data| {
                if let Some(e) = bq_bpf::read_record::<softirq_event>(data) {
                    self.record(ctx, &e, clock_offset, threshold_ns);
                }
                0
            },
            || {
                // A tick found no hard interrupt in the preempt count it read: the per-CPU
                // offsets from BTF do not fit this kernel, and long runs go unwatched.
                let mismatch = counters
                    .as_ref()
                    .is_some_and(|c| c.get(SLOT_PERCPU_MISMATCH) > 0);
                if mismatch && !mismatch_said {
                    mismatch_said = true;
                    unwatched.push(
                        "long runs and delays: the per-CPU offsets from BTF do not fit this kernel"
                            .into(),
                    );
                    let reason = format!("not watched: {}", unwatched.join("; "));
                    tracing::warn!(tracer = "softirq", "{reason}");
                    ctx.attached_partly(&reason);
                }
            },
        )?;
        Ok(())
    }

    fn collect_long_softirqs(&self, c: &PerCpuCounters, names: &EnumNames, out: &mut MetricSink) {
        out.family(
            "events_total",
            "Softirq runs recorded at or over the threshold, by softirq type (runs the rate limit held back are in suppressed_total).",
            Kind::Counter,
        );
        let known = names.len().clamp(1, VEC_SLOTS);
        for (vec, n) in self.recorded_runs.iter().enumerate() {
            let n = n.load(Ordering::Relaxed);
            if vec == VEC_SLOTS {
                if n > 0 {
                    out.sample(&[("type", "unknown")], n as f64);
                }
            } else if vec < known || n > 0 {
                out.sample(&[("type", &names.name(vec as u32))], n as f64);
            }
        }
        out.family(
            "delayed_ticks_total",
            "Scheduler ticks at which a raised softirq had waited since the previous tick without running, by softirq type: each is at least one tick of delay.",
            Kind::Counter,
        );
        for vec in 0..VEC_SLOTS {
            let n = c.get(SLOT_DELAYED + vec);
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
    /// The softirq type (`NET_RX`…, `unknown` if neither the stack nor the counts tell);
    /// absent for a tick gap.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    vec: Option<u32>,
    /// Long runs: the handler function running, from the stack.
    #[serde(skip_serializing_if = "Option::is_none")]
    handler: Option<String>,
    /// Long runs: how long the ticks saw the run going (it may go on); tick gaps: the time
    /// since the previous tick.
    duration_ns: u64,
    /// Tick gaps: of `duration_ns`, the time the hypervisor did not run the CPU.
    #[serde(skip_serializing_if = "Option::is_none")]
    steal_ns: Option<u64>,
    threshold_ns: u64,
    /// The task the softirq ran on top of (ksoftirqd when deferred there).
    pid: u32,
    tid: u32,
    comm: String,
    /// Kernel stack at the tick, innermost first: the tick's frames, then what it interrupted.
    stack: Vec<String>,
}

/// The softirq handler in a symbolized stack (innermost first): the frame just inside the loop
/// that calls handlers. Its name, and its type if it is a known handler.
fn handler_in_stack(stack: &[String]) -> Option<(&str, Option<&'static str>)> {
    let name = |frame: &str| frame.split('+').next().unwrap_or(frame).to_string();
    let at = stack
        .iter()
        .position(|f| SOFTIRQ_LOOPS.contains(&name(f).as_str()))?;
    let frame = stack.get(at.checked_sub(1)?)?;
    let handler = frame.split('+').next().unwrap_or(frame);
    let kind = HANDLERS
        .iter()
        .find(|(f, _)| *f == handler)
        .map(|(_, k)| *k);
    Some((handler, kind))
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
        let (mut kind, mut vec, mut handler) = (None, None, None);
        if !tick_gap {
            let names = self.names.read().unwrap_or_else(|e| e.into_inner());
            let found = handler_in_stack(&stack);
            // The stack's handler names the type; failing that, the counts' guess.
            let v = found
                .and_then(|(_, k)| k)
                .and_then(|k| (0..names.len() as u32).find(|&v| names.name(v) == k))
                .or((e.vec < VEC_SLOTS as u32).then_some(e.vec));
            self.recorded_runs[v.map_or(VEC_SLOTS, |v| v as usize)].fetch_add(1, Ordering::Relaxed);
            kind = Some(v.map_or_else(|| "unknown".to_string(), |v| names.name(v).into_owned()));
            vec = v;
            handler = found.map(|(h, _)| h.to_string());
        }
        let data = SoftirqData {
            event: if tick_gap { "tick_gap" } else { "long_softirq" },
            cpu: e.cpu,
            kind,
            vec,
            handler,
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

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for softirq_event {}

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
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.softirq.threshold_us"), "{err}");
        let t: toml::Table = toml::from_str("threshold_us = 1000").unwrap();
        assert!(build(&bctx, &t).is_ok());
        let t: toml::Table = toml::from_str("per_cpu = true").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.softirq.latency_histogram"), "{err}");
        let t: toml::Table = toml::from_str("per_cpu = true\nlatency_histogram = true").unwrap();
        assert!(build(&bctx, &t).is_ok());
    }

    #[test]
    fn the_handler_is_the_frame_inside_the_softirq_loop() {
        let stack: Vec<String> = [
            "nft_do_chain+0x1a/0x500",
            "ip_local_deliver+0x30/0x100",
            "net_rx_action+0x1a5/0x3b0",
            "handle_softirqs+0xd8/0x300",
            "run_ksoftirqd+0x22/0x30",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            handler_in_stack(&stack),
            Some(("net_rx_action", Some("NET_RX")))
        );
        let other: Vec<String> = ["my_handler+0x1/0x2", "__do_softirq+0x3/0x4"]
            .map(String::from)
            .to_vec();
        assert_eq!(handler_in_stack(&other), Some(("my_handler", None)));
        assert_eq!(handler_in_stack(&stack[2..3]), None);
        assert_eq!(handler_in_stack(&stack[3..]), None);
    }
}
