//! osmem-server (PyPI): a real OpenSearch-API server in one binary, for the shipper tests.
//! `make test-deps` installs it into `.test-deps/osmem` (or set `OSMEM_BIN`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// The osmem-server binary; panics with the fix when it is missing.
pub fn osmem_bin() -> PathBuf {
    if let Ok(p) = std::env::var("OSMEM_BIN") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".test-deps/osmem");
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            PathBuf::from(String::from_utf8_lossy(&o.stdout).trim().to_string())
        }
        _ => panic!(
            "osmem-server is not installed in {}: run `make test-deps` (python3 -m venv + pip install osmem-server==0.1.6)",
            venv.display()
        ),
    }
}

/// A running osmem-server on a loopback port, killed on drop.
pub struct Osmem {
    child: Option<Child>,
    pub port: u16,
}

impl Osmem {
    pub fn start() -> Osmem {
        Osmem::start_on(free_port())
    }

    /// Starts on `port` (again, after [`Osmem::stop`]: a fresh, empty server).
    pub fn start_on(port: u16) -> Osmem {
        let mut os = Osmem { child: None, port };
        os.restart();
        os
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(osmem_bin())
            .arg("--addr")
            .arg(self.addr())
            .arg("--no-stdin-watch")
            .arg("--no-ja")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn osmem-server");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(10), || {
            request(&self.addr(), "GET", "/", "").0 == 200
        });
        assert!(up, "osmem-server did not answer on {}", self.addr());
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `method path` with a JSON body: (status, JSON answer).
    pub fn json(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let (code, text) = request(&self.addr(), method, path, body);
        (code, serde_json::from_str(&text).unwrap_or_default())
    }

    /// `_search` on `index` with `query` (a JSON query object); the hits.
    pub fn search(
        &self,
        index: &str,
        query: serde_json::Value,
        size: usize,
    ) -> Vec<serde_json::Value> {
        let body = serde_json::json!({"query": query, "size": size}).to_string();
        let (code, v) = self.json("POST", &format!("/{index}/_search"), &body);
        if code == 404 {
            return Vec::new();
        }
        assert_eq!(code, 200, "search {index}: {v}");
        v["hits"]["hits"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Osmem {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP/1.0 request with a JSON body: (status, body).
pub fn request(addr: &str, method: &str, path: &str, body: &str) -> (u16, String) {
    let json = [("Content-Type", "application/json")];
    super::http_client::request(addr, method, path, &json, body)
}
