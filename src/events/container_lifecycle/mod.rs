//! `container_lifecycle`: containers starting and stopping, seen the moment their cgroup is
//! created or removed (`tp_btf/cgroup_mkdir`, `cgroup_rmdir`). Each one updates the container
//! registry at once (so the new container's first events are attributed) and is recorded.

use std::mem::MaybeUninit;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{parse_section, ConfigResult};
use crate::container::cgroup_path::{self, CgroupMatch};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("container_lifecycle", OpenContainerLifecycleSkel);
}
use skel::types::{cgroup_event, counter_slot as Slot};
use skel::ContainerLifecycleSkelBuilder;

// SAFETY: generated from container_lifecycle.h: integers and arrays of integers only.
unsafe impl Plain for cgroup_event {}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "container_lifecycle",
    mode: Mode::Event,
    description: "containers starting and stopping, from cgroup creation and removal (tp_btf/cgroup_mkdir, cgroup_rmdir)",
    requires: &[
        Requirement::BPF,
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

#[derive(Debug, Serialize)]
struct LifecycleData {
    event: &'static str,
    runtime: &'static str,
    cgroup_path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_pid: Option<u32>,
}

impl EventTracer for Lifecycle {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let cgroups = std::fs::read_to_string(self.host.proc("cgroups")).unwrap_or_default();
        let hierarchy = memory_hierarchy_id(&cgroups).unwrap_or(0);
        let mut storage = MaybeUninit::uninit();
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .load(
                ContainerLifecycleSkelBuilder::default(),
                &mut storage,
                |open| {
                    let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                    // Every hierarchy sees each container's cgroup; watch only the one the
                    // registry walks.
                    rodata.hierarchy_id = hierarchy;
                    Ok(())
                },
            )?
            .attach(&[])?
            .poll(|e: &cgroup_event, clock| self.save(ctx, e, clock))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "cgroup_events_total",
            "Cgroups created and removed in the watched hierarchy.",
            Kind::Counter,
        )
        .sample(
            &[("event", "mkdir")],
            c.get(Slot::SLOT_MKDIR.0 as usize) as f64,
        )
        .sample(
            &[("event", "rmdir")],
            c.get(Slot::SLOT_RMDIR.0 as usize) as f64,
        );
        Refused::unlimited("Cgroup events", Slot::SLOT_RINGBUF_FULL.0).write(&c, out);
        Ok(())
    }
}

/// A cgroup created or removed, as the kernel reported it (no lookups: what the record says
/// alone): the container its path names, and the record of its start or end. None for a
/// cgroup of no container.
fn decode(e: &cgroup_event) -> Option<(CgroupMatch, LifecycleData)> {
    let path = bq_bpf::c_str(&e.path.map(|c| c as u8));
    let m = cgroup_path::parse(&path)?;
    let data = LifecycleData {
        event: if e.removed != 0 { "stopped" } else { "started" },
        runtime: m.runtime.as_str(),
        cgroup_path: path,
        init_pid: None,
    };
    Some((m, data))
}

impl Lifecycle {
    /// Brings the registry up to date with a container's cgroup and, for the container's own
    /// cgroup, saves its start or end with what the registry knows of it.
    fn save(&self, ctx: &RunContext, e: &cgroup_event, clock: &BootClock) {
        let Some((m, mut data)) = decode(e) else {
            return;
        };
        // Only the container's own cgroup marks its start and end (not sub-cgroups below it).
        let own = m.container_path == data.cgroup_path;
        // On removal, take the metadata before the registry forgets the container.
        let before = ctx.containers().get(&m.id);
        ctx.containers().resync();
        if !own {
            return;
        }
        let container = if e.removed != 0 {
            before
        } else {
            ctx.containers().get(&m.id)
        };
        data.init_pid = container.as_ref().map(|c| c.init_pid).filter(|p| *p != 0);
        let fields =
            container
                .map(|c| c.fields())
                .unwrap_or_else(|| crate::record::ContainerFields {
                    id: m.id.clone(),
                    ..Default::default()
                });
        ctx.save_data_at(clock.wall_ns(e.time_ns), Some(fields), &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs) from tests/containers.rs: a
    /// podman container's cgroup created and removed, then the cgroup of the fake kubelet's
    /// `kubepods` parent (no container).
    const RECORDS: &str = include_str!("records.hex");

    fn captured(n: usize) -> cgroup_event {
        program::captured_record(RECORDS, n)
    }

    const PODMAN_ID: &str = "f6cf91b7661ed1b1e12e673911d3ac6121adc23002ca286b71a1f0856e17122f";

    #[test]
    fn decodes_a_captured_container_start_and_end() {
        let (m, start) = decode(&captured(0)).expect("a container's cgroup");
        assert_eq!(m.id, PODMAN_ID);
        assert_eq!((start.event, start.runtime), ("started", "podman"));
        assert_eq!(
            start.cgroup_path,
            format!("/libpod_parent/libpod-{PODMAN_ID}")
        );
        assert_eq!(
            m.container_path, start.cgroup_path,
            "the container's own cgroup"
        );
        assert_eq!(start.init_pid, None, "from the registry, in save()");
        let (m, end) = decode(&captured(1)).expect("a container's cgroup");
        assert_eq!((m.id.as_str(), end.event), (PODMAN_ID, "stopped"));
        assert!(decode(&captured(2)).is_none());
    }

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
