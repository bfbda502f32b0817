//! `tcp_memory`: TCP socket memory in use against the `net.ipv4.tcp_mem` limit (HuaTuo names:
//! `usage_pages`, `usage_bytes`, `limit_pages`, `usage_percent`).

use anyhow::{Context, Result};

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::{page_size, sockstat, tcp_mem};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "tcp_memory",
    mode: Mode::Metric,
    description: "TCP memory in use vs the net.ipv4.tcp_mem limit",
    requires: &[
        Requirement::HostFile("proc/sys/net/ipv4/tcp_mem"),
        Requirement::HostFile("proc/1/net/sockstat"),
    ],
    default_enabled: true,
    build,
};

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let _: NoOptions = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(TcpMemory {
        tcp_mem: ProcFile::new(ctx.host.proc("sys/net/ipv4/tcp_mem")),
        sockstat: ProcFile::new(ctx.host.net_file("sockstat")),
    })))
}

struct TcpMemory {
    tcp_mem: ProcFile,
    sockstat: ProcFile,
}

impl Collector for TcpMemory {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(limits) = self.tcp_mem.with(tcp_mem::parse)? else {
            return Ok(());
        };
        let Some(pages) = self.sockstat.with(|t| {
            Ok(sockstat::parse(t)?
                .iter()
                .find(|e| e.proto == "TCP" && e.key == "mem")
                .map(|e| e.value))
        })?
        else {
            return Ok(());
        };
        let pages = pages.context("no TCP mem in sockstat")?;
        let limit = limits[2];
        let ratio = if limit > 0 {
            pages as f64 / limit as f64
        } else {
            0.0
        };
        out.single(
            "usage_pages",
            "tcp memory pages usage",
            Kind::Gauge,
            pages as f64,
        );
        out.single(
            "usage_bytes",
            "tcp memory bytes usage",
            Kind::Gauge,
            (pages * page_size()) as f64,
        );
        out.single(
            "limit_pages",
            "tcp memory pages limit",
            Kind::Gauge,
            limit as f64,
        );
        out.single(
            "pressure_pages",
            "tcp memory pressure threshold in pages (net.ipv4.tcp_mem, 2nd value)",
            Kind::Gauge,
            limits[1] as f64,
        );
        // HuaTuo exports the ratio under this name; kept for dashboards.
        out.single(
            "usage_percent",
            "tcp memory usage as a fraction of the limit (HuaTuo's name; 0..1)",
            Kind::Gauge,
            ratio,
        );
        Ok(())
    }
}
