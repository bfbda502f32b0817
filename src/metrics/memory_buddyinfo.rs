//! `memory_buddyinfo`: free blocks per NUMA node, zone and order from `/proc/buddyinfo`
//! (HuaTuo: `memory_buddyinfo_blocks{node,zone,order}`).

use anyhow::Result;

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::buddyinfo;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_buddyinfo",
    mode: Mode::Metric,
    description: "free memory blocks per node, zone and order (/proc/buddyinfo)",
    requires: &[Requirement::HostFile("proc/buddyinfo")],
    default_enabled: true,
    build,
};

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoOptions {}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let _: NoOptions = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(BuddyInfo {
        file: ProcFile::new(ctx.host.proc("buddyinfo")),
    })))
}

struct BuddyInfo {
    file: ProcFile,
}

impl Collector for BuddyInfo {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        const ORDERS: [&str; 16] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
        ];
        self.file.with(|text| {
            let zones = buddyinfo::parse(text)?;
            out.family(
                "blocks",
                "Free blocks of 2^order pages per NUMA node and zone (/proc/buddyinfo).",
                Kind::Gauge,
            );
            for (node, zone, counts) in &zones {
                for (order, n) in counts.iter().enumerate().take(ORDERS.len()) {
                    out.sample(
                        &[("node", node), ("order", ORDERS[order]), ("zone", zone)],
                        *n as f64,
                    );
                }
            }
            Ok(())
        })?;
        Ok(())
    }
}
