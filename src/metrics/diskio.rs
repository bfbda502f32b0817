//! `diskio`: block device statistics from `/proc/diskstats` (HuaTuo's `diskio` names:
//! `read_requests_total{device}`…), plus merges, discards, flushes, busy time, utilisation and
//! the host's iowait share. Devices filtered by include/exclude regexes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::diskstats::{self, DiskStats};
use crate::procfs::stat;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "diskio",
    mode: Mode::Metric,
    description: "block device I/O from /proc/diskstats: bytes, ops, time, in-flight, utilisation",
    requires: &[Requirement::HostFile("proc/diskstats")],
    default_enabled: true,
    build,
};

/// RAM disks, loop devices and floppies by default (like node_exporter).
pub const DEFAULT_DEVICE_EXCLUDE: &str = r"^(ram|loop|fd)\d+$";
const SECTOR: f64 = 512.0;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct DiskConfig {
    device_include: Option<String>,
    device_exclude: Option<String>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            device_include: None,
            device_exclude: Some(DEFAULT_DEVICE_EXCLUDE.into()),
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: DiskConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(DiskIo {
        file: ProcFile::new(ctx.host.proc("diskstats")),
        stat: ProcFile::new(ctx.host.proc("stat")),
        filter: Filter::new(
            ctx.section,
            "device_include",
            cfg.device_include.as_deref(),
            "device_exclude",
            cfg.device_exclude.as_deref(),
        )?,
        state: Mutex::new(State::default()),
    })))
}

struct DiskIo {
    file: ProcFile,
    stat: ProcFile,
    filter: Filter,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// device → (time, io_ticks ms, last utilisation %)
    util: HashMap<String, (Instant, u64, f64)>,
    /// (iowait, total) ticks of the previous sample and the last iowait %.
    iowait: Option<(Instant, u64, u64, f64)>,
}

/// (iowait, total) ticks from the `cpu` line of /proc/stat (the whole file strict, as the
/// `cpu` collector reads it).
fn iowait_ticks(text: &str) -> Result<(u64, u64)> {
    let s = stat::parse(text)?;
    Ok((s.total.iowait(), s.total.total()))
}

impl Collector for DiskIo {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        self.file.with(|text| {
            let disks: Vec<DiskStats> = diskstats::parse(text)?
                .into_iter()
                .filter(|d| self.filter.matches(d.name))
                .collect();
            // (name, index or special, scale, help, kind)
            const COLS: [(&str, usize, f64, &str, Kind); 15] = [
                ("read_requests_total", 0, 1.0, "Total number of read requests completed successfully.", Kind::Counter),
                ("reads_merged_total", 1, 1.0, "Adjacent read requests merged.", Kind::Counter),
                ("read_bytes_total", 2, SECTOR, "Total number of bytes read from the device.", Kind::Counter),
                ("read_time_seconds_total", 3, 1e-3, "Total seconds spent by completed read requests.", Kind::Counter),
                ("write_requests_total", 4, 1.0, "Total number of write requests completed successfully.", Kind::Counter),
                ("writes_merged_total", 5, 1.0, "Adjacent write requests merged.", Kind::Counter),
                ("written_bytes_total", 6, SECTOR, "Total number of bytes written to the device.", Kind::Counter),
                ("write_time_seconds_total", 7, 1e-3, "Total seconds spent by completed write requests.", Kind::Counter),
                ("io_in_progress", 8, 1.0, "Number of I/O requests currently in flight (queue depth).", Kind::Gauge),
                ("io_time_seconds_total", 9, 1e-3, "Seconds the device had I/O in flight (busy time).", Kind::Counter),
                ("io_time_weighted_seconds_total", 10, 1e-3, "Seconds of I/O in flight weighted by the number of requests.", Kind::Counter),
                ("discard_requests_total", 11, 1.0, "Discard requests completed successfully.", Kind::Counter),
                ("discarded_bytes_total", 13, SECTOR, "Bytes discarded.", Kind::Counter),
                ("flush_requests_total", 15, 1.0, "Flush requests completed successfully.", Kind::Counter),
                ("flush_time_seconds_total", 16, 1e-3, "Seconds spent by flush requests.", Kind::Counter),
            ];
            for (name, idx, scale, help, kind) in COLS {
                if !disks.iter().any(|d| d.fields > idx) {
                    continue;
                }
                out.family(name, help, kind);
                for d in disks.iter().filter(|d| d.fields > idx) {
                    out.sample(&[("device", d.name)], d.f[idx] as f64 * scale);
                }
            }
            out.family(
                "io_util_percent",
                "Share of wall time the device was busy, since the previous sample (>= 1 s), percent.",
                Kind::Gauge,
            );
            for d in &disks {
                let ticks = d.f[9];
                let e = st
                    .util
                    .entry(d.name.to_string())
                    .or_insert((now, ticks, 0.0));
                let secs = now.duration_since(e.0).as_secs_f64();
                if secs >= 1.0 {
                    let util = if ticks >= e.1 {
                        ((ticks - e.1) as f64 / (secs * 1000.0) * 100.0).min(100.0)
                    } else {
                        0.0
                    };
                    *e = (now, ticks, util);
                }
                out.sample(&[("device", d.name)], e.2);
            }
            let names: Vec<&str> = disks.iter().map(|d| d.name).collect();
            st.util.retain(|k, _| names.contains(&k.as_str()));
            Ok(())
        })?;
        if let Some((iowait, total)) = self.stat.with(iowait_ticks)? {
            let pct = match st.iowait {
                Some((at, w0, t0, last)) if now.duration_since(at).as_secs_f64() < 1.0 => {
                    let _ = (w0, t0);
                    last
                }
                prev => {
                    let (w0, t0) = prev.map(|p| (p.1, p.2)).unwrap_or((0, 0));
                    let pct = if total > t0 && iowait >= w0 {
                        (iowait - w0) as f64 * 100.0 / (total - t0) as f64
                    } else {
                        0.0
                    };
                    st.iowait = Some((now, iowait, total, pct));
                    pct
                }
            };
            out.single(
                "disk_iowait_percent",
                "Share of CPU time idle while waiting for I/O, since the previous sample, percent.",
                Kind::Gauge,
                pct,
            );
        }
        Ok(())
    }
}
