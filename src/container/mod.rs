//! Cgroup → container attribution: which memory cgroup a BPF event's id names, and which
//! container (if any) that cgroup path belongs to. Unknown paths belong to the host, never to a
//! guessed container.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::host::HostRoot;
use crate::store::ContainerFields;

/// Minimum time between two rescans of the cgroup tree on a cache miss, so a stream of events
/// from an unknown cgroup cannot turn into a stream of directory walks.
const RESCAN_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// A container runtime recognised from a cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "cri-o",
            Runtime::Podman => "podman",
        }
    }
}

/// The container id in a cgroup path, from its last container-looking segment.
pub fn container_of_cgroup_path(path: &str) -> Option<(Runtime, String)> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, seg) in segments.iter().enumerate().rev() {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        // systemd driver: docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope
        for (prefix, rt) in [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::Crio),
            ("libpod-", Runtime::Podman),
        ] {
            if let Some(id) = seg.strip_prefix(prefix) {
                if is_container_id(id) {
                    return Some((rt, id.to_string()));
                }
            }
        }
        // Mangled form: kubepods-...slice:cri-containerd:<id>
        if let Some((_, id)) = seg.rsplit_once(':') {
            if is_container_id(id) {
                let rt = if seg.contains("crio") {
                    Runtime::Crio
                } else if seg.contains("docker") {
                    Runtime::Docker
                } else {
                    Runtime::Containerd
                };
                return Some((rt, id.to_string()));
            }
        }
        // cgroupfs driver: /docker/<id>, /kubepods/<qos>/pod<uid>/<id>, /libpod_parent/libpod-<id>
        if is_container_id(seg) {
            let parent = if i > 0 { segments[i - 1] } else { "" };
            let rt = match parent {
                "docker" => Runtime::Docker,
                p if p.starts_with("pod") => Runtime::Containerd,
                _ => Runtime::Docker,
            };
            return Some((rt, seg.to_string()));
        }
    }
    None
}

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

fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// The mount point of the cgroup hierarchy holding `controller` (v1), else the cgroup2 mount.
pub fn cgroup_mount(mountinfo: &str, controller: &str) -> Option<PathBuf> {
    let mut v2 = None;
    for line in mountinfo.lines() {
        // "<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> <source> <super opts>"
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut fields = left.split_whitespace();
        let mount_point = fields.nth(4);
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

/// Minimum time between two /proc scans for network namespaces on a cache miss.
const NETNS_RESCAN_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Resolves memory cgroup ids (kernfs inode numbers, as BPF reads them) to paths and containers,
/// and network namespaces (inode numbers) to the container living in them.
pub struct ContainerResolver {
    host: HostRoot,
    memcg: Mutex<MemcgIndex>,
    netns: Mutex<NetnsIndex>,
}

#[derive(Default)]
struct NetnsIndex {
    /// netns inode → the container of a process in it (None: the host or no container).
    containers: HashMap<u32, Option<(Runtime, String)>>,
    last_scan: Option<Instant>,
}

#[derive(Default)]
struct MemcgIndex {
    root: Option<PathBuf>,
    paths: HashMap<u64, String>,
    last_scan: Option<Instant>,
}

impl ContainerResolver {
    pub fn new(host: HostRoot) -> ContainerResolver {
        ContainerResolver {
            host,
            memcg: Mutex::new(MemcgIndex::default()),
            netns: Mutex::new(NetnsIndex::default()),
        }
    }

    /// The memory cgroup path (relative to the hierarchy root, starting with `/`) of an id.
    pub fn memcg_path(&self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        let mut idx = self.memcg.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = idx.paths.get(&id) {
            return Some(p.clone());
        }
        if idx
            .last_scan
            .is_some_and(|t| t.elapsed() < RESCAN_MIN_INTERVAL)
        {
            return None;
        }
        let root = self.memcg_root_locked(&mut idx)?;
        let mut paths = HashMap::new();
        scan_cgroup_tree(&root, &root, &mut paths, 0);
        idx.paths = paths;
        idx.last_scan = Some(Instant::now());
        idx.paths.get(&id).cloned()
    }

    /// The directory of the memory cgroup hierarchy (v1 `memory` mount, else the cgroup2
    /// mount) under the host root: `<root><path>` is the directory of a memcg path.
    pub fn memcg_root(&self) -> Option<PathBuf> {
        let mut idx = self.memcg.lock().unwrap_or_else(|e| e.into_inner());
        self.memcg_root_locked(&mut idx)
    }

    fn memcg_root_locked(&self, idx: &mut MemcgIndex) -> Option<PathBuf> {
        if idx.root.is_none() {
            let mountinfo =
                std::fs::read_to_string(self.host.proc("self/mountinfo")).unwrap_or_default();
            idx.root = cgroup_mount(&mountinfo, "memory")
                .map(|p| self.host.root().join(p.strip_prefix("/").unwrap_or(&p)));
        }
        idx.root.clone()
    }

    /// The container whose processes live in network namespace `inum` (as BPF reads
    /// `net->ns.inum`), found through /proc/<pid>/ns/net and the process's memory cgroup. A miss
    /// rescans /proc at most every few seconds.
    pub fn container_of_netns(&self, inum: u32) -> Option<ContainerFields> {
        if inum == 0 {
            return None;
        }
        let mut idx = self.netns.lock().unwrap_or_else(|e| e.into_inner());
        let hit = match idx.containers.get(&inum) {
            Some(hit) => hit.clone(),
            None => {
                if idx
                    .last_scan
                    .is_some_and(|t| t.elapsed() < NETNS_RESCAN_MIN_INTERVAL)
                {
                    return None;
                }
                idx.containers = scan_netns(&self.host);
                idx.last_scan = Some(Instant::now());
                idx.containers.get(&inum).cloned().flatten()
            }
        };
        hit.map(|(runtime, id)| ContainerFields {
            id,
            kind: runtime.as_str().to_string(),
            ..Default::default()
        })
    }

    /// The container of a memory cgroup id, if it is one.
    pub fn container_of_memcg(&self, id: u64) -> Option<ContainerFields> {
        let path = self.memcg_path(id)?;
        let (runtime, cid) = container_of_cgroup_path(&path)?;
        Some(ContainerFields {
            id: cid,
            kind: runtime.as_str().to_string(),
            ..Default::default()
        })
    }
}

/// `net:[4026531840]` → 4026531840.
pub fn parse_ns_link(link: &str) -> Option<u32> {
    link.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every network namespace with a process in it, and the container of such a process if any.
/// The host's namespace (PID 1's) never belongs to a container, even when containers share it
/// (`--network=host`).
fn scan_netns(host: &HostRoot) -> HashMap<u32, Option<(Runtime, String)>> {
    let mut out: HashMap<u32, Option<(Runtime, String)>> = HashMap::new();
    let host_ns = std::fs::read_link(host.proc("1/ns/net"))
        .ok()
        .and_then(|l| parse_ns_link(&l.to_string_lossy()));
    if let Some(inum) = host_ns {
        out.insert(inum, None);
    }
    let Ok(procs) = std::fs::read_dir(host.proc("")) else {
        return out;
    };
    for p in procs.flatten() {
        let name = p.file_name();
        if !name
            .to_str()
            .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            continue;
        }
        let Some(inum) = std::fs::read_link(p.path().join("ns/net"))
            .ok()
            .and_then(|l| parse_ns_link(&l.to_string_lossy()))
        else {
            continue;
        };
        if Some(inum) == host_ns || matches!(out.get(&inum), Some(Some(_))) {
            continue;
        }
        let container = std::fs::read_to_string(p.path().join("cgroup"))
            .ok()
            .and_then(|t| proc_cgroup_path(&t, "memory"))
            .and_then(|path| container_of_cgroup_path(&path));
        if container.is_some() || !out.contains_key(&inum) {
            out.insert(inum, container);
        }
    }
    out
}

fn scan_cgroup_tree(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, depth: usize) {
    use std::os::unix::fs::MetadataExt;
    if depth > 16 {
        return;
    }
    if let Ok(meta) = std::fs::metadata(dir) {
        let rel = dir
            .strip_prefix(root)
            .map(|p| format!("/{}", p.display()))
            .unwrap_or_else(|_| "/".into());
        out.insert(meta.ino(), rel);
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            scan_cgroup_tree(root, &e.path(), out, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn recognises_runtime_path_formats() {
        let cases = [
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/kubepods/burstable/pod1234/{ID}"), Runtime::Containerd),
            (format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod12_34.slice/cri-containerd-{ID}.scope"), Runtime::Containerd),
            (format!("/kubepods.slice/kubepods-pod12_34.slice/crio-{ID}.scope"), Runtime::Crio),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (format!("/machine.slice/libpod-{ID}.scope/container"), Runtime::Podman),
            (format!("/kubepods-burstable-pod12.slice:cri-containerd:{ID}"), Runtime::Containerd),
        ];
        for (path, rt) in cases {
            assert_eq!(
                container_of_cgroup_path(&path),
                Some((rt, ID.to_string())),
                "{path}"
            );
        }
    }

    #[test]
    fn unknown_paths_are_the_host() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/process_api/abc",
            "/docker/shortid",
            "/libpod_parent/conmon",
        ] {
            assert_eq!(container_of_cgroup_path(p), None, "{p}");
        }
    }

    #[test]
    fn ns_links() {
        assert_eq!(parse_ns_link("net:[4026531840]"), Some(4026531840));
        assert_eq!(parse_ns_link("mnt:[4026531840]"), None);
    }

    #[test]
    fn the_host_netns_has_no_container() {
        use std::os::unix::fs::MetadataExt;
        let inum = std::fs::metadata("/proc/self/ns/net").unwrap().ino() as u32;
        let r = ContainerResolver::new(HostRoot::default());
        assert_eq!(r.container_of_netns(inum), None);
        assert!(r.netns.lock().unwrap().containers.contains_key(&inum));
    }

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

    #[test]
    fn resolves_a_real_memory_cgroup_by_inode() {
        use std::os::unix::fs::MetadataExt;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = cgroup_mount(&mountinfo, "memory").expect("memory cgroup mounted");
        let dir = root.join(format!("bianque-test-resolve-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        let ino = std::fs::metadata(&dir).unwrap().ino();
        let r = ContainerResolver::new(HostRoot::default());
        let got = r.memcg_path(ino);
        let _ = std::fs::remove_dir(&dir);
        assert_eq!(
            got.as_deref(),
            Some(format!("/bianque-test-resolve-{}", std::process::id()).as_str())
        );
    }
}
