//! `netdev`: network device counters from `/proc/net/dev` (HuaTuo names:
//! `receive_bytes_total{device}`…), host and per container (the container's network
//! namespace). Devices filtered by include/exclude regexes.

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::host::HostRoot;
use crate::procfs::netdev;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netdev",
    mode: Mode::Metric,
    description:
        "network device counters (/proc/net/dev), host and per container network namespace",
    requires: &[Requirement::HostFile("proc/1/net/dev")],
    default_enabled: true,
    build,
};

/// HuaTuo's shipped exclusion (loopback, docker bridges, veth pairs), grouped correctly.
pub const DEFAULT_DEVICE_EXCLUDE: &str = r"^(lo|docker\w*|veth\w*)$";

/// Column names in /proc/net/dev order.
pub const COLUMNS: [&str; 16] = [
    "receive_bytes",
    "receive_packets",
    "receive_errors",
    "receive_dropped",
    "receive_fifo",
    "receive_frame",
    "receive_compressed",
    "receive_multicast",
    "transmit_bytes",
    "transmit_packets",
    "transmit_errors",
    "transmit_dropped",
    "transmit_fifo",
    "transmit_colls",
    "transmit_carrier",
    "transmit_compressed",
];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NetdevConfig {
    device_include: Option<String>,
    device_exclude: Option<String>,
    containers: bool,
}

impl Default for NetdevConfig {
    fn default() -> Self {
        NetdevConfig {
            device_include: None,
            device_exclude: Some(DEFAULT_DEVICE_EXCLUDE.into()),
            containers: true,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetdevConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Netdev {
        host: ctx.host.clone(),
        file: ProcFile::new(ctx.host.net_file("dev")),
        filter: Filter::new(
            ctx.section,
            "device_include",
            cfg.device_include.as_deref(),
            "device_exclude",
            cfg.device_exclude.as_deref(),
        )?,
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Netdev {
    host: HostRoot,
    file: ProcFile,
    filter: Filter,
    containers: bool,
    buf: std::sync::Mutex<String>,
}

impl Collector for Netdev {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut name = String::with_capacity(48);
        let mut help = String::with_capacity(64);
        let mut family = |out: &mut MetricSink, prefix: &str, col: &str| {
            name.clear();
            name.push_str(prefix);
            name.push_str(col);
            name.push_str("_total");
            help.clear();
            help.push_str("Network device statistic ");
            help.push_str(col);
            help.push('.');
            out.family(&name, &help, Kind::Counter);
        };
        self.file.with(|text| {
            let devs: Vec<_> = netdev::parse(text)?
                .into_iter()
                .filter(|(d, _)| self.filter.matches(d))
                .collect();
            for (i, col) in COLUMNS.iter().enumerate() {
                family(out, "", col);
                for (d, v) in &devs {
                    out.sample(&[("device", d)], v[i] as f64);
                }
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
        let mut texts = Vec::new();
        for c in &snap.containers {
            let Some(pid) = snap.netns_pid(&self.host, c, &mut buf) else {
                continue;
            };
            if read_optional(&self.host.proc(&format!("{pid}/net/dev")), &mut buf)? {
                texts.push((c, buf.clone()));
            }
        }
        let mut rows = Vec::new();
        for (c, t) in &texts {
            for (d, v) in netdev::parse(t)? {
                if self.filter.matches(d) {
                    rows.push((*c, d, v));
                }
            }
        }
        if rows.is_empty() {
            return Ok(());
        }
        for (i, col) in COLUMNS.iter().enumerate() {
            family(out, "container_", col);
            for (c, d, v) in &rows {
                out.sample2(&c.labels(), &[("device", d)], v[i] as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_leaves_out_virtual_devices() {
        let f = Filter::new("s", "i", None, "e", Some(DEFAULT_DEVICE_EXCLUDE)).unwrap();
        assert!(!f.matches("lo") && !f.matches("veth1a") && !f.matches("docker0"));
        assert!(f.matches("eth0") && f.matches("lo2"));
    }
}
