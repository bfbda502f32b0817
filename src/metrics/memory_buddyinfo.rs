//! `memory_buddyinfo`: free blocks per NUMA node, zone and order from `/proc/buddyinfo`
//! (HuaTuo: `memory_buddyinfo_blocks{node,zone,order}`).

use anyhow::{bail, Result};

use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::parse_u64;
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

/// One zone: (node, zone, free blocks by order).
pub type Zone<'a> = (&'a str, &'a str, Vec<u64>);

/// Parses `Node 0, zone   Normal   240 74 ...`.
pub fn parse_buddyinfo(text: &str) -> Result<Vec<Zone<'_>>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut it = line.split_ascii_whitespace();
        let (Some("Node"), Some(node), Some("zone"), Some(zone)) =
            (it.next(), it.next(), it.next(), it.next())
        else {
            bail!("line {line:?}: expected `Node N, zone NAME counts...`");
        };
        let Some(node) = node.strip_suffix(',') else {
            bail!("line {line:?}: node without a comma");
        };
        parse_u64(node, line)?;
        let counts = it.map(|f| parse_u64(f, line)).collect::<Result<Vec<_>>>()?;
        if counts.is_empty() {
            bail!("line {line:?}: no counts");
        }
        out.push((node, zone, counts));
    }
    Ok(out)
}

impl Collector for BuddyInfo {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        const ORDERS: [&str; 16] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
        ];
        self.file.with(|text| {
            let zones = parse_buddyinfo(text)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let z = parse_buddyinfo(
            "Node 0, zone      DMA      0      0      1 \nNode 1, zone   Normal    240     74\n",
        )
        .unwrap();
        assert_eq!(
            z,
            vec![("0", "DMA", vec![0, 0, 1]), ("1", "Normal", vec![240, 74])]
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "Node 0, zone DMA\n",
            "Node 0 zone DMA 1 2\n",
            "Node x, zone DMA 1\n",
            "Nod 0, zone DMA 1\n",
            "Node 0, zone DMA 1 -2\n",
            "Node 0, zone\n",
        ] {
            assert!(parse_buddyinfo(bad).is_err(), "{bad:?}");
        }
    }
}
