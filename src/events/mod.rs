//! Always-on kernel event tracers, one folder each (Rust + BPF C).

pub mod container_lifecycle;
pub mod dropwatch;
pub mod hungtask;
pub mod memreclaim;
pub mod netdev_events;
pub mod netrecvlat;
pub mod oom;
pub mod signal;
pub mod softirq;
pub mod softlockup;
pub mod tcp_retransmit;

use crate::record::ContainerFields;
use crate::tracer::RunContext;

/// The container fields of a record from a memory cgroup: the container registry first (full
/// metadata), else the container id in the cgroup path (a container the registry no longer
/// knows), else none (the host).
pub(crate) fn memcg_container(
    ctx: &RunContext,
    memcg_id: u64,
    path: Option<&str>,
) -> Option<ContainerFields> {
    if let Some(c) = ctx.containers().by_memcg(memcg_id) {
        return Some(c.fields());
    }
    let (_, id) = crate::container::container_of_cgroup_path(path?)?;
    Some(ContainerFields {
        id,
        ..Default::default()
    })
}

/// The container fields of a record from a network namespace inode.
pub(crate) fn netns_container(ctx: &RunContext, inum: u32) -> Option<ContainerFields> {
    ctx.containers().by_netns(inum as u64).map(|c| c.fields())
}
