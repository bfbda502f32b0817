//! Helpers the benchmarks share: a free loopback port, a median, a bare HTTP/1.0 request, and
//! the command that starts the agent under test.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

/// The release binary `cargo bench` built.
pub const BIN: &str = env!("CARGO_BIN_EXE_bianque");

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Median of the finite values (the mean of the middle two for an even count); NaN if none.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub mod workloads;

#[path = "../../tests/common/http_client.rs"]
mod http_client;

/// One HTTP/1.0 request; (status, body), status 0 when the agent is not reachable.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    http_client::request(addr, method, path, headers, "")
}

/// `bianque run` listening on `addr` with its store in `data_dir`, an optional config file,
/// the named tracers disabled, and warnings only on a discarded stderr.
pub fn agent_command(
    addr: &str,
    data_dir: &Path,
    config: Option<&Path>,
    disable: &[impl AsRef<str>],
) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--listen", addr, "--data-dir"])
        .arg(data_dir);
    if let Some(cfg) = config {
        cmd.arg("--config").arg(cfg);
    }
    for d in disable {
        cmd.args(["--disable", d.as_ref()]);
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}
