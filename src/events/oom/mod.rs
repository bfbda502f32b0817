//! `oom`: every task the OOM killer picks, host-wide or in a memory cgroup at its limit.
//!
//! Hook: `tp_btf/mark_victim` (no kprobe on `oom_kill_process` needed). The current task is the
//! trigger (its allocation failed); the victim is the tracepoint's task. BPF reads the victim's
//! memory cgroup path, usage, limit and failcnt at the kill, and walks up to the ancestor at its
//! limit to tell a memcg OOM from a global one. User space adds the cgroup's OOM events and
//! memory.stat (v1 or v2 files) and a host /proc/meminfo snapshot: OOM kills are rare, so
//! reading files per event is fine.

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::path::Path;

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
    crate::bpf_skeleton!("oom");
}
use skel::types::oom_event;
use skel::OomSkelBuilder;

// Mirrors oom.h.
const SLOT_GLOBAL: usize = 0;
const SLOT_MEMCG: usize = 1;
const SLOT_RINGBUF_FULL: usize = 2;
const SLOT_SUPPRESSED: usize = 3;
const COUNTER_SLOTS: u32 = 4;
const CONSTRAINT_MEMCG: u32 = 1;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "oom",
    mode: Mode::Event,
    description: "OOM kills (tp_btf/mark_victim): trigger, victim, memory cgroup usage/limit/events, host meminfo",
    requires: &[
        Requirement::Root,
        Requirement::Btf,
        Requirement::BtfTracepoint("mark_victim"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OomConfig {
    /// Records per second at most (0 = no limit); a group kill marks many tasks at once.
    pub max_events_per_second: u32,
    /// Add the victim cgroup's memory.stat to the record.
    pub memory_stat: bool,
    /// Add a /proc/meminfo snapshot to the record.
    pub host_meminfo: bool,
}

impl Default for OomConfig {
    fn default() -> Self {
        OomConfig {
            max_events_per_second: 100,
            memory_stat: true,
            host_meminfo: true,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: OomConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        100_000,
    )?;
    Ok(Tracer::Event(Box::new(Oom {
        cfg,
        counters: Default::default(),
    })))
}

pub struct Oom {
    cfg: OomConfig,
    counters: crate::bpf::counters::CountersCell,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as u64
    } else {
        4096
    }
}

impl EventTracer for Oom {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let page = page_size();
        let mut storage = MaybeUninit::uninit();
        let mut open = OomSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.max_events_per_second = self.cfg.max_events_per_second;
        rodata.unlimited_pages = i64::MAX as u64 / page;
        rodata.counter_slots = COUNTER_SLOTS;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        let _link = skel
            .progs
            .bq_mark_victim
            .attach()
            .context("attaching to tp_btf/mark_victim")?;
        ctx.attached();

        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        let pages = Pages {
            size: page,
            unlimited: i64::MAX as u64 / page,
        };
        bq_bpf::poll_ring_buffer(&|| ctx.stopping(), &skel.maps.events, |data| {
            if let Some(e) = bq_bpf::read_record::<oom_event>(data) {
                self.record(ctx, &e, clock_offset, pages);
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
            "Tasks the OOM killer picked, by constraint (memcg: a memory cgroup at its limit; global: the host).",
            Kind::Counter,
        )
        .sample(&[("constraint", "global")], c.get(SLOT_GLOBAL) as f64)
        .sample(&[("constraint", "memcg")], c.get(SLOT_MEMCG) as f64);
        out.single(
            "suppressed_total",
            "OOM victims not recorded because of the rate limit.",
            Kind::Counter,
            c.get(SLOT_SUPPRESSED) as f64,
        );
        out.single(
            "ringbuf_lost_total",
            "OOM victims that found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct TaskInfo {
    pid: u32,
    tid: u32,
    comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_cgroup_path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
}

impl VictimInfo {
    fn task_path(&self) -> String {
        self.task.memory_cgroup_path.clone().unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
struct VictimInfo {
    #[serde(flatten)]
    task: TaskInfo,
    uid: u32,
    oom_score_adj: i32,
    total_vm_bytes: u64,
    memory_cgroup: MemcgInfo,
}

/// A memory cgroup at the kill: usage, limit and failcnt as the kernel had them (BPF), then
/// its OOM event counters and memory.stat as the files show them a moment later.
#[derive(Debug, Serialize, Default)]
struct MemcgInfo {
    path: String,
    usage_bytes: u64,
    /// Absent when the cgroup has no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failcnt: Option<u64>,
    /// `v1` or `v2`: which files `events` and `stat` come from; absent when the cgroup was
    /// already gone.
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_version: Option<&'static str>,
    /// v1 memory.oom_control (oom_kill_disable, under_oom, oom_kill) or v2 memory.events.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    events: BTreeMap<String, u64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    stat: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize)]
struct OomData {
    /// `memcg` (a memory cgroup at its limit) or `global`.
    constraint: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    constraint_memory_cgroup: Option<MemcgInfo>,
    victim: VictimInfo,
    trigger: TaskInfo,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_snapshot: Option<MemorySnapshot>,
    cpu: u32,
}

#[derive(Debug, Serialize)]
struct MemorySnapshot {
    /// /proc/meminfo, every value in bytes (page counts such as HugePages_* as they are).
    host_meminfo_bytes: BTreeMap<String, u64>,
}

/// `key value` lines (memory.stat, memory.events, memory.oom_control) into a map.
pub fn parse_flat_keyed(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            Some((k.to_string(), v))
        })
        .collect()
}

/// /proc/meminfo into bytes (`kB` values ×1024; unitless counts kept).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, rest) = l.split_once(':')?;
            let mut it = rest.split_whitespace();
            let v: u64 = it.next()?.parse().ok()?;
            let v = match it.next() {
                Some("kB") => v * 1024,
                _ => v,
            };
            Some((k.trim().to_string(), v))
        })
        .collect()
}

/// Reads the OOM event counters and memory.stat of a memcg directory (v1 or v2).
fn read_memcg_files(dir: &Path, with_stat: bool, info: &mut MemcgInfo) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let Some(oc) = read("memory.oom_control") {
        info.cgroup_version = Some("v1");
        info.events = parse_flat_keyed(&oc);
    } else if let Some(ev) = read("memory.events") {
        info.cgroup_version = Some("v2");
        info.events = parse_flat_keyed(&ev);
    } else {
        return;
    }
    if with_stat {
        if let Some(st) = read("memory.stat") {
            info.stat = parse_flat_keyed(&st);
        }
    }
}

fn comm(c: &[i8; 16]) -> String {
    bq_bpf::c_str(&c.map(|c| c as u8))
}

/// Page-count conversions: the page size, and the page count that means "no limit".
#[derive(Clone, Copy)]
struct Pages {
    size: u64,
    unlimited: u64,
}

impl Oom {
    fn memcg_info(
        &self,
        ctx: &RunContext,
        path: String,
        usage_pages: u64,
        limit_pages: u64,
        failcnt: Option<u64>,
        pages: Pages,
    ) -> MemcgInfo {
        let mut info = MemcgInfo {
            usage_bytes: usage_pages.saturating_mul(pages.size),
            limit_bytes: (limit_pages < pages.unlimited)
                .then(|| limit_pages.saturating_mul(pages.size)),
            failcnt,
            ..Default::default()
        };
        if let Some(root) = ctx.containers().memory_root() {
            if !path.contains('…') {
                let dir = root.join(path.trim_start_matches('/'));
                read_memcg_files(&dir, self.cfg.memory_stat, &mut info);
            }
        }
        info.path = path;
        info
    }

    fn record(&self, ctx: &RunContext, e: &oom_event, clock_offset: i64, pages: Pages) {
        let vpath = bq_bpf::cgroup_path_from_names(
            e.victim_memcg_path.depth,
            e.victim_memcg_path.truncated != 0,
            e.victim_memcg_path.names.iter().map(|n| &n.s[..]),
        );
        let victim_container = ctx
            .container_of_memcg(e.victim_memcg_id, Some(&vpath))
            .map(|c| c.id);
        let trigger_path = if e.trigger_memcg_id == e.victim_memcg_id {
            Some(vpath.clone())
        } else {
            ctx.containers()
                .memcg_path(e.trigger_memcg_id)
                .map(|p| p.to_string())
        };
        let trigger_container = ctx
            .container_of_memcg(e.trigger_memcg_id, trigger_path.as_deref())
            .map(|c| c.id);
        let constraint_memcg = (e.constraint == CONSTRAINT_MEMCG).then(|| {
            let path = bq_bpf::cgroup_path_from_names(
                e.constraint_memcg_path.depth,
                e.constraint_memcg_path.truncated != 0,
                e.constraint_memcg_path.names.iter().map(|n| &n.s[..]),
            );
            if e.constraint_memcg_id == e.victim_memcg_id {
                None
            } else {
                Some(self.memcg_info(
                    ctx,
                    path,
                    e.constraint_usage_pages,
                    e.constraint_limit_pages,
                    None,
                    pages,
                ))
            }
        });
        let data = OomData {
            constraint: if e.constraint == CONSTRAINT_MEMCG {
                "memcg"
            } else {
                "global"
            },
            constraint_memory_cgroup: constraint_memcg.flatten(),
            victim: VictimInfo {
                task: TaskInfo {
                    pid: e.victim_pid,
                    tid: e.victim_tid,
                    comm: comm(&e.victim_comm),
                    memory_cgroup_path: Some(vpath.clone()),
                    container_id: victim_container,
                },
                uid: e.victim_uid,
                oom_score_adj: e.victim_oom_score_adj,
                total_vm_bytes: e.victim_total_vm_pages.saturating_mul(pages.size),
                memory_cgroup: self.memcg_info(
                    ctx,
                    vpath,
                    e.victim_memcg_usage_pages,
                    e.victim_memcg_limit_pages,
                    Some(e.victim_memcg_failcnt),
                    pages,
                ),
            },
            trigger: TaskInfo {
                pid: e.trigger_pid,
                tid: e.trigger_tid,
                comm: comm(&e.trigger_comm),
                memory_cgroup_path: trigger_path,
                container_id: trigger_container,
            },
            memory_snapshot: self.cfg.host_meminfo.then(|| MemorySnapshot {
                host_meminfo_bytes: std::fs::read_to_string(ctx.host().proc("meminfo"))
                    .map(|t| parse_meminfo(&t))
                    .unwrap_or_default(),
            }),
            cpu: e.cpu,
        };
        let container = ctx.container_of_memcg(e.victim_memcg_id, Some(&data.victim.task_path()));
        ctx.save_data_at(e.time_ns as i64 + clock_offset, container, &data);
    }
}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for oom_event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_in_bytes() {
        let m = parse_meminfo(
            "MemTotal:       24684000 kB\nMemFree:        18514000 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(m["MemTotal"], 24684000 * 1024);
        assert_eq!(m["MemFree"], 18514000 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
    }

    #[test]
    fn oom_control_and_events_parse() {
        let v1 = parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
        assert_eq!(v1["oom_kill"], 1);
        assert_eq!(v1.len(), 3);
        let v2 = parse_flat_keyed("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n");
        assert_eq!(v2["max"], 12);
        assert_eq!(v2["oom_group_kill"], 0);
    }

    #[test]
    fn config_is_validated() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.oom",
        };
        let t: toml::Table = toml::from_str("max_events_per_second = 1000000").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.oom.max_events_per_second"), "{err}");
        let t: toml::Table = toml::from_str("meminfo = false").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("meminfo"), "{err}");
        let t: toml::Table = toml::from_str("host_meminfo = false").unwrap();
        assert!(build(&bctx, &t).is_ok());
    }
}
