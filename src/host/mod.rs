//! Where the host's files are. `--host-root` stands for `/`: fixtures in tests, or the host
//! mounted at e.g. `/host` when the agent runs in a container.

pub mod file;

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct HostRoot {
    root: PathBuf,
}

impl Default for HostRoot {
    fn default() -> Self {
        HostRoot {
            root: PathBuf::from("/"),
        }
    }
}

impl HostRoot {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HostRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `proc/<rel>` under the root.
    pub fn proc(&self, rel: &str) -> PathBuf {
        self.root.join("proc").join(rel)
    }

    /// `sys/<rel>` under the root.
    pub fn sys(&self, rel: &str) -> PathBuf {
        self.root.join("sys").join(rel)
    }

    /// `dev/<rel>` under the root.
    pub fn dev(&self, rel: &str) -> PathBuf {
        self.root.join("dev").join(rel)
    }

    /// The host's copy of a `/proc/net` file: `proc/1/net/<name>`, pid 1's network namespace.
    /// `proc/net` is the reader's own namespace, which is not the host's when the agent runs in
    /// a container with the host's /proc at `--host-root`.
    pub fn net_file(&self, name: &str) -> PathBuf {
        self.proc(&format!("1/net/{name}"))
    }

    /// True when this is the real `/`, so kernel-facing tracers (BPF) make sense.
    pub fn is_real_root(&self) -> bool {
        self.root == Path::new("/")
    }
}

/// The machine's hostname (`uname -n`), or "localhost" if it cannot be read.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
