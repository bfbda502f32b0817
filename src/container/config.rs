//! `[containers]`: where container metadata comes from, how often the registry resyncs, and the
//! BPF container filter's patterns.

use std::path::PathBuf;

use serde::Deserialize;

use super::{filter, kubelet};
use crate::config::{check_range, ConfigResult};

/// `[containers]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainersConfig {
    /// Docker/podman API sockets (docker-compatible `GET /containers/json`), under the host root.
    pub engine_sockets: Vec<PathBuf>,
    /// Kubelet read-only port, e.g. `127.0.0.1:10255`; empty disables.
    pub kubelet_read_only_address: String,
    /// Kubelet authenticated port's pod list, e.g. `https://127.0.0.1:10250/pods`; empty
    /// disables. Used when a client certificate or a token file is there.
    pub kubelet_url: String,
    /// Client certificate (PEM) for the authenticated port, and its key (may be the same file,
    /// as the kubelet's own `kubelet-client-current.pem` is). Empty = none.
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
    /// A bearer token file (a service account token), re-read on every request. Empty = none.
    pub kubelet_token_file: PathBuf,
    /// CA bundle (PEM) the kubelet's serving certificate is verified against; empty = the
    /// built-in public roots.
    pub kubelet_ca_file: PathBuf,
    /// Do not verify the kubelet's serving certificate (self-signed serving certificates).
    pub kubelet_insecure_skip_verify: bool,
    /// containers/storage roots (podman's `graphroot`): podman is daemonless, and without its
    /// API service the names are read from `<root>/<driver>-containers/containers.json`.
    pub podman_storage_dirs: Vec<PathBuf>,
    /// containerd state directories (`--state`): its tasks name containers whose cgroup path
    /// is `/<namespace>/<id>`, a form that cannot be recognised from the path alone.
    pub containerd_state_dirs: Vec<PathBuf>,
    /// Full resync period (cgroup walk + metadata).
    pub resync_secs: u64,
    /// How long an exited container's metadata is kept for late events.
    pub keep_exited_secs: u64,
    /// Record events only of containers whose name fully matches one of these regexes (or whose
    /// namespace matches `filter_include_namespaces`); applied in BPF. Empty = no include filter.
    pub filter_include_names: Vec<String>,
    pub filter_include_namespaces: Vec<String>,
    /// Drop events of containers whose name / namespace fully matches; applied in BPF.
    pub filter_exclude_names: Vec<String>,
    pub filter_exclude_namespaces: Vec<String>,
}

impl Default for ContainersConfig {
    fn default() -> Self {
        ContainersConfig {
            engine_sockets: vec![
                PathBuf::from("/run/docker.sock"),
                PathBuf::from("/run/podman/podman.sock"),
                PathBuf::from("/run/containerd/docker.sock"),
            ],
            kubelet_read_only_address: "127.0.0.1:10255".into(),
            kubelet_url: "https://127.0.0.1:10250/pods".into(),
            kubelet_client_cert: PathBuf::from("/var/lib/kubelet/pki/kubelet-client-current.pem"),
            kubelet_client_key: PathBuf::from("/var/lib/kubelet/pki/kubelet-client-current.pem"),
            kubelet_token_file: PathBuf::new(),
            kubelet_ca_file: PathBuf::new(),
            kubelet_insecure_skip_verify: false,
            podman_storage_dirs: vec![PathBuf::from("/var/lib/containers/storage")],
            containerd_state_dirs: vec![PathBuf::from("/run/containerd")],
            resync_secs: 10,
            keep_exited_secs: 300,
            filter_include_names: Vec::new(),
            filter_include_namespaces: Vec::new(),
            filter_exclude_names: Vec::new(),
            filter_exclude_namespaces: Vec::new(),
        }
    }
}

impl ContainersConfig {
    pub fn validate(&self) -> ConfigResult<()> {
        check_range("containers.resync_secs", self.resync_secs, 1, 3600)?;
        check_range(
            "containers.keep_exited_secs",
            self.keep_exited_secs,
            0,
            86_400,
        )?;
        filter::Patterns::from_config(self)?;
        if !self.kubelet_read_only_address.is_empty()
            && self
                .kubelet_read_only_address
                .parse::<std::net::SocketAddr>()
                .is_err()
        {
            return Err(crate::config::ConfigError(format!(
                "containers.kubelet_read_only_address: `{}` is not an address like 127.0.0.1:10255",
                self.kubelet_read_only_address
            )));
        }
        kubelet::validate(self).map_err(crate::config::ConfigError)?;
        Ok(())
    }
}
