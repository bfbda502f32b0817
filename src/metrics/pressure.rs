//! `pressure`: pressure stall information (PSI) for cpu, memory, io (and irq where the kernel
//! has it), host from `/proc/pressure/*` and per container from cgroup2 `*.pressure` files when
//! present (on a hybrid machine containers usually have none: skipped).

use anyhow::{bail, Result};

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::procfs::{parse_f64, parse_u64};
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

/// One PSI line: `some avg10=0.00 avg60=0.00 avg300=0.00 total=0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiLine {
    /// `some` or `full`.
    pub kind: &'static str,
    /// Percent of wall time, over 10, 60 and 300 s.
    pub avg: [f64; 3],
    /// Total stall time in µs.
    pub total_us: u64,
}

pub fn parse_psi(text: &str) -> Result<Vec<PsiLine>> {
    let mut out = Vec::with_capacity(2);
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let kind = match it.next() {
            None => continue,
            Some("some") => "some",
            Some("full") => "full",
            Some(k) => bail!("line {line:?}: unknown kind {k:?}"),
        };
        let mut avg = [f64::NAN; 3];
        let mut total = None;
        for f in it {
            let Some((k, v)) = f.split_once('=') else {
                bail!("line {line:?}: field {f:?} is not key=value");
            };
            match k {
                "avg10" => avg[0] = parse_f64(v, line)?,
                "avg60" => avg[1] = parse_f64(v, line)?,
                "avg300" => avg[2] = parse_f64(v, line)?,
                "total" => total = Some(parse_u64(v, line)?),
                _ => {}
            }
        }
        let Some(total_us) = total else {
            bail!("line {line:?}: no total");
        };
        if avg.iter().any(|a| a.is_nan()) {
            bail!("line {line:?}: missing averages");
        }
        out.push(PsiLine {
            kind,
            avg,
            total_us,
        });
    }
    Ok(out)
}

impl Collector for Pressure {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut host = Vec::new();
        for (r, f) in RESOURCES.iter().zip(&self.files) {
            if let Some(lines) = f.with(parse_psi)? {
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
                    for l in parse_psi(&buf)? {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let l = parse_psi(
            "some avg10=7.00 avg60=14.74 avg300=7.55 total=45909189\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].avg, [7.0, 14.74, 7.55]);
        assert_eq!(l[0].total_us, 45909189);
        assert_eq!(l[1].kind, "full");
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "some\n",
            "some avg10=1 avg60=1 avg300=1\n",
            "some avg10=x avg60=1 avg300=1 total=1\n",
            "some avg10 avg60=1 avg300=1 total=1\n",
            "half avg10=1 avg60=1 avg300=1 total=1\n",
            "some avg10=1 total=5\n",
            "some avg10=1 avg60=1 avg300=1 total=-5\n",
        ] {
            assert!(parse_psi(bad).is_err(), "{bad:?}");
        }
    }
}
