//! Container metadata from the runtime's API (Docker Engine / podman, docker-compatible
//! `GET /containers/json` over a unix socket) and from the kubelet pod list ([`Sources`]).
//! Parsers are pure functions tested on recorded JSON.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
        let mut out = HashMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;

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
