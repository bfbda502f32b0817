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
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::counters::PerCpuCounters;
use crate::bpf::hist;
use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, Capability, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("softirq", OpenSoftirqSkel);
}
use skel::types::{counter_slot as Slot, softirq_event, softirq_vec};
use skel::SoftirqSkelBuilder;

// SAFETY: generated from softirq.h: integers and arrays of integers only.
unsafe impl Plain for softirq_event {}

const VEC_SLOTS: usize = latency::VECTORS;
/// The event counters follow the latency histograms.
const COUNTER_SLOTS: u32 = latency::SLOTS + Slot::EVENT_SLOTS.0;

/// The counter of an event slot (past the histograms).
fn event_slot(slot: Slot) -> u32 {
    latency::SLOTS + slot.0
}

/// Programs attached before the others: the exit before the entry (its half of a tick gap
/// waits for the entry's), the softirq entry before the raise (an entry without a raise is
/// ignored).
const ATTACH_FIRST: [&str; 4] = [
    "bq_hrtimer_expire_exit",
    "bq_hrtimer_expire_entry",
    "bq_softirq_entry",
    "bq_softirq_raise",
];
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
        Requirement::BPF,
        // Softirq type names come from the tracepoint format in tracefs (mode 0700).
        Requirement::Caps(&[Capability::DacReadSearch]),
        Requirement::Degrades(
            Capability::Syslog,
            "no tick-gap detection and unnamed stack frames (/proc/kallsyms shows no addresses)",
        ),
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

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
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
        let loaded = BpfProgram::new(ctx)
            .counters(&self.counters, COUNTER_SLOTS)
            .ring_buffer::<softirq_event>(self.cfg.max_events_per_second)
            .load(SoftirqSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.threshold_ns = self.cfg.threshold_us * 1000;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
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
                // Without a tick handler to match, the tick's programs would only return.
                if tick_fn.is_none() {
                    open.progs.bq_hrtimer_expire_exit.set_autoload(false);
                    open.progs.bq_hrtimer_expire_entry.set_autoload(false);
                }
                if !self.cfg.latency_histogram {
                    open.progs.bq_softirq_raise.set_autoload(false);
                    open.progs.bq_softirq_entry.set_autoload(false);
                }
                Ok(())
            })?;
        let loaded = if unwatched.is_empty() {
            loaded.attach(&ATTACH_FIRST)?
        } else {
            let reason = format!("not watched: {}", unwatched.join("; "));
            loaded.attach_partly(&ATTACH_FIRST, &reason)?
        };

        let counters = self.counters.get();
        let mismatch_slot = event_slot(Slot::SLOT_PERCPU_MISMATCH) as usize;
        let mut mismatch_said = false;
        loaded.poll_with_tick(
            |e: &softirq_event, clock| self.save(ctx, e, clock),
            || {
                // A tick found no hard interrupt in the preempt count it read: the per-CPU
                // offsets from BTF do not fit this kernel, and long runs go unwatched.
                let mismatch = counters.as_ref().is_some_and(|c| c.get(mismatch_slot) > 0);
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
            let n = c.get(event_slot(Slot::SLOT_DELAYED) as usize + vec);
            if vec < known || n > 0 {
                out.sample(&[("type", &names.name(vec as u32))], n as f64);
            }
        }
        out.single(
            "tick_gaps_total",
            "Scheduler ticks that came later than the tick-gap threshold after the previous one on their CPU (interrupts off that long).",
            Kind::Counter,
            c.get(event_slot(Slot::SLOT_TICK_GAPS) as usize) as f64,
        );
        out.single(
            "tick_gaps_steal_total",
            "Late scheduler ticks not recorded because the hypervisor's steal time explains the delay.",
            Kind::Counter,
            c.get(event_slot(Slot::SLOT_TICK_GAPS_STOLEN) as usize) as f64,
        );
        Refused::new(
            "Softirq runs and tick gaps over their thresholds",
            event_slot(Slot::SLOT_SUPPRESSED),
            event_slot(Slot::SLOT_RINGBUF_FULL),
        )
        .write(c, out);
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

/// One long run or tick gap as the kernel reported it, with names (no lookups: what the record
/// says alone); `symbolize` names the frames of a kernel stack.
fn decode(
    e: &softirq_event,
    names: &EnumNames,
    cfg: &SoftirqConfig,
    symbolize: impl Fn(&[u64]) -> Vec<String>,
) -> SoftirqData {
    let tick_gap = e.vec == softirq_vec::TICK_GAP_VEC.0;
    let stack = if e.stack_bytes > 0 {
        let n = (e.stack_bytes as usize / 8).min(e.stack.len());
        symbolize(&e.stack[..n])
    } else {
        Vec::new()
    };
    let (mut kind, mut vec, mut handler) = (None, None, None);
    if !tick_gap {
        let found = handler_in_stack(&stack);
        // The stack's handler names the type; failing that, the counts' guess.
        let v = found
            .and_then(|(_, k)| k)
            .and_then(|k| (0..names.len() as u32).find(|&v| names.name(v) == k))
            .or((e.vec < VEC_SLOTS as u32).then_some(e.vec));
        kind = Some(v.map_or_else(|| "unknown".to_string(), |v| names.name(v).into_owned()));
        vec = v;
        handler = found.map(|(h, _)| h.to_string());
    }
    SoftirqData {
        event: if tick_gap { "tick_gap" } else { "long_softirq" },
        cpu: e.cpu,
        kind,
        vec,
        handler,
        duration_ns: e.duration_ns,
        steal_ns: tick_gap.then_some(e.steal_ns),
        threshold_ns: if tick_gap {
            cfg.tick_gap_threshold_us * 1000
        } else {
            cfg.threshold_us * 1000
        },
        pid: e.pid,
        tid: e.tid,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        stack,
    }
}

impl Softirq {
    /// Saves one long run (counted by type) or tick gap.
    fn save(&self, ctx: &RunContext, e: &softirq_event, clock: &BootClock) {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        let data = decode(e, &names, &self.cfg, |addrs| ctx.symbolizer().stack(addrs));
        drop(names);
        if e.vec != softirq_vec::TICK_GAP_VEC.0 {
            // The last slot counts runs of no known type.
            let slot = data.vec.map_or(VEC_SLOTS, |v| (v as usize).min(VEC_SLOTS));
            self.recorded_runs[slot].fetch_add(1, Ordering::Relaxed);
        }
        ctx.save_data_at(clock.wall_ns(e.time_ns), None, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs) from tests/softirq.rs: a NET_RX
    /// run on ksoftirqd held long by a slow firewall (its vector not told by the run counts),
    /// then a tick gap behind a console write.
    const RECORDS: &str = include_str!("records.hex");

    fn captured(n: usize) -> softirq_event {
        program::captured_record(RECORDS, n)
    }

    /// Two frames of the long run's stack, as /proc/kallsyms named them on the kernel it was
    /// captured on; the rest stay addresses.
    fn symbolize(addrs: &[u64]) -> Vec<String> {
        addrs
            .iter()
            .map(|&a| match a {
                0xffffffff81eb878e => "net_rx_action+0x16e".to_string(),
                0xffffffff8136979d => "handle_softirqs+0xcd".to_string(),
                _ => format!("{a:#x}"),
            })
            .collect()
    }

    fn softirq_names() -> EnumNames {
        let names = [
            "HI", "TIMER", "NET_TX", "NET_RX", "BLOCK", "IRQ_POLL", "TASKLET", "SCHED", "HRTIMER",
            "RCU",
        ];
        let members: Vec<(i64, String)> =
            (0..).zip(names).map(|(v, n)| (v, n.to_string())).collect();
        EnumNames::from_members(&members)
    }

    #[test]
    fn decodes_a_captured_long_net_rx_run_by_its_stack() {
        let e = captured(0);
        assert_eq!(e.vec, softirq_vec::UNKNOWN_VEC.0);
        let cfg = SoftirqConfig::default();
        let d = decode(&e, &softirq_names(), &cfg, symbolize);
        assert_eq!(d.event, "long_softirq");
        assert_eq!(
            (d.kind.as_deref(), d.vec, d.handler.as_deref()),
            (Some("NET_RX"), Some(3), Some("net_rx_action"))
        );
        assert_eq!(d.threshold_ns, 10_000_000);
        assert!(d.duration_ns >= d.threshold_ns);
        assert_eq!((d.comm.as_str(), d.cpu), ("ksoftirqd/1", 1));
        assert_eq!(d.steal_ns, None);
        assert_eq!(d.stack.len(), 21);
        // Without names the type is unknown: the counts did not tell it either.
        let d = decode(&e, &EnumNames::default(), &cfg, symbolize);
        assert_eq!((d.kind.as_deref(), d.vec), (Some("unknown"), None));
    }

    #[test]
    fn decodes_a_captured_tick_gap() {
        let cfg = SoftirqConfig {
            tick_gap_threshold_us: 12_000,
            ..SoftirqConfig::default()
        };
        let d = decode(&captured(1), &softirq_names(), &cfg, symbolize);
        assert_eq!(d.event, "tick_gap");
        assert_eq!((d.kind, d.vec, d.handler), (None, None, None));
        assert_eq!(d.threshold_ns, 12_000_000, "the tick-gap threshold");
        assert_eq!(d.duration_ns, 15_064_857);
        assert_eq!(d.steal_ns, Some(0));
        assert_eq!(d.comm, "bq-irqoff");
        assert_eq!(d.stack.len(), 16);
    }

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
