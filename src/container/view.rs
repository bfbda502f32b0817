//! The containers as per-container collectors see them at one scrape: each live container's
//! cgroup (its path relative to the hierarchy roots) with its label values, and where the
//! hierarchies are mounted. Taken from the registry (one cgroup walk serves events, metrics and
//! detectors), at most [`MAX_AGE`] old.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::cgroupfs::Layout;
use crate::config::Compat;
use crate::container::Container;
use crate::host::{file::read_optional, HostRoot};

/// A view is walked again once it is older than this.
pub const MAX_AGE: Duration = Duration::from_secs(2);

/// Label names every container series carries (the README's metrics contract), in this order.
pub const CONTAINER_LABELS: [&str; 5] = [
    "container_id",
    "container_name",
    "container_host_namespace",
    "container_type",
    "container_qos",
];

/// Label names of container series under `compat = "huatuo"`, in HuaTuo's order (HuaTuo has
/// no container id label; `container_host` is the pod's hostname, `container_level` its QoS).
pub const HUATUO_CONTAINER_LABELS: [&str; 5] = [
    "container_host",
    "container_name",
    "container_type",
    "container_level",
    "container_hostnamespace",
];

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    pub id: String,
    /// Path relative to the hierarchy root, starting with `/`.
    pub rel: String,
    /// [`CONTAINER_LABELS`] or [`HUATUO_CONTAINER_LABELS`].
    names: &'static [&'static str; 5],
    /// Their values.
    values: [String; 5],
}

impl ContainerCgroup {
    /// `compat`: whose label names and values container series carry.
    pub fn of(c: &Container, compat: Compat) -> ContainerCgroup {
        let (names, values) = if compat.is_huatuo() {
            // HuaTuo spells the DaemonSet type in camel case.
            let kind = if c.kind == "daemonset" {
                "daemonSet".to_string()
            } else {
                c.kind.clone()
            };
            // Without an id label, two unnamed containers would write the same series: an
            // unnamed one is named by its short id, as `docker ps` shows it.
            let name = if c.name.is_empty() {
                c.id.chars().take(12).collect()
            } else {
                c.name.clone()
            };
            (
                &HUATUO_CONTAINER_LABELS,
                [
                    c.hostname.clone(),
                    name,
                    kind,
                    c.qos.clone(),
                    c.namespace.clone(),
                ],
            )
        } else {
            (
                &CONTAINER_LABELS,
                [
                    c.id.clone(),
                    c.name.clone(),
                    c.namespace.clone(),
                    c.kind.clone(),
                    c.qos.clone(),
                ],
            )
        };
        ContainerCgroup {
            id: c.id.clone(),
            rel: c.cgroup_path.clone(),
            names,
            values,
        }
    }

    /// The container labels, ready for [`crate::exposition::MetricSink::sample2`].
    pub fn labels(&self) -> [(&str, &str); 5] {
        [
            (self.names[0], self.values[0].as_str()),
            (self.names[1], self.values[1].as_str()),
            (self.names[2], self.values[2].as_str()),
            (self.names[3], self.values[3].as_str()),
            (self.names[4], self.values[4].as_str()),
        ]
    }
}

/// The live containers' cgroups at one point in time, by id.
#[derive(Debug, Default)]
pub struct ContainerCgroups {
    pub layout: Layout,
    pub containers: Vec<ContainerCgroup>,
}

impl ContainerCgroups {
    /// The containers by the id of their cgroup in `controller`'s hierarchy (the directory's
    /// inode: what BPF programs key per-cgroup maps by) → index into `containers`. Containers
    /// without a directory there are left out.
    pub fn by_cgroup_id(&self, controller: &str) -> HashMap<u64, usize> {
        use std::os::unix::fs::MetadataExt;
        self.containers
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let dir = self.layout.dir(controller, &c.rel)?;
                Some((std::fs::metadata(dir.path).ok()?.ino(), i))
            })
            .collect()
    }

    /// A process of the container that lives in its own network namespace (not the host's),
    /// so that `/proc/<pid>/net/*` shows the container's network. None for host-network
    /// containers or when the cgroup has no process.
    pub fn netns_pid(&self, host: &HostRoot, c: &ContainerCgroup, buf: &mut String) -> Option<u32> {
        use std::os::unix::fs::MetadataExt;
        let dir: PathBuf = ["memory", "cpu", "pids"]
            .iter()
            .filter_map(|ctrl| self.layout.dir(ctrl, &c.rel))
            .map(|d| d.path)
            .find(|p| p.join("cgroup.procs").exists())?;
        if !read_optional(&dir.join("cgroup.procs"), buf).ok()? {
            return None;
        }
        let pid: u32 = buf.lines().next()?.trim().parse().ok()?;
        // pid 1's namespace is the host's; where pid 1 is out of reach (a sandbox), our own.
        let host_ns = std::fs::metadata(host.proc("1/ns/net"))
            .or_else(|_| std::fs::metadata(host.proc("self/ns/net")))
            .ok()?;
        let ns = std::fs::metadata(host.proc(&format!("{pid}/ns/net"))).ok()?;
        (ns.ino() != host_ns.ino() || ns.dev() != host_ns.dev()).then_some(pid)
    }
}
