//! Container metadata from the runtime's API (Docker Engine / podman, docker-compatible
//! `GET /containers/json` over a unix socket), from podman's own storage files (podman is
//! daemonless: its API socket is there only while `podman system service` runs) and from the
//! kubelet pod list ([`Sources`]).
//! Parsers are pure functions tested on recorded JSON.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::kubelet::KubeletAuth;
use super::ContainersConfig;
use crate::host::HostRoot;
use crate::http::PlainGet;

/// What a metadata source knows about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub hostname: String,
    /// Kubernetes namespace of the pod.
    pub namespace: String,
    pub pod: String,
    pub pod_uid: String,
    /// `guaranteed`, `burstable`, `besteffort`.
    pub qos: String,
    /// `normal`, `daemonset` or `sidecar`.
    pub kind: String,
}

#[derive(Deserialize)]
struct EngineContainer {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Names", default)]
    names: Vec<String>,
    #[serde(rename = "Labels", default)]
    labels: Option<HashMap<String, String>>,
}

/// Docker/podman `GET /containers/json` → id → metadata. Kubernetes labels (dockershim) fill
/// pod fields when present.
pub fn parse_engine_containers(json: &str) -> Result<HashMap<String, Meta>> {
    let list: Vec<EngineContainer> =
        serde_json::from_str(json).context("container list is not the expected JSON")?;
    Ok(list
        .into_iter()
        .map(|c| {
            let labels = c.labels.unwrap_or_default();
            let label = |k: &str| labels.get(k).cloned().unwrap_or_default();
            let name = label("io.kubernetes.container.name");
            let meta = Meta {
                name: if name.is_empty() {
                    c.names
                        .first()
                        .map(|n| n.trim_start_matches('/').to_string())
                        .unwrap_or_default()
                } else {
                    name
                },
                hostname: String::new(),
                namespace: label("io.kubernetes.pod.namespace"),
                pod: label("io.kubernetes.pod.name"),
                pod_uid: label("io.kubernetes.pod.uid"),
                qos: String::new(),
                kind: "normal".into(),
            };
            (c.id, meta)
        })
        .collect())
}

/// One container of containers/storage's `containers.json` (podman's, buildah's).
#[derive(Deserialize)]
struct StorageContainer {
    id: String,
    #[serde(default)]
    names: Vec<String>,
}

/// containers/storage's `<driver>-containers/containers.json` → id → metadata: podman names
/// its storage container as the container itself, so the first name is the container's name.
pub fn parse_storage_containers(json: &str) -> Result<HashMap<String, Meta>> {
    let list: Vec<StorageContainer> =
        serde_json::from_str(json).context("containers.json is not the expected JSON")?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let name = c.names.into_iter().next()?;
            Some((
                c.id,
                Meta {
                    name,
                    kind: "normal".into(),
                    ..Meta::default()
                },
            ))
        })
        .collect())
}

