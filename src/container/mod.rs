//! Which container an event or a cgroup belongs to, and what is known about it.
//!
//! The registry walks the memory cgroup hierarchy (v1 `memory` controller, or the cgroup2 tree)
//! and recognises container cgroups by their path ([`cgroup_path::parse`]); names and pod fields
//! come from the runtime's API and the kubelet when those answer ([`metadata`]). BPF events carry
//! a memory cgroup id (the cgroup directory's inode), so attributing an event is one hash lookup
//! under a read lock. Unknown ids trigger a resync at most once a second; a container's metadata
//! is kept a while after it exits so that late events still resolve.

pub mod cgroup_path;
mod config;
pub mod filter;
pub mod kubelet;
pub mod metadata;
mod registry;
pub mod view;

use serde::Serialize;

pub use cgroup_path::{is_container_id, CgroupMatch, Runtime};
pub use config::ContainersConfig;
pub use registry::ContainerRegistry;

use crate::record::ContainerFields;

/// A container as the agent knows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Container {
    pub id: String,
    pub runtime: &'static str,
    pub name: String,
    pub hostname: String,
    /// Kubernetes namespace.
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    pub qos: String,
    /// `normal`, `daemonset` or `sidecar`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Path in the memory (or unified) cgroup hierarchy.
    pub cgroup_path: String,
    pub memory_cgroup_id: u64,
    pub init_pid: u32,
    pub net_namespace_inum: u64,
    /// RFC 3339 time the agent first saw it.
    pub first_seen: String,
    /// Set once it is gone; kept `keep_exited_secs` for late events, not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exited: Option<String>,
}

impl Container {
    /// This container named by a metadata answer: what the answer says wins, fields it leaves
    /// empty keep what the cgroup path (pod uid, QoS) or an earlier answer gave.
    pub fn with_meta(&self, md: &metadata::Meta) -> Container {
        let pick = |new: &str, old: &str| if new.is_empty() { old } else { new }.to_string();
        Container {
            name: pick(&md.name, &self.name),
            hostname: md.hostname.clone(),
            namespace: md.namespace.clone(),
            pod: md.pod.clone(),
            pod_uid: pick(&md.pod_uid, &self.pod_uid),
            qos: pick(&md.qos, &self.qos),
            kind: pick(&md.kind, &self.kind),
            ..self.clone()
        }
    }

    /// The container fields of a record.
    pub fn fields(&self) -> ContainerFields {
        ContainerFields {
            id: self.id.clone(),
            name: self.name.clone(),
            hostname: self.hostname.clone(),
            host_namespace: self.namespace.clone(),
            kind: self.kind.clone(),
            qos: self.qos.clone(),
        }
    }
}

/// The container id in a cgroup path, from its container segment (compatibility helper).
pub fn container_of_cgroup_path(path: &str) -> Option<(Runtime, String)> {
    cgroup_path::parse(path).map(|m| (m.runtime, m.id))
}
