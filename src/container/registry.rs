//! The container registry: the view of containers by memory cgroup, network namespace and id,
//! kept current by cgroup walks (on a miss and every `resync_secs`) and named from the
//! metadata sources.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::{cgroup_path, filter, is_container_id, metadata, view};
use super::{CgroupMatch, Container, ContainersConfig, Runtime};
use crate::cgroupfs::tree;
use crate::config::Compat;
use crate::host::HostRoot;
use crate::procfs::pid_ns;
use crate::record::ContainerFields;

/// An unknown cgroup id triggers a resync (it is usually a container that just started), but
/// each id at most once a second, and resyncs at most every 200 ms: a stream of events from
/// unknown cgroups cannot turn into a stream of directory walks.
const MISS_RETRY_INTERVAL: Duration = Duration::from_secs(1);
const MISS_RESYNC_MIN_INTERVAL: Duration = Duration::from_millis(200);
const API_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Default)]
struct State {
    /// Every memory cgroup: id → path.
    paths: HashMap<u64, Arc<str>>,
    /// Memory cgroup id of a container's cgroup or any cgroup below it → the container.
    by_memcg: HashMap<u64, Arc<Container>>,
    /// Live and recently exited containers by id.
    containers: HashMap<String, Arc<Container>>,
    /// When each exited container was last seen.
    exited_at: HashMap<String, Instant>,
    /// Network namespace inode → the container owning it (its init process's netns).
    by_netns: HashMap<u64, Arc<Container>>,
}

pub struct ContainerRegistry {
    // Read by the cgroup helpers' methods (cgroups.rs) too.
    pub(super) host: HostRoot,
    pub(super) cfg: ContainersConfig,
    filter: filter::ContainerFilter,
    state: RwLock<State>,
    /// Serialises cgroup walks; holds when the last one finished.
    last_sync: Mutex<Option<Instant>>,
    /// Unknown ids recently looked up, so each triggers at most one resync a second.
    missed: Mutex<HashMap<u64, Instant>>,
    /// The last metadata answer and when it was fetched: asked again only for new containers
    /// or after `resync_secs`, so resyncs on container removal never wait on an API.
    metadata: Mutex<(Option<Instant>, MetaMap)>,
    /// Serialises metadata fetches (never held with `last_sync`: a slow API must not stall the
    /// event readers that walk the cgroups on a miss); holds the sources' clients.
    fetching: Mutex<metadata::Sources>,
    /// Asks the `keep_current` thread to fetch metadata again (an event named a cgroup the
    /// registry did not know); None while that thread does not run.
    refresh_tx: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// The last view for collectors ([`ContainerRegistry::cgroups`]) and when it was taken.
    view: Mutex<Option<(Instant, Arc<view::ContainerCgroups>)>>,
    /// Whose container label names and values the view carries (`compat = "huatuo"`).
    labels: Compat,
}

/// Metadata by container id, as the sources last answered.
type MetaMap = Arc<HashMap<String, metadata::Meta>>;

impl ContainerRegistry {
    /// A registry without a BPF container filter (tests, benchmarks).
    pub fn new(host: HostRoot, cfg: ContainersConfig) -> ContainerRegistry {
        Self::with_filter(host, cfg, filter::ContainerFilter::off())
    }

    pub fn with_filter(
        host: HostRoot,
        cfg: ContainersConfig,
        filter: filter::ContainerFilter,
    ) -> ContainerRegistry {
        let sources = metadata::Sources::new(host.clone(), &cfg, API_TIMEOUT);
        ContainerRegistry {
            host,
            cfg,
            filter,
            state: RwLock::new(State::default()),
            last_sync: Mutex::new(None),
            missed: Mutex::new(HashMap::new()),
            metadata: Mutex::new((None, Arc::new(HashMap::new()))),
            fetching: Mutex::new(sources),
            refresh_tx: Mutex::new(None),
            view: Mutex::new(None),
            labels: Compat::default(),
        }
    }

    /// Container series carry HuaTuo's label names and values under `compat = "huatuo"`.
    pub fn with_labels(mut self, compat: Compat) -> ContainerRegistry {
        self.labels = compat;
        self
    }

    pub fn config(&self) -> &ContainersConfig {
        &self.cfg
    }

    /// The BPF container filter tracers share.
    pub fn filter(&self) -> &filter::ContainerFilter {
        &self.filter
    }