/// A `containers.json` as last read, kept while its size and modification time stay.
struct StorageFile {
    stamp: (Option<SystemTime>, u64),
    metas: HashMap<String, Meta>,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Vec<Pod>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: PodMeta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct PodMeta {
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    uid: String,
    #[serde(rename = "ownerReferences", default)]
    owner_references: Vec<OwnerRef>,
}

#[derive(Deserialize)]
struct OwnerRef {
    kind: String,
}

#[derive(Deserialize, Default)]
struct PodSpec {
    #[serde(default)]
    hostname: String,
}

#[derive(Deserialize, Default)]
struct PodStatus {
    #[serde(rename = "qosClass", default)]
    qos_class: String,
    #[serde(rename = "containerStatuses", default)]
    container_statuses: Vec<ContainerStatus>,
    #[serde(rename = "initContainerStatuses", default)]
    init_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
struct ContainerStatus {
    name: String,
    #[serde(rename = "containerID", default)]
    container_id: String,
}

/// Sidecars the type `sidecar` is given to (service-mesh proxies).
const SIDECAR_NAMES: &[&str] = &["istio-proxy", "linkerd-proxy", "envoy"];

/// Kubelet `GET /pods` → container id → metadata.
pub fn parse_kubelet_pods(json: &str) -> Result<HashMap<String, Meta>> {
    let pods: PodList = serde_json::from_str(json).context("pod list is not the expected JSON")?;
    let mut out = HashMap::new();
    for pod in pods.items {
        let daemonset = pod
            .metadata
            .owner_references
            .iter()
            .any(|o| o.kind == "DaemonSet");
        let hostname = if pod.spec.hostname.is_empty() {
            pod.metadata.name.clone()
        } else {
            pod.spec.hostname.clone()
        };
        for cs in pod
            .status
            .container_statuses
            .iter()
            .chain(&pod.status.init_container_statuses)
        {
            // `containerd://<id>`, `docker://<id>`, `cri-o://<id>`
            let Some((_, id)) = cs.container_id.split_once("://") else {
                continue;
            };
            let kind = if SIDECAR_NAMES.contains(&cs.name.as_str()) {
                "sidecar"
            } else if daemonset {
                "daemonset"
            } else {
                "normal"
            };
            out.insert(
                id.to_string(),
                Meta {
                    name: cs.name.clone(),
                    hostname: hostname.clone(),
                    namespace: pod.metadata.namespace.clone(),
                    pod: pod.metadata.name.clone(),
                    pod_uid: pod.metadata.uid.clone(),
                    qos: pod.status.qos_class.to_ascii_lowercase(),
                    kind: kind.into(),
                },
            );
        }
    }
    Ok(out)
}

/// The metadata sources and their clients, built when first needed: the engine API sockets
/// that exist under the host root, the kubelet's authenticated port, its read-only port.
pub struct Sources {
    host: HostRoot,
    engine_sockets: Vec<PathBuf>,
    podman_storage_dirs: Vec<PathBuf>,
    /// `containers.json` files by path (under the host root).
    storage_files: HashMap<PathBuf, StorageFile>,
    kubelet_read_only_address: String,
    timeout: Duration,
    /// Engine API clients by socket path (under the host root).
    engines: HashMap<PathBuf, PlainGet>,
    kubelet_read_only: Option<PlainGet>,
    /// Asks of the read-only port after it failed come less and less often: on a host without
    /// a kubelet, each ask is a connection refused (a packet drop) every resync.
    read_only_backoff: Backoff,
    kubelet: Option<KubeletAuth>,
}

/// When a failing source may be asked again: [`Backoff::FIRST`] after the first failure,
/// doubling up to [`Backoff::MAX`]; at once again after an answer.
#[derive(Debug, Default)]
struct Backoff {
    next: Option<Instant>,
    delay: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(300);

    fn ready(&self, now: Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    fn failed(&mut self, now: Instant) {
        self.delay = if self.delay.is_zero() {
            Self::FIRST
        } else {
            (self.delay * 2).min(Self::MAX)
        };
        self.next = Some(now + self.delay);
    }

    fn answered(&mut self) {
        *self = Backoff::default();
    }
}

impl Sources {
    pub fn new(host: HostRoot, cfg: &ContainersConfig, timeout: Duration) -> Sources {
        Sources {
            host,
            engine_sockets: cfg.engine_sockets.clone(),
            podman_storage_dirs: cfg.podman_storage_dirs.clone(),
            storage_files: HashMap::new(),
            kubelet_read_only_address: cfg.kubelet_read_only_address.clone(),
            timeout,
            engines: HashMap::new(),
            kubelet_read_only: None,
            read_only_backoff: Backoff::default(),
            kubelet: KubeletAuth::new(cfg, timeout),
        }
    }

