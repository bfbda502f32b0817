//! Container filter applied inside BPF: `[containers] filter_*` patterns select containers by
//! name or namespace; the agent keeps the matching containers' memory cgroup ids in one BPF hash
//! map that every tracer's program shares, so unwanted events are dropped in the kernel.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Mutex;

use anyhow::{Context, Result};
use libbpf_rs::{MapCore, MapFlags, MapHandle, MapType};
use regex::Regex;

use crate::config::{ConfigError, ConfigResult};
use crate::container::{Container, ContainersConfig};

/// Mirrors `container_filter_mode` in bpf/bianque.bpf.h.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterMode {
    Off = 0,
    /// Only events of cgroups in the map.
    Include = 1,
    /// All events but those of cgroups in the map.
    Exclude = 2,
}

const MAP_ENTRIES: u32 = 16384;

/// Compiled patterns (full match).
#[derive(Debug, Default)]
pub struct Patterns {
    include_names: Vec<Regex>,
    exclude_names: Vec<Regex>,
    include_namespaces: Vec<Regex>,
    exclude_namespaces: Vec<Regex>,
}

fn compile(key: &str, list: &[String]) -> ConfigResult<Vec<Regex>> {
    list.iter()
        .map(|p| {
            Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                ConfigError(format!(
                    "containers.{key}: `{p}` is not a valid regex: {}",
                    crate::config::regex_error_line(&e)
                ))
            })
        })
        .collect()
}

impl Patterns {
    pub fn from_config(cfg: &ContainersConfig) -> ConfigResult<Patterns> {
        Ok(Patterns {
            include_names: compile("filter_include_names", &cfg.filter_include_names)?,
            exclude_names: compile("filter_exclude_names", &cfg.filter_exclude_names)?,
            include_namespaces: compile(
                "filter_include_namespaces",
                &cfg.filter_include_namespaces,
            )?,
            exclude_namespaces: compile(
                "filter_exclude_namespaces",
                &cfg.filter_exclude_namespaces,
            )?,
        })
    }

    pub fn mode(&self) -> FilterMode {
        if !self.include_names.is_empty() || !self.include_namespaces.is_empty() {
            FilterMode::Include
        } else if !self.exclude_names.is_empty() || !self.exclude_namespaces.is_empty() {
            FilterMode::Exclude
        } else {
            FilterMode::Off
        }
    }

    /// Whether a container's cgroups go into the map for this mode.
    pub fn listed(&self, c: &Container) -> bool {
        let any = |res: &[Regex], v: &str| res.iter().any(|r| r.is_match(v));
        let excluded =
            any(&self.exclude_names, &c.name) || any(&self.exclude_namespaces, &c.namespace);
        match self.mode() {
            FilterMode::Off => false,
            FilterMode::Include => {
                (any(&self.include_names, &c.name) || any(&self.include_namespaces, &c.namespace))
                    && !excluded
            }
            FilterMode::Exclude => excluded,
        }
    }
}

pub struct ContainerFilter {
    patterns: Patterns,
    map: Option<MapHandle>,
    listed: Mutex<HashSet<u64>>,
}

impl ContainerFilter {
    /// Creates the shared map when a filter is configured.
    pub fn new(patterns: Patterns) -> Result<ContainerFilter> {
        let map = if patterns.mode() == FilterMode::Off {
            None
        } else {
            let opts = libbpf_rs::libbpf_sys::bpf_map_create_opts {
                sz: std::mem::size_of::<libbpf_rs::libbpf_sys::bpf_map_create_opts>() as _,
                ..Default::default()
            };
            Some(
                MapHandle::create(
                    MapType::Hash,
                    Some("container_filter"),
                    8,
                    1,
                    MAP_ENTRIES,
                    &opts,
                )
                .context("creating the container filter map")?,
            )
        };
        Ok(ContainerFilter {
            patterns,
            map,
            listed: Mutex::new(HashSet::new()),
        })
    }

    pub fn off() -> ContainerFilter {
        ContainerFilter {
            patterns: Patterns::default(),
            map: None,
            listed: Mutex::new(HashSet::new()),
        }
    }

