//! `memory_meminfo`: host memory from `/proc/meminfo`, in bytes. `MemTotal` becomes
//! `mem_total_bytes`, `Active(anon)` `active_anon_bytes`; counts without a unit
//! (`HugePages_Total`) keep no suffix.

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::ProcFile;
use crate::procfs::meminfo;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_meminfo",
    mode: Mode::Metric,
    description: "host memory from /proc/meminfo, in bytes",
    requires: &[Requirement::HostFile("proc/meminfo")],
    default_enabled: true,
    build,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct MeminfoConfig {
    /// Regexes over the file's own key names (`MemTotal`, `Active(anon)`).
    include: Option<String>,
    exclude: Option<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: MeminfoConfig = crate::config::parse_section(ctx.section, table)?;
    let filter = Filter::new(
        ctx.section,
        "include",
        cfg.include.as_deref(),
        "exclude",
        cfg.exclude.as_deref(),
    )?;
    Ok(Tracer::Metric(Box::new(Meminfo {
        file: ProcFile::new(ctx.host.proc("meminfo")),
        filter,
    })))
}

struct Meminfo {
    file: ProcFile,
    filter: Filter,
}

/// Spells out what Prometheus' linter takes for abbreviated units (`s_`, `sec_`).
fn lint_clean(name: &mut String) {
    for (from, to) in [
        ("s_reclaimable", "slab_reclaimable"),
        ("s_unreclaim", "slab_unreclaimable"),
        ("k_reclaimable", "kernel_reclaimable"),
    ] {
        if name == from {
            name.clear();
            name.push_str(to);
        }
    }
    crate::exposition::expand_unit_tokens(name);
}

/// `MemTotal` → `mem_total`, `Active(anon)` → `active_anon`, `HugePages_Total` →
/// `huge_pages_total`, `DirectMap4k` → `direct_map_4k`, `KReclaimable` → `k_reclaimable`.
pub fn snake_case(key: &str, out: &mut String) {
    out.clear();
    let chars: Vec<char> = key.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '(' || c == ')' || c == '_' || c == '-' || c == ' ' {
            if !out.is_empty() && !out.ends_with('_') {
                out.push('_');
            }
            continue;
        }
        let prev = if i > 0 { Some(chars[i - 1]) } else { None };
        let next = chars.get(i + 1).copied();
        let boundary = match prev {
            Some(p) if c.is_ascii_uppercase() => {
                p.is_ascii_lowercase()
                    || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()))
            }
            Some(p) if c.is_ascii_digit() => p.is_ascii_alphabetic(),
            _ => false,
        };
        if boundary && !out.is_empty() && !out.ends_with('_') {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    while out.ends_with('_') {
        out.pop();
    }
}

impl Collector for Meminfo {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut name = String::with_capacity(48);
        let mut help = String::with_capacity(64);
        self.file.with(|text| {
            for meminfo::Field { key, value, kb } in meminfo::parse(text)? {
                if !self.filter.matches(key) {
                    continue;
                }
                snake_case(key, &mut name);
                lint_clean(&mut name);
                help.clear();
                help.push_str("/proc/meminfo ");
                help.push_str(key);
                if kb {
                    name.push_str("_bytes");
                    help.push_str(", in bytes");
                } else {
                    // HugePages_Total/Free/Rsvd/Surp count pages.
                    name.push_str("_pages");
                }
                out.family(&name, &help, Kind::Gauge)
                    .sample(&[], value as f64);
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
    fn names() {
        let mut s = String::new();
        for (k, want) in [
            ("MemTotal", "mem_total"),
            ("Active(anon)", "active_anon"),
            ("HugePages_Total", "huge_pages_total"),
            ("DirectMap4k", "direct_map_4k"),
            ("DirectMap1G", "direct_map_1g"),
            ("KReclaimable", "k_reclaimable"),
            ("SecPageTables", "sec_page_tables"),
            ("SUnreclaim", "s_unreclaim"),
            ("NFS_Unstable", "nfs_unstable"),
            ("ShmemPmdMapped", "shmem_pmd_mapped"),
            ("Hugetlb", "hugetlb"),
            ("CmaFree", "cma_free"),
        ] {
            snake_case(k, &mut s);
            assert_eq!(s, want, "{k}");
        }
    }
}
