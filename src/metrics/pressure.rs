//! `pressure`: pressure stall information (PSI) for cpu, memory, io (and irq where the kernel
//! has it), host from `/proc/pressure/*` and per container from cgroup2 `*.pressure` files when
//! present (on a hybrid machine containers usually have none: skipped).

use anyhow::Result;

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::procfs::pressure;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "pressure",
    mode: Mode::Metric,
    description: "pressure stall information (PSI) for cpu, memory, io: host and containers",
    requires: &[Requirement::HostFile("proc/pressure")],
    default_enabled: true,
    build,
};

const RESOURCES: [&str; 4] = ["cpu", "memory", "io", "irq"];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct PressureConfig {
    containers: bool,
}

impl Default for PressureConfig {
    fn default() -> Self {
        PressureConfig { containers: true }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: PressureConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Pressure {
        files: RESOURCES.map(|r| ProcFile::new(ctx.host.proc(&format!("pressure/{r}")))),
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Pressure {
    files: [ProcFile; 4],
    containers: bool,
    buf: std::sync::Mutex<String>,
}

impl Collector for Pressure {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut host = Vec::new();
        for (r, f) in RESOURCES.iter().zip(&self.files) {
            if let Some(lines) = f.with(pressure::parse)? {
                host.push((*r, lines));
            }
        }
        out.family(
            "waiting_seconds_total",
            "Time tasks stalled waiting for the resource: `some` (at least one task) or `full` (all non-idle tasks).",
            Kind::Counter,
        );
        for (r, lines) in &host {
            for l in lines {
                out.sample(
                    &[("resource", r), ("kind", l.kind)],
                    l.total_us as f64 / 1e6,
                );
            }
        }
        out.family(
            "stall_ratio",
            "Share of wall time stalled, averaged over 10 s, 60 s or 300 s (kernel avg10/60/300 / 100).",
            Kind::Gauge,
        );
        for (r, lines) in &host {
            for l in lines {
                for (w, a) in ["10s", "60s", "300s"].iter().zip(l.avg) {
                    out.sample(
                        &[("resource", r), ("kind", l.kind), ("window", w)],
                        a / 100.0,
                    );
                }
            }
        }
        if !self.containers {
            return Ok(());
        }
        let snap = ctx.cgroups();
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows = Vec::new();
        for c in &snap.containers {
            let Some(dir) = snap.layout.v2_dir(&c.rel) else {
                continue;
            };
            for r in &RESOURCES[..3] {
                if read_optional(&dir.join(format!("{r}.pressure")), &mut buf)? {
                    for l in pressure::parse(&buf)? {
                        rows.push((c, *r, l));
                    }
                }
            }
        }
        if !rows.is_empty() {
            out.family(
                "container_waiting_seconds_total",
                "Time the container's tasks stalled waiting for the resource (cgroup2 *.pressure).",
                Kind::Counter,
            );
            for (c, r, l) in &rows {
                out.sample2(
                    &c.labels(),
                    &[("resource", r), ("kind", l.kind)],
                    l.total_us as f64 / 1e6,
                );
            }
        }
        Ok(())
    }
}
