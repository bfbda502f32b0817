//! `sockstat`: socket counts and memory from `/proc/net/sockstat` (HuaTuo names:
//! `sockets_used`, `TCP_inuse`, `TCP_mem_bytes`…), host and per container network namespace
//! (containers without `mem`: TCP/UDP memory is accounted globally).

use anyhow::Result;

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::host::HostRoot;
use crate::procfs::{page_size, sockstat};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "sockstat",
    mode: Mode::Metric,
    description: "socket counts and memory (/proc/net/sockstat), host and containers",
    requires: &[Requirement::HostFile("proc/1/net/sockstat")],
    default_enabled: true,
    build,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SockstatConfig {
    containers: bool,
}

impl Default for SockstatConfig {
    fn default() -> Self {
        SockstatConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: SockstatConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Sockstat {
        host: ctx.host.clone(),
        file: ProcFile::new(ctx.host.net_file("sockstat")),
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Sockstat {
    host: HostRoot,
    file: ProcFile,
    containers: bool,
    buf: std::sync::Mutex<String>,
}

/// (`PROTO_key`, value) in file order: HuaTuo's names (`sockets_used`, `TCP_inuse`).
fn named(text: &str) -> Result<Vec<(String, u64)>> {
    Ok(sockstat::parse(text)?
        .iter()
        .map(|e| (format!("{}_{}", e.proto, e.key), e.value))
        .collect())
}

fn help(key: &str) -> String {
    if key == "sockets_used" {
        return "Number of IPv4 sockets in use.".into();
    }
    match key.rsplit_once('_') {
        Some((p, "bytes")) => format!("Memory used by {}, in bytes.", p.trim_end_matches("_mem")),
        Some((p, s)) => format!("Number of {p} sockets in state {s}."),
        None => key.to_string(),
    }
}

/// Adds `<PROTO>_mem_bytes` after each `<PROTO>_mem` (pages).
fn with_bytes(mut v: Vec<(String, u64)>) -> Vec<(String, u64)> {
    let page = page_size();
    let mut i = 0;
    while i < v.len() {
        if v[i].0.ends_with("_mem") {
            let b = (format!("{}_bytes", v[i].0), v[i].1.saturating_mul(page));
            v.insert(i + 1, b);
            i += 1;
        }
        i += 1;
    }
    v
}

impl Collector for Sockstat {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        self.file.with(|text| {
            for (k, v) in with_bytes(named(text)?) {
                out.single(&k, &help(&k), Kind::Gauge, v as f64);
            }
            Ok(())
        })?;
        if !self.containers {
            return Ok(());
        }
        let snap = ctx.cgroups();
        if snap.containers.is_empty() {
            return Ok(());
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(String, Vec<(usize, u64)>)> = Vec::new();
        for (i, c) in snap.containers.iter().enumerate() {
            let Some(pid) = snap.netns_pid(&self.host, c, &mut buf) else {
                continue;
            };
            if !read_optional(&self.host.proc(&format!("{pid}/net/sockstat")), &mut buf)? {
                continue;
            }
            for (k, v) in named(&buf)? {
                if k.ends_with("_mem") {
                    continue;
                }
                match rows.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, s)) => s.push((i, v)),
                    None => rows.push((k, vec![(i, v)])),
                }
            }
        }
        for (k, samples) in &rows {
            out.family(&format!("container_{k}"), &help(k), Kind::Gauge);
            for (i, v) in samples {
                out.sample(&snap.containers[*i].labels(), *v as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_bytes() {
        let t =
            "sockets: used 14\nTCP: inuse 1 orphan 0 tw 12 alloc 1 mem 3\nFRAG: inuse 0 memory 0\n";
        let v = with_bytes(named(t).unwrap());
        let keys: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "sockets_used",
                "TCP_inuse",
                "TCP_orphan",
                "TCP_tw",
                "TCP_alloc",
                "TCP_mem",
                "TCP_mem_bytes",
                "FRAG_inuse",
                "FRAG_memory"
            ]
        );
        assert_eq!(v[6].1, 3 * page_size());
        assert_eq!(help("TCP_tw"), "Number of TCP sockets in state tw.");
    }
}
