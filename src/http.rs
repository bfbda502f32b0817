//! HTTP helpers shared by the agent's clients: error text of a reqwest error, the CA bundle
//! loader of the TLS clients (kubelet, Elasticsearch), and [`PlainGet`], the blocking client
//! for plain `GET`s over TCP or a unix socket (container engine APIs, the kubelet read-only
//! port, the CLI asking a running agent).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

/// A reqwest error with its causes (`error sending request: connection refused`), without the
/// URL.
pub fn err_text(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cause = c.source();
    }
    s
}

/// The certificates of a PEM bundle file; errors name the config `key` and the file.
pub fn ca_bundle(key: &str, path: &Path) -> Result<Vec<reqwest::Certificate>> {
    let pem =
        std::fs::read(path).with_context(|| format!("{key}: cannot read {}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        anyhow!(
            "{key}: {} is not PEM certificates: {}",
            path.display(),
            err_text(e)
        )
    })?;
    if certs.is_empty() {
        bail!("{key}: {} holds no certificate", path.display());
    }
    Ok(certs)
}

/// A blocking client for plain-HTTP `GET`s to one server, over TCP or a unix socket.
///
/// Each request opens its own connection (no idle connection is kept: an idle one would keep
/// e.g. `podman system service` from timing out), ignores proxy variables (the servers are
/// local), and must finish within `timeout`. It drives reqwest's async client on a
/// current-thread runtime of its own, on the calling thread: no thread waits in the
/// background between requests (a reqwest blocking client keeps one per client). Create and
/// use it outside an async runtime.
pub struct PlainGet {
    client: reqwest::Client,
    runtime: tokio::runtime::Runtime,
    /// `http://<host>`: requests go to `<base><path>`.
    base: String,
    /// The server, for errors: the address or the socket path.
    server: String,
}

impl PlainGet {
    /// A client for `addr` (`host:port`).
    pub fn tcp(addr: &str, connect_timeout: Duration, timeout: Duration) -> Result<PlainGet> {
        let client = Self::builder(timeout)
            .connect_timeout(connect_timeout)
            .no_proxy()
            .build()
            .map_err(|e| anyhow!("HTTP client for {addr}: {}", err_text(e)))?;
        Ok(PlainGet {
            client,
            runtime: Self::runtime()?,
            base: format!("http://{addr}"),
            server: addr.to_string(),
        })
    }

    /// A client for the server on the unix socket `path` (the URL's host is not used).
    pub fn unix(path: &Path, timeout: Duration) -> Result<PlainGet> {
        let client = Self::builder(timeout)
            .connect_timeout(timeout)
            .unix_socket(path)
            .build()
            .map_err(|e| anyhow!("HTTP client for {}: {}", path.display(), err_text(e)))?;
        Ok(PlainGet {
            client,
            runtime: Self::runtime()?,
            base: "http://localhost".into(),
            server: path.display().to_string(),
        })
    }

    fn runtime() -> Result<tokio::runtime::Runtime> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the HTTP client's runtime")
    }

    fn builder(timeout: Duration) -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            .timeout(timeout)
            .pool_max_idle_per_host(0)
            .user_agent(concat!("bianque/", env!("CARGO_PKG_VERSION")))
    }

    /// The body of `GET path` (`/containers/json?all=1`), or an error naming the status.
    pub fn get(&self, path: &str) -> Result<String> {
        let what = || format!("GET {path} on {}", self.server);
        self.runtime.block_on(async {
            let resp = self
                .client
                .get(format!("{}{path}", self.base))
                .send()
                .await
                .map_err(|e| anyhow!("{}: {}", what(), err_text(e)))?;
            let status = resp.status();
            if status != reqwest::StatusCode::OK {
                bail!("{}: HTTP status {}", what(), status.as_u16());
            }
            resp.text()
                .await
                .map_err(|e| anyhow!("{}: reading the answer: {}", what(), err_text(e)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// Reads one request from `conn`, writes `answer`, closes; returns the request.
    fn answer_once(mut conn: impl Read + Write, answer: &str) -> String {
        let mut buf = [0u8; 2048];
        let n = conn.read(&mut buf).unwrap_or(0);
        let _ = conn.write_all(answer.as_bytes());
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn gets_over_a_unix_socket_and_tcp() {
        let dir = std::env::temp_dir().join(format!("bianque-http-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("api.sock");
        let unix = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let asked = std::thread::spawn(move || {
            let conn = unix.accept().unwrap().0;
            answer_once(conn, "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n[]")
        });
        let c = PlainGet::unix(&sock, Duration::from_secs(2)).unwrap();
        assert_eq!(c.get("/containers/json?all=1").unwrap(), "[]");
        assert!(asked
            .join()
            .unwrap()
            .starts_with("GET /containers/json?all=1 HTTP/1.1\r\n"));

        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let conn = tcp.accept().unwrap().0;
            answer_once(
                conn,
                "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\nnope",
            )
        });
        let c = PlainGet::tcp(&addr, Duration::from_secs(1), Duration::from_secs(2)).unwrap();
        let e = format!("{:#}", c.get("/pods").unwrap_err());
        assert!(
            e.contains("GET /pods on 127.0.0.1:") && e.contains("404"),
            "{e}"
        );
        server.join().unwrap();

        // Nothing listening: an error naming the socket.
        let _ = std::fs::remove_file(&sock);
        let c = PlainGet::unix(&sock, Duration::from_secs(1)).unwrap();
        let e = format!("{:#}", c.get("/x").unwrap_err());
        assert!(e.contains("api.sock"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_bad_ca_bundle_names_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("bianque-http-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        for path in [garbage, dir.join("missing.pem")] {
            let e = format!("{:#}", ca_bundle("x.ca_file", &path).unwrap_err());
            assert!(e.starts_with("x.ca_file: "), "{e}");
            assert!(e.contains(&path.display().to_string()), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
