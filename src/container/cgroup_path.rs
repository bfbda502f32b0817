//! Cgroup path → container: every runtime and cgroup driver format, as a pure function.
//!
//! Formats (v1 and v2 alike; the path is relative to the hierarchy root):
//! - Docker, cgroupfs: `/docker/<id>`; systemd: `/system.slice/docker-<id>.scope`
//! - Kubernetes, cgroupfs: `/kubepods/<qos>/pod<uid>/<id>`, Guaranteed pods: `/kubepods/pod<uid>/<id>`
//! - Kubernetes, systemd: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope`, `docker-<id>.scope`), Guaranteed: `/kubepods.slice/kubepods-pod<uid_>.slice/…`
//! - the mangled form `…/kubepods-burstable-pod<uid_>.slice:cri-containerd:<id>`
//! - podman: `/libpod_parent/libpod-<id>`, `/machine.slice/libpod-<id>.scope[/container]`
//! - containerd without Kubernetes: `/<namespace>/<id>` is NOT recognised (ids are free-form
//!   names there); such containers come from the runtime's API instead.
//!
//! Anything else belongs to the host: a wrong container is worse than none.

/// A container runtime recognised from a cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// What a container's cgroup path says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMatch {
    pub runtime: Runtime,
    pub id: String,
    /// Kubernetes pod UID (with dashes), when the path is a pod's.
    pub pod_uid: Option<String>,
    /// `guaranteed`, `burstable` or `besteffort` for Kubernetes pods.
    pub qos: Option<&'static str>,
    /// The path up to and including the container's own segment (without a trailing
    /// `/container` or other sub-cgroup).
    pub container_path: String,
}