    /// Metadata from every source that answers; none answering is normal on a bare host.
    pub fn fetch(&mut self) -> HashMap<String, Meta> {
        // podman's storage first: an API that answers knows as much, and wins.
        let mut out = self.storage_containers();
        for sock in &self.engine_sockets {
            let path = self
                .host
                .root()
                .join(sock.strip_prefix("/").unwrap_or(sock));
            if !path.exists() {
                continue;
            }
            let client = match self.engines.entry(path.clone()) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => {
                    match PlainGet::unix(&path, self.timeout) {
                        Ok(c) => e.insert(c),
                        Err(err) => {
                            tracing::debug!(socket = %path.display(), error = %format!("{err:#}"), "container engine API");
                            continue;
                        }
                    }
                }
            };
            // all=1: created and exited containers too, so a container is named from its
            // first event (an OOM kill can come within milliseconds of the start).
            match client
                .get("/containers/json?all=1")
                .and_then(|b| parse_engine_containers(&b))
            {
                Ok(m) => out.extend(m),
                Err(e) => {
                    tracing::debug!(socket = %path.display(), error = %format!("{e:#}"), "container engine API")
                }
            }
        }
        // The kubelet knows pods; the engine may know better names for plain containers.
        // The authenticated port first; the read-only one when that gave nothing.
        let mut pods = self.kubelet.as_mut().and_then(|k| k.fetch());
        let now = Instant::now();
        if pods.is_none()
            && !self.kubelet_read_only_address.is_empty()
            && self.read_only_backoff.ready(now)
        {
            match self.read_only_pods() {
                Ok(m) => {
                    self.read_only_backoff.answered();
                    pods = Some(m);
                }
                Err(e) => {
                    self.read_only_backoff.failed(now);
                    tracing::debug!(error = %format!("{e:#}"), next_in = ?self.read_only_backoff.delay, "kubelet pod list")
                }
            }
        }
        out.extend(pods.unwrap_or_default());
        out
    }

    /// Names from every `<root>/*-containers/containers.json` of the podman storage roots; a
    /// file is parsed again only when it changed.
    fn storage_containers(&mut self) -> HashMap<String, Meta> {
        let mut out = HashMap::new();
        let mut seen = Vec::new();
        for dir in &self.podman_storage_dirs {
            let root = self.host.root().join(dir.strip_prefix("/").unwrap_or(dir));
            let Ok(entries) = std::fs::read_dir(&root) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().ends_with("-containers") {
                    continue;
                }
                let path = entry.path().join("containers.json");
                let Ok(meta) = std::fs::metadata(&path) else {
                    continue;
                };
                let stamp = (meta.modified().ok(), meta.len());
                seen.push(path.clone());
                if self
                    .storage_files
                    .get(&path)
                    .is_some_and(|f| f.stamp == stamp)
                {
                    continue;
                }
                match read_storage_file(&path) {
                    Ok(metas) => {
                        self.storage_files
                            .insert(path, StorageFile { stamp, metas });
                    }
                    Err(e) => {
                        tracing::debug!(file = %path.display(), error = %format!("{e:#}"), "podman storage")
                    }
                }
            }
        }
        self.storage_files.retain(|p, _| seen.contains(p));
        for f in self.storage_files.values() {
            out.extend(f.metas.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        out
    }

    fn read_only_pods(&mut self) -> Result<HashMap<String, Meta>> {
        let client = match &mut self.kubelet_read_only {
            Some(c) => c,
            none => none.insert(PlainGet::tcp(
                &self.kubelet_read_only_address,
                self.timeout,
                self.timeout,
            )?),
        };
        parse_kubelet_pods(&client.get("/pods")?)
    }
}

fn read_storage_file(path: &Path) -> Result<HashMap<String, Meta>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_storage_containers(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape podman 4.3 (containers/storage) writes, two containers and an unnamed one.
    const STORAGE_JSON: &str = r#"[{"id":"5f1d0c8a9b","names":["bq-web-1"],"image":"0a1b","layer":"9c8d",
        "metadata":"{\"image-name\":\"localhost/bq-bb:1\",\"name\":\"bq-web-1\",\"created-at\":1764680000}",
        "created":"2026-12-02T13:30:00.1Z","flags":{"MountLabel":""}},
        {"id":"77aa","names":["db","db-alias"],"image":"0a1b","layer":"1234","created":"2026-12-02T13:31:00Z"},
        {"id":"88bb","names":[],"image":"0a1b","layer":"5678"}]"#;

    #[test]
    fn podman_storage_containers_are_parsed() {
        let m = parse_storage_containers(STORAGE_JSON).unwrap();
        assert_eq!(m["5f1d0c8a9b"].name, "bq-web-1");
        assert_eq!(m["5f1d0c8a9b"].kind, "normal");
        assert_eq!(m["77aa"].name, "db");
        assert!(!m.contains_key("88bb"), "no name, nothing to add");
        assert!(parse_storage_containers("[]").unwrap().is_empty());
        assert!(parse_storage_containers("{").is_err());
    }

