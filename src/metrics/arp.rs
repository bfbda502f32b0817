//! `arp`: ARP (neighbour) table sizes: entries in the host namespace (`/proc/net/arp`),
//! all namespaces together (`/proc/net/stat/arp_cache`), and per container namespace.

use anyhow::{bail, Result};

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::host::HostRoot;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "arp",
    mode: Mode::Metric,
    description: "ARP table entries: host namespace, all namespaces, containers",
    requires: &[Requirement::HostFile("proc/net/arp")],
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

/// Entries in `/proc/net/arp`: lines after the header.
pub fn count_arp(text: &str) -> Result<u64> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with("IP address") => {}
        _ => bail!("no `IP address` header"),
    }
    let mut n = 0;
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        if l.split_ascii_whitespace().count() < 6 {
            bail!("line {l:?}: truncated");
        }
        n += 1;
    }
    Ok(n)
}

/// `entries` (hex) from the first row of `/proc/net/stat/arp_cache`.
pub fn parse_arp_cache(text: &str) -> Result<u64> {
    let mut lines = text.lines();
    let head: Vec<&str> = match lines.next() {
        Some(h) => h.split_ascii_whitespace().collect(),
        None => bail!("empty"),
    };
    let Some(col) = head.iter().position(|c| *c == "entries") else {
        bail!("no `entries` column");
    };
    let Some(row) = lines.next() else {
        bail!("no data row");
    };
    let Some(v) = row.split_ascii_whitespace().nth(col) else {
        bail!("row {row:?}: truncated");
    };
    u64::from_str_radix(v, 16).map_err(|_| anyhow::anyhow!("entries {v:?} is not hex"))
}

impl Collector for Arp {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        if let Some(n) = self.arp.with(count_arp)? {
            out.single("entries", "host init namespace", Kind::Gauge, n as f64);
        }
        if let Some(n) = self.cache.with(parse_arp_cache)? {
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
                rows.push((c, count_arp(&buf)?));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let arp = "IP address       HW type     Flags       HW address            Mask     Device\n192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n";
        assert_eq!(count_arp(arp).unwrap(), 1);
        let cache =
            "entries  allocs   destroys\n0000000f 00000001 00000000\n0000000f 00000001 00000000\n";
        assert_eq!(parse_arp_cache(cache).unwrap(), 15);
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in ["", "foo\n", "IP address HW\n1.2.3.4 0x1\n"] {
            assert!(count_arp(bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "allocs\n1\n",
            "entries\n",
            "entries allocs\nzz 1\n",
            "allocs entries\n1\n",
        ] {
            assert!(parse_arp_cache(bad).is_err(), "{bad:?}");
        }
    }
}
