//! A real Prometheus (Debian's package, installed by `make test`) on loopback, scraping one
//! target every second; killed before its directory is removed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, http, wait_until, TempDir};

pub struct Prometheus {
    child: Child,
    pub addr: String,
    dir: TempDir,
}

impl Prometheus {
    /// Starts it scraping `target` as job `job` and waits until the target is up.
    pub fn scrape(job: &str, target: &str) -> Prometheus {
        let dir = TempDir::new("prometheus");
        let addr = format!("127.0.0.1:{}", free_port());
        std::fs::write(
            dir.path().join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package) is installed by `make test`");
        let prom = Prometheus { child, addr, dir };
        let up = wait_until(Duration::from_secs(40), || {
            let (code, body) = http(&prom.addr, "GET", "/api/v1/targets", &[]);
            code == 200 && body.contains("\"health\":\"up\"")
        });
        assert!(up, "target never up; prometheus log:\n{}", prom.log());
        prom
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/query` for `q`: status code and body.
    pub fn query_raw(&self, q: &str) -> (u16, String) {
        let (code, body) = http(
            &self.addr,
            "GET",
            &format!("/api/v1/query?query={}", urlencode(q)),
            &[],
        );
        (code, body)
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
