//! `hungtask`: tasks in uninterruptible sleep (D) longer than `kernel.hung_task_timeout_secs`,
//! as the kernel's hung-task detector reports them.
//!
//! Hook: `tp_btf/sched_process_hang`. BPF takes the hung task's kernel stack
//! (`bpf_get_task_stack`), how long the detector has seen it not switching, and its memory
//! cgroup. User space symbolizes the stack and adds the stacks of the other D-state tasks
//! (from /proc; one scan serves every report of a detector pass). The detector reports a task
//! again on every pass it is still stuck; one task is recorded at most once per
//! `repeat_interval_secs`.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::host::HostRoot;
use crate::procfs;
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, Capability, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("hungtask", OpenHungtaskSkel);
}
use skel::types::{counter_slot as Slot, hung_event};
use skel::HungtaskSkelBuilder;

// SAFETY: generated from hungtask.h: integers and arrays of integers only.
unsafe impl Plain for hung_event {}

/// A /proc scan of D-state tasks younger than this is reused: the detector reports all hung
/// tasks of one pass within microseconds.
const BLOCKED_SCAN_REUSE: Duration = Duration::from_secs(2);

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "hungtask",
    mode: Mode::Event,
    description: "hung tasks (tp_btf/sched_process_hang): task, blocked time, kernel stack, other D-state tasks' stacks",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(
            Capability::SysAdmin,
            "no kernel stacks of blocked tasks (/proc/<pid>/stack is CAP_SYS_ADMIN only)",
        ),
        Requirement::Btf,
        Requirement::BtfTracepoint("sched_process_hang"),
        Requirement::HostFile("proc/sys/kernel/hung_task_timeout_secs"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HungtaskConfig {
    /// Records per second at most, in BPF (0 = no limit).
    pub max_events_per_second: u32,
    /// A task still hung is recorded again only after this long (0 = every report).
    pub repeat_interval_secs: u64,
    /// Stacks of at most this many other D-state tasks go into a record (0 = none).
    pub max_blocked_tasks: usize,
}

impl Default for HungtaskConfig {
    fn default() -> Self {
        HungtaskConfig {
            max_events_per_second: 100,
            repeat_interval_secs: 600,
            max_blocked_tasks: 32,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: HungtaskConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        100_000,
    )?;
    check_range(
        &format!("{}.repeat_interval_secs", ctx.section),
        cfg.repeat_interval_secs,
        0,
        7 * 86_400,
    )?;
    check_range(
        &format!("{}.max_blocked_tasks", ctx.section),
        cfg.max_blocked_tasks,
        0,
        4096,
    )?;
    Ok(Tracer::Event(Box::new(Hungtask {
        cfg,
        counters: Default::default(),
        repeats_suppressed: AtomicU64::new(0),
    })))
}

pub struct Hungtask {
    cfg: HungtaskConfig,
    counters: crate::bpf::counters::CountersCell,
    repeats_suppressed: AtomicU64,
}

/// Per-run state of the event handler.
struct Handler<'a> {
    tracer: &'a Hungtask,
    ctx: &'a RunContext,
    last_recorded: HashMap<u32, Instant>,
    blocked_scan: Option<(Instant, Vec<BlockedTask>)>,
}

impl EventTracer for Hungtask {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let mut storage = MaybeUninit::uninit();
        let loaded = BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .load(HungtaskSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                Ok(())
            })?
            .attach(&[])?;
        let mut handler = Handler {
            tracer: self,
            ctx,
            last_recorded: HashMap::new(),
            blocked_scan: None,
        };
        loaded.poll(|e: &hung_event, clock| handler.save(e, clock))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.single(
            "events_total",
            "Hung-task reports of the kernel's detector (a task still hung is reported on every pass).",
            Kind::Counter,
            c.get(Slot::SLOT_REPORTED.0 as usize) as f64,
        );
        // HuaTuo's name for the same count.
        out.single(
            "total",
            "Hung-task reports of the kernel's detector.",
            Kind::Counter,
            c.get(Slot::SLOT_REPORTED.0 as usize) as f64,
        );
        Refused::new(
            "Hung-task reports",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .also_suppressed(
            self.repeats_suppressed.load(Ordering::Relaxed),
            "a repeat within repeat_interval_secs",
        )
        .write(&c, out);
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct HungData {
    pid: u32,
    tid: u32,
    comm: String,
    /// How long the detector has seen the task not switching: a lower bound of the time blocked.
    #[serde(skip_serializing_if = "Option::is_none")]
    blocked_ns: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hung_task_timeout_secs: Option<u64>,
    /// The hung task's kernel stack, innermost first.
    stack: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_cgroup_path: Option<String>,
    /// Other tasks in D state at the time, with their kernel stacks.
    blocked_tasks: Vec<BlockedTask>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BlockedTask {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub stack: Vec<String>,
}

/// Tasks in D state (threads included), with their kernel stacks; at most `max`.
pub fn d_state_tasks(host: &HostRoot, max: usize) -> Vec<BlockedTask> {
    let proc_dir = host.proc("");
    procfs::tasks::in_state(&proc_dir, 'D', max)
        .into_iter()
        .map(|t| BlockedTask {
            stack: std::fs::read_to_string(t.dir(&proc_dir).join("stack"))
                .map(|s| {
                    procfs::pid_stack::frames(&s)
                        .map(procfs::pid_stack::without_size)
                        .filter(|f| !f.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            pid: t.pid,
            tid: t.tid,
            comm: t.comm,
        })
        .collect()
}

/// One report as the kernel made it (no lookups, no files: what the record says alone);
/// `symbolize` names the frames of a kernel stack.
fn decode(e: &hung_event, symbolize: impl Fn(&[u64]) -> Vec<String>) -> HungData {
    let frames = if e.stack_bytes > 0 {
        let n = (e.stack_bytes as usize / 8).min(e.stack.len());
        symbolize(&e.stack[..n])
    } else {
        Vec::new()
    };
    HungData {
        pid: e.pid,
        tid: e.tid,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        blocked_ns: (e.hz > 0 && e.last_switch_time > 0).then(|| {
            e.jiffies_now.saturating_sub(e.last_switch_time) * (1_000_000_000 / e.hz as u64)
        }),
        hung_task_timeout_secs: None,
        stack: frames,
        memory_cgroup_path: (e.memcg_id != 0).then(|| {
            bq_bpf::cgroup_path_from_names(
                e.memcg_path.depth,
                e.memcg_path.truncated != 0,
                e.memcg_path.names.iter().map(|n| &n.s[..]),
            )
        }),
        blocked_tasks: Vec::new(),
    }
}

impl Handler<'_> {
    /// Saves a report unless it repeats one recorded within `repeat_interval_secs`, with the
    /// detector's timeout and the other D-state tasks, attributed to the task's container.
    fn save(&mut self, e: &hung_event, clock: &BootClock) {
        let cfg = &self.tracer.cfg;
        let repeat = Duration::from_secs(cfg.repeat_interval_secs);
        if !repeat.is_zero() {
            if self
                .last_recorded
                .get(&e.tid)
                .is_some_and(|t| t.elapsed() < repeat)
            {
                self.tracer
                    .repeats_suppressed
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.last_recorded.retain(|_, t| t.elapsed() < repeat);
            self.last_recorded.insert(e.tid, Instant::now());
        }
        let blocked = if cfg.max_blocked_tasks == 0 {
            Vec::new()
        } else {
            match &self.blocked_scan {
                Some((at, tasks)) if at.elapsed() < BLOCKED_SCAN_REUSE => tasks.clone(),
                _ => {
                    // One more, as the hung task itself is taken out below.
                    let tasks = d_state_tasks(self.ctx.host(), cfg.max_blocked_tasks + 1);
                    self.blocked_scan = Some((Instant::now(), tasks.clone()));
                    tasks
                }
            }
        };
        let mut data = decode(e, |addrs| self.ctx.symbolizer().stack(addrs));
        data.blocked_tasks = blocked
            .into_iter()
            .filter(|t| t.tid != e.tid)
            .take(cfg.max_blocked_tasks)
            .collect();
        data.hung_task_timeout_secs =
            std::fs::read_to_string(self.ctx.host().proc("sys/kernel/hung_task_timeout_secs"))
                .ok()
                .and_then(|s| s.trim().parse().ok());
        let container = self
            .ctx
            .container_of_memcg(e.memcg_id, data.memory_cgroup_path.as_deref());
        self.ctx
            .save_data_at(clock.wall_ns(e.time_ns), container, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first report of tests/hungtask.rs (a `sh` writing to a frozen ext4, 1 s timeout),
    /// captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs).
    const REPORT: &str = include_str!("records.hex");

    #[test]
    fn decodes_a_captured_hung_writer() {
        let e: hung_event = program::captured_record(REPORT, 0);
        let d = decode(&e, |addrs| {
            addrs.iter().map(|a| format!("{a:#x}")).collect::<Vec<_>>()
        });
        assert_eq!((d.comm.as_str(), d.pid), ("sh", d.tid));
        // 251 jiffies at HZ=250 since the detector saw it switch.
        assert_eq!(d.blocked_ns, Some(1_004_000_000));
        // The writer's own kernel stack, from the syscall down to the frozen superblock.
        assert_eq!(d.stack.len(), 8, "{:?}", d.stack);
        assert!(d.stack.iter().all(|f| f.starts_with("0xffffffff")));
        assert_eq!(
            d.memory_cgroup_path.as_deref(),
            Some("/process_api/b88e4b34de28f924674a8716e2838423")
        );
        // Added by save(): the sysctl and the other D-state tasks.
        assert!(d.hung_task_timeout_secs.is_none() && d.blocked_tasks.is_empty());
    }

    #[test]
    fn config_is_validated() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.hungtask",
        };
        let t: toml::Table = toml::from_str("max_blocked_tasks = 100000").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.hungtask.max_blocked_tasks"), "{err}");
        let t: toml::Table = toml::from_str("repeat_interval_secs = 0").unwrap();
        assert!(build(&bctx, &t).is_ok());
    }
}
