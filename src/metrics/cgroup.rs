//! Container cgroups for per-container collectors: where each controller's hierarchy is mounted
//! (cgroup v1, v2 or hybrid), and which cgroup directories are containers (found by walking the
//! tree under the host root and matching [`container_of_cgroup_path`]). The walk is shared by
//! all collectors of a scrape and cached for [`RESCAN_INTERVAL`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::container::{container_of_cgroup_path, Runtime};
use crate::host::HostRoot;

/// How long a container list is reused before the tree is walked again.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
/// Bounds on the walk: deep or huge trees cost at most this much per rescan.
const MAX_DEPTH: usize = 12;
const MAX_DIRS: usize = 50_000;

/// Label names every container series carries (DESIGN.md), in this order.
pub const CONTAINER_LABELS: [&str; 5] = [
    "container_id",
    "container_name",
    "container_host_namespace",
    "container_type",
    "container_qos",
];

/// Where the cgroup hierarchies are, as paths under the host root.
#[derive(Debug, Clone, Default)]
pub struct Layout {
    /// v1 controller name → mount point (a mount with several controllers is listed under each).
    pub v1: HashMap<String, PathBuf>,
    /// The cgroup2 mount, if any (unified, or `unified/` in hybrid mode).
    pub v2: Option<PathBuf>,
}

/// A cgroup directory of one controller, and whether it speaks v2 file names.
pub struct CgroupDir {
    pub path: PathBuf,
    pub v2: bool,
}

impl Layout {
    /// Parses `/proc/self/mountinfo`; mount points are placed under `host`.
    pub fn from_mountinfo(mountinfo: &str, host: &HostRoot) -> Layout {
        let mut layout = Layout::default();
        for line in mountinfo.lines() {
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mp) = left.split_whitespace().nth(4) else {
                continue;
            };
            let mut r = right.split_whitespace();
            let fstype = r.next().unwrap_or("");
            let opts = r.nth(1).unwrap_or("");
            let under = host.root().join(mp.trim_start_matches('/'));
            match fstype {
                "cgroup2" if layout.v2.is_none() => layout.v2 = Some(under),
                "cgroup" => {
                    for o in opts.split(',') {
                        if matches!(
                            o,
                            "cpu" | "cpuacct" | "cpuset" | "memory" | "blkio" | "pids"
                        ) {
                            layout.v1.entry(o.to_string()).or_insert(under.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// The directory of `rel` for `controller`: the v1 hierarchy holding it, else cgroup2.
    pub fn dir(&self, controller: &str, rel: &str) -> Option<CgroupDir> {
        let rel = rel.trim_start_matches('/');
        if let Some(m) = self.v1.get(controller) {
            return Some(CgroupDir {
                path: m.join(rel),
                v2: false,
            });
        }
        self.v2.as_ref().map(|m| CgroupDir {
            path: m.join(rel),
            v2: true,
        })
    }

    /// `rel` in the cgroup2 hierarchy (PSI files live only there).
    pub fn v2_dir(&self, rel: &str) -> Option<PathBuf> {
        self.v2
            .as_ref()
            .map(|m| m.join(rel.trim_start_matches('/')))
    }

    /// The hierarchy walked to find containers: v1 memory, else v1 cpu, else cgroup2.
    fn discovery_root(&self) -> Option<&Path> {
        self.v1
            .get("memory")
            .or_else(|| self.v1.get("cpu"))
            .or(self.v2.as_ref())
            .map(PathBuf::as_path)
    }
}

/// One container's cgroup.
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    pub id: String,
    pub runtime: Runtime,
    /// Path relative to the hierarchy root, starting with `/`.
    pub rel: String,
    /// Values of [`CONTAINER_LABELS`]: name, namespace, type and QoS from the agent's container
    /// registry (empty where unknown).
    values: [String; 5],
}

impl ContainerCgroup {
    pub fn new(id: String, runtime: Runtime, rel: String) -> ContainerCgroup {
        let meta = crate::container::agent_registry().and_then(|r| r.get_exact(&id));
        let field = |f: fn(&crate::container::Container) -> &String| {
            meta.as_ref().map(|m| f(m).clone()).unwrap_or_default()
        };
        let values = [
            id.clone(),
            field(|m| &m.name),
            field(|m| &m.namespace),
            field(|m| &m.kind),
            field(|m| &m.qos),
        ];
        ContainerCgroup {
            id,
            runtime,
            rel,
            values,
        }
    }

    /// The container labels, ready for [`crate::exposition::MetricSink::sample2`].
    pub fn labels(&self) -> [(&str, &str); 5] {
        [
            (CONTAINER_LABELS[0], self.values[0].as_str()),
            (CONTAINER_LABELS[1], self.values[1].as_str()),
            (CONTAINER_LABELS[2], self.values[2].as_str()),
            (CONTAINER_LABELS[3], self.values[3].as_str()),
            (CONTAINER_LABELS[4], self.values[4].as_str()),
        ]
    }
}

/// The containers of one host root at one point in time.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub layout: Layout,
    pub containers: Vec<ContainerCgroup>,
}

type Cache = HashMap<PathBuf, (Instant, Arc<Snapshot>)>;

/// The current container list (walked at most every [`RESCAN_INTERVAL`], shared by all
/// collectors).
pub fn snapshot(host: &HostRoot) -> Arc<Snapshot> {
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let mut guard = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = guard.get_or_insert_with(HashMap::new);
    if let Some((at, snap)) = cache.get(host.root()) {
        if at.elapsed() < RESCAN_INTERVAL {
            return snap.clone();
        }
    }
    let snap = Arc::new(scan(host));
    cache.insert(host.root().to_path_buf(), (Instant::now(), snap.clone()));
    snap
}

/// Walks the cgroup tree now (no cache).
pub fn scan(host: &HostRoot) -> Snapshot {
    let mountinfo = std::fs::read_to_string(host.proc("self/mountinfo")).unwrap_or_default();
    let layout = Layout::from_mountinfo(&mountinfo, host);
    let mut containers = Vec::new();
    if let Some(root) = layout.discovery_root() {
        let mut visited = 0;
        walk(root, root, 0, &mut visited, &mut containers);
    }
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    containers.dedup_by(|a, b| a.id == b.id);
    Snapshot { layout, containers }
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    visited: &mut usize,
    out: &mut Vec<ContainerCgroup>,
) {
    if depth > MAX_DEPTH || *visited >= MAX_DIRS {
        return;
    }
    *visited += 1;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let path = e.path();
        let rel = match path.strip_prefix(root) {
            Ok(p) => format!("/{}", p.display()),
            Err(_) => continue,
        };
        // The shallowest directory naming a container is the container; do not descend.
        if let Some((rt, id)) = container_of_cgroup_path(&rel) {
            out.push(ContainerCgroup::new(id, rt, rel));
            continue;
        }
        walk(root, &path, depth + 1, visited, out);
    }
}

/// Number of CPUs in a cpuset list like `0-3,8,10-11`.
pub fn cpuset_count(list: &str) -> Option<u64> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let mut n = 0u64;
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a.trim().parse().ok()?;
                let b: u64 = b.trim().parse().ok()?;
                if b < a {
                    return None;
                }
                n += b - a + 1;
            }
            None => {
                part.trim().parse::<u64>().ok()?;
                n += 1;
            }
        }
    }
    Some(n)
}

