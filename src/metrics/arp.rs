//! `arp`: ARP (neighbour) table sizes: entries in the host namespace (`/proc/net/arp`),
//! all namespaces together (`/proc/net/stat/arp_cache`), and per container namespace.

use anyhow::Result;

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::host::HostRoot;
use crate::procfs::{arp, arp_cache};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "arp",
    mode: Mode::Metric,
    description: "ARP table entries: host namespace, all namespaces, containers",
    requires: &[Requirement::HostFile("proc/1/net/arp")],
    default_enabled: true,
    build,
};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct ArpConfig {
    containers: bool,
}

impl Default for ArpConfig {
    fn default() -> Self {
        ArpConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: ArpConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Arp {
        host: ctx.host.clone(),
        arp: ProcFile::new(ctx.host.net_file("arp")),
        cache: ProcFile::new(ctx.host.net_file("stat/arp_cache")),
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Arp {
    host: HostRoot,
    arp: ProcFile,
    cache: ProcFile,
    containers: bool,
    buf: std::sync::Mutex<String>,
}

impl Collector for Arp {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        if let Some(n) = self.arp.with(arp::count)? {
            out.single("entries", "host init namespace", Kind::Gauge, n as f64);
        }
        if let Some(n) = self.cache.with(arp_cache::entries)? {
            // HuaTuo's name ends in _total although it is a gauge; lint-clean otherwise.
            let name = if out.huatuo_names() {
                "total"
            } else {
                "cache_entries"
            };
            out.single(
                name,
                "all entries in arp_cache for containers and host netns",
                Kind::Gauge,
                n as f64,
            );
        }
        if !self.containers {
            return Ok(());
        }
        let snap = ctx.cgroups();
        if snap.containers.is_empty() {
            return Ok(());
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        for c in &snap.containers {
            let Some(pid) = snap.netns_pid(&self.host, c, &mut buf) else {
                continue;
            };
            if read_optional(&self.host.proc(&format!("{pid}/net/arp")), &mut buf)? {
                rows.push((c, arp::count(&buf)?));
            }
        }
        if !rows.is_empty() {
            out.family(
                "container_entries",
                "arp entries in container netns",
                Kind::Gauge,
            );
            for (c, n) in rows {
                out.sample(&c.labels(), n as f64);
            }
        }
        Ok(())
    }
}
