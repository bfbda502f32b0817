//! Cgroup-tree helpers of the registry: finding the memory hierarchy, walking it, a cgroup's
//! first pid, a process's cgroup path and network namespace, containerd's task list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::ContainerRegistry;
use crate::host::HostRoot;

/// The cgroup path of `controller` (e.g. `memory`) in a /proc/<pid>/cgroup text: the v1 line
/// naming the controller, else the v2 line (`0::/path`).
pub fn proc_cgroup_path(text: &str, controller: &str) -> Option<String> {
    let mut v2 = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == controller) {
            return Some(path.to_string());
        }
    }
    v2
}

/// The mount point of the cgroup hierarchy holding `controller` (v1), else the cgroup2 mount.
pub fn cgroup_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4);
        let mut rfields = right.split_whitespace();
        let fstype = rfields.next();
        let super_opts = rfields.nth(1).unwrap_or("");
        match (fstype, mount_point) {
            (Some("cgroup"), Some(mp)) if super_opts.split(',').any(|o| o == controller) => {
                return Some(PathBuf::from(mp));
            }
            (Some("cgroup2"), Some(mp)) if v2.is_none() => v2 = Some(PathBuf::from(mp)),
            _ => {}
        }
    }
    v2
}

impl ContainerRegistry {
    /// The memory controller's hierarchy under the host root (v1 `memory`, else cgroup2):
    /// `<root><path>` is the directory of a memory cgroup path.
    pub fn memory_root(&self) -> Option<PathBuf> {
        let mountinfo = std::fs::read_to_string(self.host.proc("self/mountinfo")).ok()?;
        let mp = cgroup_mount(&mountinfo, "memory")?;
        Some(self.host.root().join(mp.strip_prefix("/").unwrap_or(&mp)))
    }

    /// `/<namespace>/<id>` of every containerd task (runtime v2 shim state directories).
    pub(super) fn containerd_tasks(&self) -> Vec<String> {
        let mut out = Vec::new();
        for dir in &self.cfg.containerd_state_dirs {
            let base = self
                .host
                .root()
                .join(dir.strip_prefix("/").unwrap_or(dir))
                .join("io.containerd.runtime.v2.task");
            let Ok(namespaces) = std::fs::read_dir(&base) else {
                continue;
            };
            for ns in namespaces.flatten() {
                let Ok(tasks) = std::fs::read_dir(ns.path()) else {
                    continue;
                };
                for t in tasks.flatten() {
                    out.push(format!(
                        "/{}/{}",
                        ns.file_name().to_string_lossy(),
                        t.file_name().to_string_lossy()
                    ));
                }
            }
        }
        out
    }
}

/// Every cgroup directory under `root`: inode → path relative to `root`. Inodes come from the
/// directory entries themselves (no stat per cgroup).
pub(super) fn walk_cgroups(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, depth: usize) {
    use std::os::unix::fs::{DirEntryExt, MetadataExt};
    if depth == 0 {
        if let Ok(meta) = std::fs::metadata(dir) {
            out.insert(meta.ino(), "/".into());
        }
    }
    if depth > 32 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            out.insert(e.ino(), rel);
            walk_cgroups(root, &path, out, depth + 1);
        }
    }
}

/// The lowest pid in a cgroup (its init process, for containers), 0 if none.
pub(super) fn first_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()
        .and_then(|t| t.lines().filter_map(|l| l.trim().parse::<u32>().ok()).min())
        .unwrap_or(0)
}

/// The network namespace inode of a process (`net:[4026531840]`), 0 if unknown.
pub fn netns_inum(host: &HostRoot, pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    std::fs::read_link(host.proc(&format!("{pid}/ns/net")))
        .ok()
        .and_then(|l| {
            l.to_str()?
                .strip_prefix("net:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_lines() {
        let v1 = "9:name=systemd:/\n4:memory:/libpod_parent/libpod-abc\n1:cpu,cpuacct:/x\n0::/\n";
        assert_eq!(
            proc_cgroup_path(v1, "memory").as_deref(),
            Some("/libpod_parent/libpod-abc")
        );
        assert_eq!(proc_cgroup_path(v1, "cpuacct").as_deref(), Some("/x"));
        assert_eq!(proc_cgroup_path(v1, "blkio").as_deref(), Some("/"));
        assert_eq!(
            proc_cgroup_path("0::/system.slice/a.scope\n", "memory").as_deref(),
            Some("/system.slice/a.scope")
        );
        assert_eq!(proc_cgroup_path("", "memory"), None);
    }

    #[test]
    fn finds_memory_hierarchy_in_mountinfo() {
        let mi = "\
30 25 0:26 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
35 30 0:31 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw
40 30 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
41 30 0:37 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
";
        assert_eq!(
            cgroup_mount(mi, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            cgroup_mount(mi, "cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(
            cgroup_mount(mi, "blkio"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }
}