    /// The memory cgroup path (relative to the hierarchy root, starting with `/`) of an id.
    pub fn memcg_path(&self, id: u64) -> Option<Arc<str>> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self
            .state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .paths
            .get(&id)
        {
            return Some(p.clone());
        }
        self.resync_on_miss(id);
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .paths
            .get(&id)
            .cloned()
    }

    /// The container a memory cgroup id belongs to (its own cgroup or one below it).
    pub fn by_memcg(&self, id: u64) -> Option<Arc<Container>> {
        if id == 0 {
            return None;
        }
        {
            let st = self.state.read().unwrap_or_else(|e| e.into_inner());
            if let Some(c) = st.by_memcg.get(&id) {
                return Some(c.clone());
            }
            if st.paths.contains_key(&id) {
                return None; // a known cgroup of the host
            }
        }
        self.resync_on_miss(id);
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_memcg
            .get(&id)
            .cloned()
    }

    /// Path and container fields for a record, from a BPF event's memory cgroup id.
    pub fn attribute_memcg(&self, id: u64) -> (Option<String>, Option<ContainerFields>) {
        let container = self.by_memcg(id);
        let path = self.memcg_path(id).map(|p| p.to_string());
        (path, container.map(|c| c.fields()))
    }

    /// A container by its full id (a hash lookup).
    pub fn get_exact(&self, id: &str) -> Option<Arc<Container>> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .containers
            .get(id)
            .cloned()
    }

    /// A container by id or unique id prefix.
    pub fn get(&self, id: &str) -> Option<Arc<Container>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = st.containers.get(id) {
            return Some(c.clone());
        }
        let mut matches = st.containers.values().filter(|c| c.id.starts_with(id));
        match (matches.next(), matches.next()) {
            (Some(c), None) => Some(c.clone()),
            _ => None,
        }
    }

    /// The live containers' cgroups for collectors: the view taken at most `max_age` ago, else
    /// a new one after a cgroup walk (callers at the same time share it). The walk uses the
    /// metadata at hand; new containers' names are asked for on the registry's own thread.
    pub fn cgroups(&self, max_age: Duration) -> Arc<view::ContainerCgroups> {
        let mut cached = self.view.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, v)) = cached.as_ref() {
            if at.elapsed() < max_age {
                return v.clone();
            }
        }
        if self.rebuild(&self.cached_metadata().1) {
            self.request_refresh();
        }
        let v = Arc::new(view::ContainerCgroups {
            layout: crate::cgroupfs::Layout::read(&self.host),
            containers: self
                .list()
                .iter()
                .map(|c| view::ContainerCgroup::of(c, self.labels))
                .collect(),
        });
        *cached = Some((Instant::now(), v.clone()));
        v
    }

    /// Running containers, by id.
    pub fn list(&self) -> Vec<Arc<Container>> {
        let st = self.state.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = st
            .containers
            .values()
            .filter(|c| c.exited.is_none())
            .cloned()
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The container owning a network namespace (events in softirq context, where the running
    /// task is unrelated, still name the packet's namespace).
    pub fn by_netns(&self, inum: u64) -> Option<Arc<Container>> {
        if inum == 0 {
            return None;
        }
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_netns
            .get(&inum)
            .cloned()
    }

    fn resync_on_miss(&self, id: u64) {
        {
            let mut missed = self.missed.lock().unwrap_or_else(|e| e.into_inner());
            if missed
                .get(&id)
                .is_some_and(|t| t.elapsed() < MISS_RETRY_INTERVAL)
            {
                return;
            }
            if missed.len() > 4096 {
                missed.retain(|_, t| t.elapsed() < MISS_RETRY_INTERVAL);
            }
            missed.insert(id, Instant::now());
        }
        let due = self
            .last_sync
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|t| t.elapsed() >= MISS_RESYNC_MIN_INTERVAL);
        if due {
            // The walk only: the caller is an event reader, which must not wait on an API.
            // New containers' names are asked for on the registry's own thread.
            let cached = self.cached_metadata().1;
            if self.rebuild(&cached) {
                self.request_refresh();
            }
        }
    }

    /// Walks the cgroup tree, refreshes metadata when it is stale or a container is new, and
    /// swaps in the new view.
    pub fn resync(&self) {
        let (fetched, cached) = self.cached_metadata();
        let period = Duration::from_secs(self.cfg.resync_secs);
        let meta = if fetched.is_none_or(|t| t.elapsed() >= period) {
            self.refresh_metadata(Instant::now().checked_sub(period))
        } else {
            cached
        };
        // Containers no source knows (cgroup-only) must not make every resync ask again.
        if self.rebuild(&meta) {
            let fresh = self.refresh_metadata(Instant::now().checked_sub(MISS_RESYNC_MIN_INTERVAL));
            if !Arc::ptr_eq(&fresh, &meta) {
                self.apply_metadata(&fresh);
            }
        }
    }

    fn cached_metadata(&self) -> (Option<Instant>, MetaMap) {
        let m = self.metadata.lock().unwrap_or_else(|e| e.into_inner());
        (m.0, m.1.clone())
    }

    /// Metadata fetched at or after `not_before` (None: any age will do, if there is one):
    /// the cached answer when it is recent enough, else a new one. Fetches are serialised, so
    /// callers that asked at the same time share one.
    fn refresh_metadata(&self, not_before: Option<Instant>) -> MetaMap {
        let mut sources = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
        let (fetched, cached) = self.cached_metadata();
        if fetched.is_some_and(|t| not_before.is_none_or(|nb| t >= nb)) {
            return cached;
        }
        let started = Instant::now();
        let fresh = Arc::new(sources.fetch());
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = (Some(started), fresh.clone());
        fresh
    }

    /// Walks the cgroup tree and swaps in the new view, naming containers from `meta`. True
    /// when some container has no metadata there (new, or known to no source).
    fn rebuild(&self, meta: &HashMap<String, metadata::Meta>) -> bool {
        let mut last = self.last_sync.lock().unwrap_or_else(|e| e.into_inner());
        let Some(root) = self.memory_root() else {
            *last = Some(Instant::now());
            return false;
        };
        let mut paths = tree::walk(&root);

        // Container cgroups and everything below them.
        let mut found: HashMap<String, (CgroupMatch, u64)> = HashMap::new();
        let mut members: Vec<(u64, String)> = Vec::new();
        let tasks = self.containerd_tasks();
        for (ino, path) in &paths {
            if let Some(m) =
                cgroup_path::parse(path).or_else(|| containerd_task_match(&tasks, path))
            {
                if m.container_path == **path {
                    found.insert(m.id.clone(), (m.clone(), *ino));
                }
                members.push((*ino, m.id));
            }
        }
        let unknown = found.keys().any(|id| !meta.contains_key(id));
        // Containers sharing the host's network namespace must not claim its packets.
        let host_netns = pid_ns::net_inum(&self.host.proc(""), 1);
        let now_text = crate::record::format_time_ns(crate::record::now_ns());

        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let mut containers: HashMap<String, Arc<Container>> = HashMap::with_capacity(found.len());
        for (id, (m, ino)) in &found {
            let old = st.containers.get(id).filter(|c| c.exited.is_none());
            let md = meta.get(id);
            // The init process and its netns do not change while the container lives.
            let (init_pid, netns) = match old {
                Some(o) if o.memory_cgroup_id == *ino && o.init_pid != 0 => {
                    (o.init_pid, o.net_namespace_inum)
                }
                _ => {
                    let pid = tree::first_pid(&root.join(m.container_path.trim_start_matches('/')));
                    (pid, pid_ns::net_inum(&self.host.proc(""), pid))
                }
            };
            let c = Container {
                id: id.clone(),
                runtime: m.runtime.as_str(),
                name: md
                    .map(|x| x.name.clone())
                    .filter(|s| !s.is_empty())
                    .or_else(|| old.map(|o| o.name.clone()))
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| {
                        if is_container_id(id) {
                            String::new()
                        } else {
                            id.clone()
                        }
                    }),
                hostname: md
                    .map(|x| x.hostname.clone())
                    .unwrap_or_else(|| old.map(|o| o.hostname.clone()).unwrap_or_default()),
                namespace: md
                    .map(|x| x.namespace.clone())
                    .unwrap_or_else(|| old.map(|o| o.namespace.clone()).unwrap_or_default()),
                pod: md.map(|x| x.pod.clone()).unwrap_or_default(),
                pod_uid: md
                    .map(|x| x.pod_uid.clone())
                    .filter(|s| !s.is_empty())
                    .or_else(|| m.pod_uid.clone())
                    .unwrap_or_default(),
                qos: md
                    .map(|x| x.qos.clone())
                    .filter(|s| !s.is_empty())
                    .or_else(|| m.qos.map(str::to_string))
                    .unwrap_or_default(),
                kind: md
                    .map(|x| x.kind.clone())
                    .unwrap_or_else(|| "normal".into()),
                cgroup_path: m.container_path.clone(),
                memory_cgroup_id: *ino,
                init_pid,
                net_namespace_inum: netns,
                first_seen: old
                    .map(|o| o.first_seen.clone())
                    .unwrap_or_else(|| now_text.clone()),
                exited: None,
            };
            containers.insert(id.clone(), Arc::new(c));
        }
        // Gone containers stay resolvable for keep_exited_secs.
        let keep = Duration::from_secs(self.cfg.keep_exited_secs);
        let previous = std::mem::take(&mut st.containers);
        let mut exited_at = std::mem::take(&mut st.exited_at);
        let mut by_memcg: HashMap<u64, Arc<Container>> = HashMap::new();
        for (id, old) in previous {
            if containers.contains_key(&id) {
                continue;
            }
            let since = *exited_at.entry(id.clone()).or_insert_with(Instant::now);
            if since.elapsed() < keep {
                let mut gone = match meta.get(&id) {
                    // Named only now (it lived shorter than the metadata took).
                    Some(md) if old.name.is_empty() => old.with_meta(md),
                    _ => (*old).clone(),
                };
                if gone.exited.is_none() {
                    gone.exited = Some(now_text.clone());
                }
                let gone = Arc::new(gone);
                by_memcg.insert(gone.memory_cgroup_id, gone.clone());
                paths
                    .entry(gone.memory_cgroup_id)
                    .or_insert_with(|| gone.cgroup_path.clone());
                containers.insert(id, gone);
            }
        }
        exited_at.retain(|id, _| containers.get(id).is_some_and(|c| c.exited.is_some()));
        for (ino, id) in members {
            if let Some(c) = containers.get(&id) {
                by_memcg.insert(ino, c.clone());
            }
        }
        self.filter
            .apply(by_memcg.iter().map(|(id, c)| (*id, c.as_ref())));
        let by_netns = containers
            .values()
            .filter(|c| {
                c.exited.is_none()
                    && c.net_namespace_inum != 0
                    && c.net_namespace_inum != host_netns
            })
            .map(|c| (c.net_namespace_inum, c.clone()))
            .collect();
        *st = State {
            paths: paths.into_iter().map(|(k, v)| (k, v.into())).collect(),
            by_memcg,
            containers,
            exited_at,
            by_netns,
        };
        drop(st);
        *last = Some(Instant::now());
        unknown
    }

    /// Names the containers already in the view from `meta` (a new answer), live and exited.
    fn apply_metadata(&self, meta: &HashMap<String, metadata::Meta>) {
        let mut st = self.state.write().unwrap_or_else(|e| e.into_inner());
        let changed: HashMap<String, Arc<Container>> = st
            .containers
            .values()
            .filter_map(|c| {
                let named = c.with_meta(meta.get(&c.id)?);
                (named != **c).then(|| (c.id.clone(), Arc::new(named)))
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let st = &mut *st;
        for map in [&mut st.by_memcg, &mut st.by_netns] {
            for c in map.values_mut() {
                if let Some(n) = changed.get(&c.id) {
                    *c = n.clone();
                }
            }
        }
        for (id, c) in changed {
            st.containers.insert(id, c);
        }
        self.filter
            .apply(st.by_memcg.iter().map(|(id, c)| (*id, c.as_ref())));
    }

    /// Asks the registry's thread to fetch metadata again (no-op when it does not run; a
    /// request already waiting covers this one).
    fn request_refresh(&self) {
        if let Some(tx) = self
            .refresh_tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.try_send(());
        }
    }

    /// Fetches metadata unless the last answer is younger than `age`, and names the
    /// containers in the view from it. Blocks on the sources' APIs (up to their timeout).
    pub fn refresh_metadata_older_than(&self, age: Duration) {
        let fresh = self.refresh_metadata(Instant::now().checked_sub(age));
        self.apply_metadata(&fresh);
    }

    /// The record fields of container `id` if it has a name now: from the view, else from the
    /// last metadata answer (a container gone before the registry saw its cgroup is still
    /// listed by its runtime, `all=1`). Never fetches.
    pub fn named_fields(&self, id: &str) -> Option<ContainerFields> {
        if let Some(c) = self.get_exact(id).filter(|c| !c.name.is_empty()) {
            return Some(c.fields());
        }
        let meta = self.cached_metadata().1;
        let md = meta.get(id).filter(|m| !m.name.is_empty())?;
        Some(ContainerFields {
            id: id.to_string(),
            name: md.name.clone(),
            hostname: md.hostname.clone(),
            host_namespace: md.namespace.clone(),
            kind: md.kind.clone(),
            qos: md.qos.clone(),
        })
    }

    /// Resyncs every `resync_secs` and fetches metadata when a cgroup walk on an event's miss
    /// found a new container, until `stop` is set (its own thread). Records waiting for a
    /// container's name are the record pipeline's (`tracer::pipeline`), not this thread's.
    pub fn keep_current(
        self: &Arc<Self>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        // One waiting request is enough: it fetches for every miss before it.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        *self.refresh_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        std::thread::Builder::new()
            .name("containers".into())
            .spawn(move || {
                let period = Duration::from_secs(me.cfg.resync_secs);
                let mut next_resync = Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if Instant::now() >= next_resync {
                        me.resync();
                        next_resync = Instant::now() + period;
                    }
                    // Sleeps until the next resync: a miss or the stop (the sender dropped by
                    // `stop_keeping_current`) ends the wait early.
                    let wait = next_resync.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(wait) {
                        Ok(()) => me.refresh_metadata_older_than(MISS_RESYNC_MIN_INTERVAL),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                *me.refresh_tx.lock().unwrap_or_else(|e| e.into_inner()) = None;
            })
    }
}

impl ContainerRegistry {
    /// Ends the `keep_current` thread at once (with its stop flag set, it would end only at the
    /// next resync or miss).
    pub fn stop_keeping_current(&self) {
        drop(
            self.refresh_tx
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }
}

/// A cgroup at or below a containerd task's `/<namespace>/<id>`.
fn containerd_task_match(tasks: &[String], path: &str) -> Option<CgroupMatch> {
    let task = tasks.iter().find(|t| {
        path == t.as_str()
            || path
                .strip_prefix(t.as_str())
                .is_some_and(|r| r.starts_with('/'))
    })?;
    let id = task.rsplit('/').next()?.to_string();
    Some(CgroupMatch {
        runtime: Runtime::Containerd,
        id,
        pod_uid: None,
        qos: None,
        container_path: task.clone(),
    })
}

impl ContainerRegistry {
    /// The memory controller's hierarchy under the host root (v1 `memory`, else cgroup2):
    /// `<root><path>` is the directory of a memory cgroup path.
    pub fn memory_root(&self) -> Option<PathBuf> {
        crate::cgroupfs::Layout::read(&self.host)
            .mount_of("memory")
            .map(Path::to_path_buf)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_real_memory_cgroups_and_containers_by_inode() {
        use std::os::unix::fs::MetadataExt;
        let root = crate::cgroupfs::Layout::read(&HostRoot::default())
            .mount_of("memory")
            .expect("memory cgroup mounted")
            .to_path_buf();
        let id = format!("{:064x}", 0xb1a9e_u64 + std::process::id() as u64);
        let parent = root.join(format!("bianque-test-{}", std::process::id()));
        let docker = parent.join("docker");
        let container = docker.join(&id);
        std::fs::create_dir_all(&container).unwrap();
        let cleanup = || {
            let _ = std::fs::remove_dir(&container);
            let _ = std::fs::remove_dir(&docker);
            let _ = std::fs::remove_dir(&parent);
        };
        let host_ino = std::fs::metadata(&parent).unwrap().ino();
        let ino = std::fs::metadata(&container).unwrap().ino();
        let r = ContainerRegistry::new(
            HostRoot::default(),
            ContainersConfig {
                kubelet_read_only_address: String::new(),
                ..Default::default()
            },
        );
        let c = r.by_memcg(ino);
        let host = r.by_memcg(host_ino);
        let listed = r.list().iter().any(|c| c.id == id);
        let path = r.memcg_path(ino);
        cleanup();
        let c = c.expect("container resolved");
        assert_eq!(c.id, id);
        assert_eq!(c.runtime, "docker");
        assert!(listed);
        assert!(host.is_none(), "a host cgroup is not a container");
        assert_eq!(
            path.as_deref(),
            Some(format!("/bianque-test-{}/docker/{id}", std::process::id()).as_str())
        );
        // After removal it is kept (exited) for late events but not listed.
        r.resync();
        assert!(r.by_memcg(ino).is_some_and(|c| c.exited.is_some()));
        assert!(!r.list().iter().any(|c| c.id == id));
    }
}