    #[test]
    fn podman_names_come_from_its_storage_under_the_host_root_and_follow_changes() {
        let root = std::env::temp_dir().join(format!("bianque-podman-{}", std::process::id()));
        let dir = root.join("var/lib/containers/storage/overlay-containers");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("containers.json"), STORAGE_JSON).unwrap();
        let cfg = ContainersConfig {
            engine_sockets: Vec::new(),
            kubelet_read_only_address: String::new(),
            kubelet_url: String::new(),
            ..Default::default()
        };
        let mut sources = Sources::new(HostRoot::new(&root), &cfg, Duration::from_millis(100));
        assert_eq!(sources.fetch()["5f1d0c8a9b"].name, "bq-web-1");
        // Rewritten (a size change is enough to notice within one mtime tick).
        std::fs::write(
            dir.join("containers.json"),
            r#"[{"id":"99cc","names":["renamed-one"]}]"#,
        )
        .unwrap();
        let m = sources.fetch();
        assert_eq!(m["99cc"].name, "renamed-one");
        assert!(!m.contains_key("5f1d0c8a9b"));
        std::fs::remove_dir_all(&root).unwrap();
        assert!(
            sources.fetch().is_empty(),
            "a storage that went away names nothing"
        );
    }

    #[test]
    fn engine_list_is_parsed() {
        let json = r#"[{"Id":"aaa","Names":["/web"],"Labels":{"x":"y"}},
                       {"Id":"bbb","Names":["/k8s_app_pod"],"Labels":{"io.kubernetes.container.name":"app",
                        "io.kubernetes.pod.name":"pod-1","io.kubernetes.pod.namespace":"shop","io.kubernetes.pod.uid":"u-1"}},
                       {"Id":"ccc","Names":[],"Labels":null}]"#;
        let m = parse_engine_containers(json).unwrap();
        assert_eq!(m["aaa"].name, "web");
        assert_eq!(m["bbb"].name, "app");
        assert_eq!(m["bbb"].namespace, "shop");
        assert_eq!(m["bbb"].pod, "pod-1");
        assert_eq!(m["ccc"].name, "");
        assert!(parse_engine_containers("{").is_err());
    }

    #[test]
    fn a_failing_source_is_asked_less_and_less_often_until_it_answers() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        assert!(b.ready(t0), "asked at once the first time");
        let mut delays = Vec::new();
        let mut now = t0;
        for _ in 0..8 {
            b.failed(now);
            assert!(!b.ready(now + b.delay - Duration::from_millis(1)));
            now += b.delay;
            assert!(b.ready(now));
            delays.push(b.delay.as_secs());
        }
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
        b.answered();
        assert!(b.ready(now));
        b.failed(now);
        assert_eq!(b.delay, Backoff::FIRST, "an answer starts over");
    }

    #[test]
    fn kubelet_pods_are_parsed() {
        let json = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/kubelet/pods.json"
        ))
        .unwrap();
        let m = parse_kubelet_pods(&json).unwrap();
        let web = &m["1111111111111111111111111111111111111111111111111111111111111111"];
        assert_eq!(
            (web.name.as_str(), web.pod.as_str(), web.namespace.as_str()),
            ("web", "web-7d9f", "shop")
        );
        assert_eq!(
            (web.qos.as_str(), web.kind.as_str(), web.hostname.as_str()),
            ("burstable", "normal", "web-7d9f")
        );
        let proxy = &m["2222222222222222222222222222222222222222222222222222222222222222"];
        assert_eq!(proxy.kind, "sidecar");
        let agent = &m["3333333333333333333333333333333333333333333333333333333333333333"];
        assert_eq!(
            (
                agent.kind.as_str(),
                agent.qos.as_str(),
                agent.hostname.as_str()
            ),
            ("daemonset", "guaranteed", "node-1")
        );
        let be = &m["4444444444444444444444444444444444444444444444444444444444444444"];
        assert_eq!(be.qos, "besteffort");
    }
}
