//! `uptime`: seconds since boot and aggregate idle seconds from `/proc/uptime`.
//!
//! The smallest complete collector, used as the worked example in docs/custom-tracers.md.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::config::{parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::procfs::uptime;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "uptime",
    mode: Mode::Metric,
    description: "seconds since boot and idle seconds summed over CPUs, from /proc/uptime",
    requires: &[Requirement::HostFile("proc/uptime")],
    default_enabled: true,
    build,
};

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UptimeConfig {}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let _: UptimeConfig = parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Uptime {
        path: ctx.host.proc("uptime"),
    })))
}

struct Uptime {
    path: PathBuf,
}

impl Collector for Uptime {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let (up, idle) =
            uptime::parse(&text).with_context(|| format!("parsing {}", self.path.display()))?;
        out.single("seconds", "Seconds since boot.", Kind::Gauge, up);
        out.single(
            "idle_seconds_total",
            "Idle time summed over all CPUs, in seconds.",
            Kind::Counter,
            idle,
        );
        Ok(())
    }
}