pub fn is_container_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `pod1234-…` or `kubepods-besteffort-pod12_34.slice` → the pod UID with dashes.
fn pod_uid_of(segment: &str) -> Option<String> {
    let seg = segment.strip_suffix(".slice").unwrap_or(segment);
    let uid = seg
        .rsplit_once("-pod")
        .map(|(_, u)| u)
        .or_else(|| seg.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    (uid.len() >= 8 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

/// The container in a cgroup path, if the path is a container's (or below one).
pub fn parse(path: &str) -> Option<CgroupMatch> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for (i, raw) in segments.iter().enumerate().rev() {
        let Some((runtime, id)) = container_segment(raw, if i > 0 { segments[i - 1] } else { "" })
        else {
            continue;
        };
        let parents = &segments[..i];
        let kube = parents.first().unwrap_or(raw).starts_with("kubepods");
        // A bare 64-hex segment is a container only directly under a known parent.
        if !kube && runtime.is_none() {
            continue;
        }
        let runtime = runtime.unwrap_or(Runtime::Containerd);
        let (pod_uid, qos) = if kube {
            let pod_uid = parents
                .iter()
                .rev()
                .find_map(|s| pod_uid_of(s))
                .or_else(|| {
                    // Mangled form: the pod is in the same segment, before the ':'.
                    raw.split(':').next().and_then(pod_uid_of)
                });
            let qos = if parents
                .iter()
                .chain(std::iter::once(raw))
                .any(|s| s.contains("besteffort"))
            {
                "besteffort"
            } else if parents
                .iter()
                .chain(std::iter::once(raw))
                .any(|s| s.contains("burstable"))
            {
                "burstable"
            } else {
                "guaranteed"
            };
            (pod_uid, Some(qos))
        } else {
            (None, None)
        };
        let container_path = format!("/{}", segments[..=i].join("/"));
        return Some(CgroupMatch {
            runtime,
            id,
            pod_uid,
            qos,
            container_path,
        });
    }
    None
}

/// `(Some(runtime) | None for a bare id, id)` when a segment names a container.
fn container_segment(raw: &str, parent: &str) -> Option<(Option<Runtime>, String)> {
    let seg = raw.strip_suffix(".scope").unwrap_or(raw);
    for (prefix, rt) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::Crio),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = seg.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((Some(rt), id.to_string()));
            }
        }
    }
    // Mangled systemd form: `<slice>:<runtime>:<id>`.
    let parts: Vec<&str> = seg.split(':').collect();
    if parts.len() == 3 && is_container_id(parts[2]) {
        let rt = match parts[1] {
            "cri-containerd" | "containerd" => Runtime::Containerd,
            "crio" => Runtime::Crio,
            "docker" => Runtime::Docker,
            "libpod" | "podman" => Runtime::Podman,
            _ => return None,
        };
        return Some((Some(rt), parts[2].to_string()));
    }
    if is_container_id(seg) {
        let rt = match parent {
            "docker" => Some(Runtime::Docker),
            "libpod_parent" => Some(Runtime::Podman),
            _ => None,
        };
        return Some((rt, seg.to_string()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "9c9a7d39-0b1a-4e0e-8f0d-5b8a0c1d2e3f";
    const UID_: &str = "9c9a7d39_0b1a_4e0e_8f0d_5b8a0c1d2e3f";

    fn m(path: &str) -> Option<(Runtime, String, Option<String>, Option<&'static str>)> {
        parse(path).map(|c| (c.runtime, c.id, c.pod_uid, c.qos))
    }

    #[test]
    fn docker_both_drivers() {
        assert_eq!(
            m(&format!("/docker/{ID}")),
            Some((Runtime::Docker, ID.into(), None, None))
        );
        assert_eq!(
            m(&format!("/system.slice/docker-{ID}.scope")),
            Some((Runtime::Docker, ID.into(), None, None))
        );
    }

    #[test]
    fn kubernetes_cgroupfs_with_and_without_qos() {
        assert_eq!(
            m(&format!("/kubepods/burstable/pod{UID}/{ID}")),
            Some((
                Runtime::Containerd,
                ID.into(),
                Some(UID.into()),
                Some("burstable")
            ))
        );
        assert_eq!(
            m(&format!("/kubepods/besteffort/pod{UID}/crio-{ID}")),
            Some((
                Runtime::Crio,
                ID.into(),
                Some(UID.into()),
                Some("besteffort")
            ))
        );
        assert_eq!(
            m(&format!("/kubepods/pod{UID}/{ID}")),
            Some((
                Runtime::Containerd,
                ID.into(),
                Some(UID.into()),
                Some("guaranteed")
            ))
        );
    }

    #[test]
    fn kubernetes_systemd_driver() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope"
        );
        assert_eq!(
            m(&p),
            Some((
                Runtime::Containerd,
                ID.into(),
                Some(UID.into()),
                Some("burstable")
            ))
        );
        let p = format!("/kubepods.slice/kubepods-pod{UID_}.slice/crio-{ID}.scope");
        assert_eq!(
            m(&p),
            Some((
                Runtime::Crio,
                ID.into(),
                Some(UID.into()),
                Some("guaranteed")
            ))
        );
        let p = format!("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/docker-{ID}.scope");
        assert_eq!(
            m(&p),
            Some((
                Runtime::Docker,
                ID.into(),
                Some(UID.into()),
                Some("besteffort")
            ))
        );
    }

    #[test]
    fn mangled_form() {
        let p = format!("/kubepods-burstable-pod{UID_}.slice:cri-containerd:{ID}");
        assert_eq!(
            m(&p),
            Some((
                Runtime::Containerd,
                ID.into(),
                Some(UID.into()),
                Some("burstable")
            ))
        );
        let p = format!("/kubepods.slice/kubepods-besteffort-pod{UID_}.slice:crio:{ID}");
        assert_eq!(
            m(&p),
            Some((
                Runtime::Crio,
                ID.into(),
                Some(UID.into()),
                Some("besteffort")
            ))
        );
    }

    #[test]
    fn podman() {
        assert_eq!(
            m(&format!("/libpod_parent/libpod-{ID}")),
            Some((Runtime::Podman, ID.into(), None, None))
        );
        let c = parse(&format!("/machine.slice/libpod-{ID}.scope/container")).unwrap();
        assert_eq!((c.runtime, c.id.as_str()), (Runtime::Podman, ID));
        assert_eq!(
            c.container_path,
            format!("/machine.slice/libpod-{ID}.scope")
        );
        assert_eq!(
            m(&format!("/libpod_parent/{ID}")),
            Some((Runtime::Podman, ID.into(), None, None))
        );
    }

    #[test]
    fn host_paths_are_not_containers() {
        for p in [
            "/",
            "/user.slice/user-0.slice/session-1.scope",
            "/process_api/bc265c5dd66c2668c050f775953f1f2c",
            "/docker/shortid",
            "/libpod_parent/conmon",
            "/kubepods/burstable",
            &format!("/kubepods/burstable/pod{UID}"),
            &format!("/somewhere/{ID}"),
            &format!("/system.slice/docker-{}.scope", &ID[..63]),
            &format!("/x.slice:unknownrt:{ID}"),
            "/default/c1",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }

    #[test]
    fn uppercase_hex_is_not_an_id() {
        assert!(!is_container_id(&ID.to_uppercase()));
    }
}
