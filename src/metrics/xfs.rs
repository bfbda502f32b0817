//! `xfs`: XFS's global statistics from `/proc/fs/xfs/stat` (allocation, inode cache, buffer
//! locks, log space), under the names HuaTuo's host dashboard charts (`xfs_alloc_blocks_total`,
//! `xfs_inode_attempts_total`, …). Inactive where XFS is not loaded (no such file).

use anyhow::{Context, Result};

use crate::config::{parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::xfs_stat;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "xfs",
    mode: Mode::Metric,
    description:
        "XFS allocation, inode cache, buffer lock and log space counters (/proc/fs/xfs/stat)",
    requires: &[Requirement::HostFile("proc/fs/xfs/stat")],
    default_enabled: true,
    build,
};

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct XfsConfig {}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let _: XfsConfig = parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Xfs {
        file: ProcFile::new(ctx.host.proc("fs/xfs/stat")),
    })))
}

struct Xfs {
    file: ProcFile,
}

/// (family, group, index in the group, help): the kernel's `xfs_stats` field order.
const FAMILIES: [(&str, &str, usize, &str); 17] = [
    (
        "alloc_extents_total",
        "extent_alloc",
        0,
        "Extents allocated.",
    ),
    ("alloc_blocks_total", "extent_alloc", 1, "Blocks allocated."),
    ("free_extents_total", "extent_alloc", 2, "Extents freed."),
    ("free_blocks_total", "extent_alloc", 3, "Blocks freed."),
    ("inode_attempts_total", "ig", 0, "Inode cache lookups."),
    (
        "inode_found_total",
        "ig",
        1,
        "Inode cache lookups that found the inode.",
    ),
    (
        "inode_missed_total",
        "ig",
        3,
        "Inode cache lookups that missed (the inode was read from disk).",
    ),
    (
        "inode_reclaims_total",
        "ig",
        5,
        "Inodes reclaimed from the cache.",
    ),
    ("log_writes_total", "log", 0, "Log buffer writes."),
    ("log_blocks_total", "log", 1, "Blocks written to the log."),
    (
        "log_force_total",
        "log",
        3,
        "Log forces (in-core log written to disk on demand).",
    ),
    (
        "log_space_try_total",
        "push_ail",
        0,
        "Attempts to reserve log space.",
    ),
    (
        "log_space_sleep_total",
        "push_ail",
        1,
        "Log space reservations that had to sleep (the log was full).",
    ),
    ("buf_get_total", "buf", 0, "Buffer lookups."),
    (
        "buf_get_locked_total",
        "buf",
        2,
        "Buffer lookups that found the buffer and locked it.",
    ),
    (
        "buf_locked_waited_total",
        "buf",
        3,
        "Buffer lookups that waited for the buffer's lock.",
    ),
    (
        "buf_busy_locked_total",
        "buf",
        4,
        "Buffer lookups that found the buffer locked and did not wait (busy).",
    ),
];

impl Collector for Xfs {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        self.file
            .with(|text| {
                let groups = xfs_stat::parse(text)?;
                for (name, group, i, help) in FAMILIES {
                    if let Some(v) = xfs_stat::get(&groups, group, i) {
                        out.single(name, help, Kind::Counter, v as f64);
                    }
                }
                Ok(())
            })?
            .with_context(|| format!("{} is gone", self.file.path().display()))?;
        Ok(())
    }
}
