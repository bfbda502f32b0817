//! The kernel's cgroup files and interfaces, v1 and v2: where each controller's hierarchy is
//! mounted (v1, v2 or hybrid), the taskstats netlink query of a cgroup's task states, and pure
//! parsers of the files a cgroup directory holds. Fixture-tested, shared by every tracer that
//! reads a cgroup.

pub mod cpu;
pub mod taskstats;
pub mod tree;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::host::HostRoot;
use crate::procfs::mountinfo;

/// The v1 controllers a hierarchy may hold (its mount's super options name them).
const V1_CONTROLLERS: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "blkio",
    "pids",
    "devices",
    "freezer",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
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
        for m in mountinfo::parse_lenient(mountinfo) {
            let under = host.root().join(m.mount_point.trim_start_matches('/'));
            match m.fstype.as_str() {
                "cgroup2" if layout.v2.is_none() => layout.v2 = Some(under),
                "cgroup" => {
                    for o in &m.super_options {
                        if V1_CONTROLLERS.contains(&o.as_str()) {
                            layout.v1.entry(o.clone()).or_insert(under.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        layout
    }

    /// The host's layout (its `/proc/self/mountinfo`, under the host root); empty if unreadable.
    pub fn read(host: &HostRoot) -> Layout {
        let mountinfo = std::fs::read_to_string(host.proc("self/mountinfo")).unwrap_or_default();
        Layout::from_mountinfo(&mountinfo, host)
    }

    /// The mount point (under the host root) of the hierarchy holding `controller`: its v1
    /// hierarchy, else the cgroup2 mount.
    pub fn mount_of(&self, controller: &str) -> Option<&Path> {
        self.v1
            .get(controller)
            .or(self.v2.as_ref())
            .map(PathBuf::as_path)
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
            l.mount_of("memory"),
            Some(Path::new("/h/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            l.mount_of("blkio"),
            Some(Path::new("/h/sys/fs/cgroup/unified"))
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
}
