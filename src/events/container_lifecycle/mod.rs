//! `container_lifecycle`: containers starting and stopping, seen the moment their cgroup is
//! created or removed (`tp_btf/cgroup_mkdir`, `cgroup_rmdir`). Each one updates the container
//! registry at once (so the new container's first events are attributed) and is recorded.

use std::mem::MaybeUninit;

use anyhow::{Context, Result};
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf};
use crate::config::{parse_section, ConfigResult};
use crate::container::cgroup_path;
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("container_lifecycle");
}
use skel::types::cgroup_event;
use skel::ContainerLifecycleSkelBuilder;

// Mirrors container_lifecycle.h.
const SLOT_MKDIR: usize = 0;
const SLOT_RMDIR: usize = 1;
const SLOT_RINGBUF_FULL: usize = 2;
const COUNTER_SLOTS: u32 = 3;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "container_lifecycle",
    mode: Mode::Event,
    description: "containers starting and stopping, from cgroup creation and removal (tp_btf/cgroup_mkdir, cgroup_rmdir)",
    requires: &[
        Requirement::Root,
        Requirement::Btf,
        Requirement::BtfTracepoint("cgroup_mkdir"),
        Requirement::BtfTracepoint("cgroup_rmdir"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LifecycleConfig {}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let _: LifecycleConfig = parse_section(ctx.section, table)?;
    Ok(Tracer::Event(Box::new(Lifecycle {
        host: ctx.host.clone(),
        counters: Default::default(),
    })))
}

pub struct Lifecycle {
    host: crate::host::HostRoot,
    counters: crate::bpf::counters::CountersCell,
}

/// The hierarchy id of the memory controller from `/proc/cgroups` (`memory<TAB>4<TAB>50<TAB>1`); 0 on a
/// cgroup2-only system (its default hierarchy).
pub fn memory_hierarchy_id(proc_cgroups: &str) -> Option<u32> {
    proc_cgroups.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == "memory")
            .then(|| f.next()?.parse().ok())
            .flatten()
    })
}

#[derive(Serialize)]
struct LifecycleData<'a> {
    event: &'static str,
    runtime: &'a str,
    cgroup_path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_pid: Option<u32>,
}

impl EventTracer for Lifecycle {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let cgroups = std::fs::read_to_string(self.host.proc("cgroups")).unwrap_or_default();
        let hierarchy = memory_hierarchy_id(&cgroups).unwrap_or(0);
        let mut storage = MaybeUninit::uninit();
        let mut open = ContainerLifecycleSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        // Every hierarchy sees each container's cgroup; watch only the one the registry walks.
        rodata.hierarchy_id = hierarchy;
        rodata.counter_slots = COUNTER_SLOTS;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        let _mkdir = skel
            .progs
            .bq_cgroup_mkdir
            .attach()
            .context("attaching to tp_btf/cgroup_mkdir")?;
        let _rmdir = skel
            .progs
            .bq_cgroup_rmdir
            .attach()
            .context("attaching to tp_btf/cgroup_rmdir")?;
        ctx.attached();
        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        bq_bpf::poll_ring_buffer(&|| ctx.stopping(), &skel.maps.events, |data| {
            if let Some(e) = bq_bpf::read_record::<cgroup_event>(data) {
                self.handle(ctx, &e, clock_offset);
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
            "cgroup_events_total",
            "Cgroups created and removed in the watched hierarchy.",
            Kind::Counter,
        )
        .sample(&[("event", "mkdir")], c.get(SLOT_MKDIR) as f64)
        .sample(&[("event", "rmdir")], c.get(SLOT_RMDIR) as f64);
        out.single(
            "ringbuf_lost_total",
            "Cgroup events that found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
        Ok(())
    }
}

impl Lifecycle {
    fn handle(&self, ctx: &RunContext, e: &cgroup_event, clock_offset: i64) {
        let path = bq_bpf::c_str(&e.path.map(|c| c as u8));
        let Some(m) = cgroup_path::parse(&path) else {
            return;
        };
        // Only the container's own cgroup marks its start and end (not sub-cgroups below it).
        let own = m.container_path == path;
        let removed = e.removed != 0;
        // On removal, take the metadata before the registry forgets the container.
        let before = ctx.containers().get(&m.id);
        ctx.containers().resync();
        if !own {
            return;
        }
        let (container, event) = if removed {
            (before, "stopped")
        } else {
            (ctx.containers().get(&m.id), "started")
        };
        let data = LifecycleData {
            event,
            runtime: m.runtime.as_str(),
            cgroup_path: &path,
            init_pid: container.as_ref().map(|c| c.init_pid).filter(|p| *p != 0),
        };
        let fields =
            container
                .map(|c| c.fields())
                .unwrap_or_else(|| crate::record::ContainerFields {
                    id: m.id.clone(),
                    ..Default::default()
                });
        ctx.save_data_at(e.time_ns as i64 + clock_offset, Some(fields), &data);
    }
}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for cgroup_event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_hierarchy_from_proc_cgroups() {
        let text =
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t1\t50\t1\nmemory\t4\t50\t1\n";
        assert_eq!(memory_hierarchy_id(text), Some(4));
        assert_eq!(
            memory_hierarchy_id("#subsys_name\thierarchy\nmemory\t0\t80\t1\n"),
            Some(0)
        );
        assert_eq!(memory_hierarchy_id("cpu\t1\t1\t1\n"), None);
    }
}
