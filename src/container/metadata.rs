//! Container metadata from the runtime's API (Docker Engine / podman, docker-compatible
//! `GET /containers/json` over a unix socket) and from the kubelet pod list. Parsers are pure
//! functions tested on recorded JSON.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

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

/// The body of an HTTP/1.0 response, or an error naming the status.
fn response_body(resp: &[u8]) -> Result<String> {
    let text = String::from_utf8_lossy(resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        bail!("HTTP status {status}");
    }
    Ok(body.to_string())
}

/// `GET path` over a unix socket (Docker/podman API). HTTP/1.0, so no chunked encoding.
pub fn get_unix(socket: &Path, path: &str, timeout: Duration) -> Result<String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connecting to {}", socket.display()))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    // One write: servers that read the request once must get all of it.
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading from {}", socket.display()))?;
    response_body(&buf).with_context(|| format!("GET {path} on {}", socket.display()))
}

/// `GET path` over plain TCP (the kubelet read-only port).
pub fn get_tcp(addr: &str, path: &str, timeout: Duration) -> Result<String> {
    let sock: std::net::SocketAddr = addr
        .parse()
        .with_context(|| format!("bad address {addr}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .with_context(|| format!("reading from {addr}"))?;
    response_body(&buf).with_context(|| format!("GET {path} on {addr}"))
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

    #[test]
    fn non_200_is_an_error() {
        assert!(response_body(b"HTTP/1.0 404 Not Found\r\n\r\nnope").is_err());
        assert_eq!(
            response_body(b"HTTP/1.0 200 OK\r\nA: b\r\n\r\n[]").unwrap(),
            "[]"
        );
        assert!(response_body(b"garbage").is_err());
    }
}
