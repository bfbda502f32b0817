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

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::procfs;
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("oom", OpenOomSkel);
}
use skel::types::{counter_slot as Slot, oom_event, oom_scope};
use skel::OomSkelBuilder;

// SAFETY: generated from oom.h: integers and arrays of integers only.
unsafe impl Plain for oom_event {}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "oom",
    mode: Mode::Event,
    description: "OOM kills (tp_btf/mark_victim): trigger, victim, memory cgroup usage/limit/events, host meminfo",
    requires: &[
        Requirement::BPF,
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
        by_container: Default::default(),
    })))
}

pub struct Oom {
    cfg: OomConfig,
    counters: crate::bpf::counters::CountersCell,
    /// Kills per container id, with the latest victim's comm (HuaTuo's `oom_container_total`).
    /// Entries of containers gone are dropped once there are more than [`MAX_CONTAINERS`].
    by_container: std::sync::Mutex<BTreeMap<String, (u64, String)>>,
}

/// Bound of [`Oom::by_container`] before dead containers' entries go.
const MAX_CONTAINERS: usize = 1024;

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
        let pages = Pages {
            size: page,
            unlimited: i64::MAX as u64 / page,
        };
        let mut storage = MaybeUninit::uninit();
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .load(OomSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                rodata.unlimited_pages = pages.unlimited;
                Ok(())
            })?
            .attach(&[])?
            .poll(|e: &oom_event, clock| self.save(ctx, e, clock, pages))?;
        Ok(())
    }

    fn collect(&self, ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Tasks the OOM killer picked, by constraint (memcg: a memory cgroup at its limit; global: the host).",
            Kind::Counter,
        )
        .sample(
            &[("constraint", "global")],
            c.get(Slot::SLOT_GLOBAL.0 as usize) as f64,
        )
        .sample(
            &[("constraint", "memcg")],
            c.get(Slot::SLOT_MEMCG.0 as usize) as f64,
        );
        // HuaTuo's name for the host's count.
        out.single(
            "host_total",
            "Tasks the OOM killer picked for the host (global constraint).",
            Kind::Counter,
            c.get(Slot::SLOT_GLOBAL.0 as usize) as f64,
        );
        self.collect_containers(ctx, out);
        Refused::new(
            "OOM victims",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .write(&c, out);
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

/// `key value` lines of a memcg file (memory.stat, memory.events, memory.oom_control), as far
/// as they parse.
fn flat_keyed(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    let _ = procfs::for_each_kv(text, |k, v| {
        m.insert(k.to_string(), v);
    });
    m
}

/// /proc/meminfo in bytes (`kB` values ×1024; unitless counts kept); empty if malformed.
fn meminfo_bytes(text: &str) -> BTreeMap<String, u64> {
    procfs::meminfo::parse(text)
        .map(|fields| {
            fields
                .into_iter()
                .map(|f| (f.key.to_string(), f.value))
                .collect()
        })
        .unwrap_or_default()
}

/// Reads the OOM event counters and memory.stat of a memcg directory (v1 or v2).
fn read_memcg_files(dir: &Path, with_stat: bool, info: &mut MemcgInfo) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let Some(oc) = read("memory.oom_control") {
        info.cgroup_version = Some("v1");
        info.events = flat_keyed(&oc);
    } else if let Some(ev) = read("memory.events") {
        info.cgroup_version = Some("v2");
        info.events = flat_keyed(&ev);
    } else {
        return;
    }
    if with_stat {
        if let Some(st) = read("memory.stat") {
            info.stat = flat_keyed(&st);
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

fn cgroup_path(p: &skel::types::cgroup_path) -> String {
    bq_bpf::cgroup_path_from_names(p.depth, p.truncated != 0, p.names.iter().map(|n| &n.s[..]))
}

/// A memory cgroup as BPF read it at the kill (its files are added by `save`).
fn memcg_info(
    path: String,
    usage_pages: u64,
    limit_pages: u64,
    failcnt: Option<u64>,
    pages: Pages,
) -> MemcgInfo {
    MemcgInfo {
        path,
        usage_bytes: usage_pages.saturating_mul(pages.size),
        limit_bytes: (limit_pages < pages.unlimited)
            .then(|| limit_pages.saturating_mul(pages.size)),
        failcnt,
        ..Default::default()
    }
}

/// One OOM kill as the kernel reported it (no lookups, no files: what the record says alone).
/// The trigger's cgroup path is known here only when it is the victim's.
fn decode(e: &oom_event, pages: Pages) -> OomData {
    let vpath = cgroup_path(&e.victim_memcg_path);
    let memcg = e.constraint == oom_scope::OOM_MEMCG.0;
    OomData {
        constraint: if memcg { "memcg" } else { "global" },
        // The victim's own cgroup at its limit is told once, under the victim.
        constraint_memory_cgroup: (memcg && e.constraint_memcg_id != e.victim_memcg_id).then(
            || {
                memcg_info(
                    cgroup_path(&e.constraint_memcg_path),
                    e.constraint_usage_pages,
                    e.constraint_limit_pages,
                    None,
                    pages,
                )
            },
        ),
        victim: VictimInfo {
            task: TaskInfo {
                pid: e.victim_pid,
                tid: e.victim_tid,
                comm: comm(&e.victim_comm),
                memory_cgroup_path: Some(vpath.clone()),
                container_id: None,
            },
            uid: e.victim_uid,
            oom_score_adj: e.victim_oom_score_adj,
            total_vm_bytes: e.victim_total_vm_pages.saturating_mul(pages.size),
            memory_cgroup: memcg_info(
                vpath.clone(),
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
            memory_cgroup_path: (e.trigger_memcg_id == e.victim_memcg_id).then_some(vpath),
            container_id: None,
        },
        memory_snapshot: None,
        cpu: e.cpu,
    }
}

impl Oom {
    /// Saves one kill with the containers of victim and trigger, the cgroups' OOM events and
    /// memory.stat and the host's meminfo, attributed to the victim's container.
    fn save(&self, ctx: &RunContext, e: &oom_event, clock: &BootClock, pages: Pages) {
        let mut data = decode(e, pages);
        let container = ctx.container_of_memcg(e.victim_memcg_id, Some(&data.victim.task_path()));
        data.victim.task.container_id = container.as_ref().map(|c| c.id.clone());
        let trigger = &mut data.trigger;
        if trigger.memory_cgroup_path.is_none() {
            trigger.memory_cgroup_path = ctx
                .containers()
                .memcg_path(e.trigger_memcg_id)
                .map(|p| p.to_string());
        }
        trigger.container_id = ctx
            .container_of_memcg(e.trigger_memcg_id, trigger.memory_cgroup_path.as_deref())
            .map(|c| c.id);
        if let Some(root) = ctx.containers().memory_root() {
            let memcgs = [
                data.constraint_memory_cgroup.as_mut(),
                Some(&mut data.victim.memory_cgroup),
            ];
            // A path cut at the depth limit (`/…/x`) names no directory.
            for info in memcgs
                .into_iter()
                .flatten()
                .filter(|m| !m.path.contains('…'))
            {
                let dir = root.join(info.path.trim_start_matches('/'));
                read_memcg_files(&dir, self.cfg.memory_stat, info);
            }
        }
        if self.cfg.host_meminfo {
            data.memory_snapshot = Some(MemorySnapshot {
                host_meminfo_bytes: std::fs::read_to_string(ctx.host().proc("meminfo"))
                    .map(|t| meminfo_bytes(&t))
                    .unwrap_or_default(),
            });
        }
        if let Some(c) = &container {
            let mut by = self.by_container.lock().unwrap_or_else(|e| e.into_inner());
            let entry = by.entry(c.id.clone()).or_default();
            entry.0 += 1;
            entry.1.clone_from(&data.victim.task.comm);
        }
        ctx.save_data_at(clock.wall_ns(e.time_ns), container, &data);
    }

    /// `container_total{<container labels>, latest_victim_comm}` for the live containers.
    fn collect_containers(&self, ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) {
        let mut by = self.by_container.lock().unwrap_or_else(|e| e.into_inner());
        if by.is_empty() {
            return;
        }
        let live = &ctx.cgroups().containers;
        if by.len() > MAX_CONTAINERS {
            by.retain(|id, _| live.iter().any(|c| &c.id == id));
        }
        out.family(
            "container_total",
            "Tasks the OOM killer picked in a container, with the latest victim's command name.",
            Kind::Counter,
        );
        for c in live {
            if let Some((n, comm)) = by.get(&c.id) {
                let labels = c.labels();
                let mut all: Vec<(&str, &str)> = labels.to_vec();
                all.push(("latest_victim_comm", comm));
                out.sample(&all, *n as f64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kill tests/oom.rs provoked (`tail /dev/zero` in a memory cgroup limited to 64 MiB),
    /// captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs).
    const KILL: &str = include_str!("records.hex");

    #[test]
    fn decodes_a_captured_memcg_oom_kill() {
        let e: oom_event = program::captured_record(KILL, 0);
        let pages = Pages {
            size: 4096,
            unlimited: i64::MAX as u64 / 4096,
        };
        let d = serde_json::to_value(decode(&e, pages)).unwrap();
        assert_eq!(d["constraint"], "memcg");
        let v = &d["victim"];
        assert_eq!((&v["comm"], &v["pid"]), (&"tail".into(), &v["tid"]));
        assert_eq!(v["memory_cgroup_path"], "/bq-oom-3015-0");
        let m = &v["memory_cgroup"];
        assert_eq!(m["path"], "/bq-oom-3015-0");
        assert_eq!(m["limit_bytes"], 64 << 20);
        assert_eq!(m["usage_bytes"], 64 << 20);
        assert!(m["failcnt"].as_u64().unwrap() > 0);
        // The cgroup's files are read by save(), not decoded.
        assert!(m.get("events").is_none() && m.get("cgroup_version").is_none());
        // The victim's own cgroup was at its limit: not repeated as the constraint.
        assert!(d.get("constraint_memory_cgroup").is_none());
        // tail's own allocation failed: the trigger is the victim, in the victim's cgroup.
        assert_eq!(d["trigger"]["pid"], v["pid"]);
        assert_eq!(d["trigger"]["memory_cgroup_path"], "/bq-oom-3015-0");
        assert!(d.get("memory_snapshot").is_none());
        // Without a limit (at or past `unlimited`) there is no limit_bytes.
        let no_limit = Pages {
            unlimited: e.victim_memcg_limit_pages,
            ..pages
        };
        let d = serde_json::to_value(decode(&e, no_limit)).unwrap();
        assert!(d["victim"]["memory_cgroup"].get("limit_bytes").is_none());
    }

    #[test]
    fn meminfo_is_in_bytes() {
        let m = meminfo_bytes(
            "MemTotal:       24684000 kB\nMemFree:        18514000 kB\nHugePages_Total:       0\n",
        );
        assert_eq!(m["MemTotal"], 24684000 * 1024);
        assert_eq!(m["MemFree"], 18514000 * 1024);
        assert_eq!(m["HugePages_Total"], 0);
    }

    #[test]
    fn oom_control_and_events_parse() {
        let v1 = flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n");
        assert_eq!(v1["oom_kill"], 1);
        assert_eq!(v1.len(), 3);
        let v2 = flat_keyed("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n");
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