    pub fn mode(&self) -> FilterMode {
        if self.map.is_some() {
            self.patterns.mode()
        } else {
            FilterMode::Off
        }
    }

    /// Whether events of this container are wanted (for events attributed in user space, e.g.
    /// through their network namespace, which the BPF side cannot filter).
    pub fn allows(&self, c: &Container) -> bool {
        match self.mode() {
            FilterMode::Off => true,
            FilterMode::Include => self.patterns.listed(c),
            FilterMode::Exclude => !self.patterns.listed(c),
        }
    }

    /// The map for `OpenMapMut::reuse_fd`, when a filter is configured.
    pub fn map_fd(&self) -> Option<BorrowedFd<'_>> {
        self.map.as_ref().map(|m| m.as_fd())
    }

    /// The program's `container_filter_mode` (bpf/bianque.bpf.h): 0 (off) without a configured
    /// filter.
    pub fn program_mode(&self) -> u8 {
        self.mode() as u8
    }

    /// Points a program's `container_filter` map at this shared one; without a configured
    /// filter the program's own empty map stays.
    pub fn share_map(&self, map: &mut libbpf_rs::OpenMapMut<'_>) -> anyhow::Result<()> {
        if let Some(fd) = self.map_fd() {
            anyhow::Context::context(map.reuse_fd(fd), "sharing the container filter map")?;
        }
        Ok(())
    }

    /// Brings the map in line with the listed containers' cgroups (`(memcg id, container)` for
    /// every cgroup at or below a container).
    pub fn apply<'a>(&self, cgroups: impl Iterator<Item = (u64, &'a Container)>) {
        let Some(map) = &self.map else { return };
        let want: HashSet<u64> = cgroups
            .filter(|(_, c)| self.patterns.listed(c))
            .map(|(id, _)| id)
            .collect();
        let mut listed = self.listed.lock().unwrap_or_else(|e| e.into_inner());
        for id in listed.difference(&want) {
            let _ = map.delete(&id.to_ne_bytes());
        }
        for id in want.difference(&listed) {
            if let Err(e) = map.update(&id.to_ne_bytes(), &[1u8], MapFlags::ANY) {
                tracing::warn!(error = %e, "container filter map full or unavailable");
            }
        }
        *listed = want;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(name: &str, ns: &str) -> Container {
        Container {
            id: "x".into(),
            runtime: "docker",
            name: name.into(),
            hostname: String::new(),
            namespace: ns.into(),
            pod: String::new(),
            pod_uid: String::new(),
            qos: String::new(),
            kind: "normal".into(),
            cgroup_path: String::new(),
            memory_cgroup_id: 1,
            init_pid: 0,
            net_namespace_inum: 0,
            first_seen: String::new(),
            exited: None,
        }
    }

    fn patterns(inc_n: &[&str], exc_n: &[&str], inc_ns: &[&str], exc_ns: &[&str]) -> Patterns {
        let v = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Patterns::from_config(&ContainersConfig {
            filter_include_names: v(inc_n),
            filter_exclude_names: v(exc_n),
            filter_include_namespaces: v(inc_ns),
            filter_exclude_namespaces: v(exc_ns),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn semantics_of_include_and_exclude() {
        let none = patterns(&[], &[], &[], &[]);
        assert_eq!(none.mode(), FilterMode::Off);
        let exc = patterns(&[], &["web-.*"], &[], &["kube-system"]);
        assert_eq!(exc.mode(), FilterMode::Exclude);
        assert!(exc.listed(&container("web-1", "shop")));
        assert!(exc.listed(&container("agent", "kube-system")));
        assert!(!exc.listed(&container("db", "shop")));
        assert!(!exc.listed(&container("myweb-1", "shop")), "full match");
        let both = patterns(&[], &["web-canary"], &["shop"], &[]);
        assert_eq!(both.mode(), FilterMode::Include);
        assert!(both.listed(&container("web-1", "shop")));
        assert!(!both.listed(&container("web-canary", "shop")));
        assert!(!both.listed(&container("db", "billing")));
    }

    #[test]
    fn bad_regex_names_the_key() {
        let err = Patterns::from_config(&ContainersConfig {
            filter_include_names: vec!["(".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.0.contains("containers.filter_include_names"), "{err}");
    }
}