/// A process of the container that lives in its own network namespace (not the host's), so
/// that `/proc/<pid>/net/*` shows the container's network. None for host-network containers
/// or when the cgroup has no process.
pub fn netns_pid(
    host: &HostRoot,
    layout: &Layout,
    c: &ContainerCgroup,
    buf: &mut String,
) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let dir = ["memory", "cpu", "pids"]
        .iter()
        .filter_map(|ctrl| layout.dir(ctrl, &c.rel))
        .find(|d| d.path.join("cgroup.procs").exists())?;
    if !crate::host::file::read_optional(&dir.path.join("cgroup.procs"), buf).ok()? {
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

/// The host's copy of a `/proc/net` file: `proc/1/net/<name>` (pid 1's namespace, right even
/// when the agent runs in a container with the host's /proc) if present, else `proc/net/<name>`.
pub fn host_net_file(host: &HostRoot, name: &str) -> PathBuf {
    let p1 = host.proc(&format!("1/net/{name}"));
    if p1.exists() {
        p1
    } else {
        host.proc(&format!("net/{name}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_layout() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let l = Layout::from_mountinfo(mi, &HostRoot::new("/h"));
        assert_eq!(l.v1["cpu"], PathBuf::from("/h/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(
            l.v1["cpuacct"],
            PathBuf::from("/h/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(l.v2, Some(PathBuf::from("/h/sys/fs/cgroup/unified")));
        let d = l.dir("memory", "/docker/x").unwrap();
        assert_eq!(d.path, PathBuf::from("/h/sys/fs/cgroup/memory/docker/x"));
        assert!(!d.v2);
        let d = l.dir("io", "/docker/x").unwrap();
        assert!(d.v2);
        assert_eq!(
            l.discovery_root(),
            Some(Path::new("/h/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn pure_v2_layout() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let l = Layout::from_mountinfo(mi, &HostRoot::default());
        assert!(l.v1.is_empty());
        let d = l.dir("cpu", "/system.slice").unwrap();
        assert!(d.v2);
        assert_eq!(d.path, PathBuf::from("/sys/fs/cgroup/system.slice"));
    }

    #[test]
    fn cpuset_lists() {
        assert_eq!(cpuset_count("0-3,8,10-11\n"), Some(7));
        assert_eq!(cpuset_count("1"), Some(1));
        for bad in ["", "a", "3-1", "1-", "1,,2"] {
            assert_eq!(cpuset_count(bad), None, "{bad:?}");
        }
    }
}
