//! `memory_vmstat`: host `/proc/vmstat` and per container `memory.stat` (v1 or v2), plus the
//! container's memory usage and limit. Keys are filtered with include/exclude regexes, separately
//! for the host and for containers (HuaTuo's `Vmstat.{Included,Excluded}On{Host,Container}`).
//!
//! Under the `huatuo_bamai` prefix every key is a gauge named as in the file, as HuaTuo does;
//! otherwise event counts are counters with `_total`.

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::procfs::{for_each_kv, parse_u64};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_vmstat",
    mode: Mode::Metric,
    description:
        "virtual memory statistics: host /proc/vmstat, container memory.stat, usage and limit",
    requires: &[Requirement::HostFile("proc/vmstat")],
    default_enabled: true,
    build,
};

/// HuaTuo's shipped container whitelist: what matters for reclaim and page cache.
pub const DEFAULT_CONTAINER_INCLUDE: &str = "active_anon|active_file|dirty|inactive_anon|inactive_file|pgdeactivate|pgrefill|pgscan_direct|pgscan_kswapd|pgsteal_direct|pgsteal_kswapd|shmem|unevictable|writeback|pgscan_globaldirect|pgscan_globalkswapd|pgscan_cswapd|pgsteal_cswapd|pgsteal_globaldirect|pgsteal_globalkswapd|^anon$|^file$|^cache$|^rss$|^pgfault$|^pgmajfault$";
pub const DEFAULT_CONTAINER_EXCLUDE: &str = "total";

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct VmstatConfig {
    include: Option<String>,
    exclude: Option<String>,
    container_include: Option<String>,
    container_exclude: Option<String>,
    containers: bool,
}

impl Default for VmstatConfig {
    fn default() -> Self {
        VmstatConfig {
            include: None,
            exclude: None,
            container_include: Some(DEFAULT_CONTAINER_INCLUDE.into()),
            container_exclude: Some(DEFAULT_CONTAINER_EXCLUDE.into()),
            containers: true,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: VmstatConfig = crate::config::parse_section(ctx.section, table)?;
    let host_filter = Filter::new(
        ctx.section,
        "include",
        cfg.include.as_deref(),
        "exclude",
        cfg.exclude.as_deref(),
    )?;
    let container_filter = Filter::new(
        ctx.section,
        "container_include",
        cfg.container_include.as_deref(),
        "container_exclude",
        cfg.container_exclude.as_deref(),
    )?;
    Ok(Tracer::Metric(Box::new(Vmstat {
        file: ProcFile::new(ctx.host.proc("vmstat")),
        host_filter,
        container_filter,
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Vmstat {
    file: ProcFile,
    host_filter: Filter,
    container_filter: Filter,
    containers: bool,
    buf: std::sync::Mutex<String>,
}

/// Whether a vmstat / memory.stat key counts events (a counter) rather than a current amount.
pub fn is_event_count(key: &str) -> bool {
    let k = key.strip_prefix("total_").unwrap_or(key);
    const GAUGE_PREFIXES: &[&str] = &["nr_"];
    const COUNTER_EXCEPTIONS: &[&str] = &["nr_dirtied", "nr_written", "nr_foll_pin_", "nr_tlb_"];
    if GAUGE_PREFIXES.iter().any(|p| k.starts_with(p)) {
        return COUNTER_EXCEPTIONS.iter().any(|p| k.starts_with(p));
    }
    const COUNTER_PREFIXES: &[&str] = &[
        "pg",
        "pswp",
        "thp_",
        "workingset_refault",
        "workingset_activate",
        "workingset_restore",
        "workingset_nodereclaim",
        "zswpin",
        "zswpout",
        "zswpwb",
        "numa_",
        "allocstall",
        "compact_",
        "htlb_",
        "unevictable_",
        "balloon_",
        "swap_ra",
        "kswapd_",
        "drop_",
        "slabs_scanned",
        "oom_kill",
        "direct_map_",
        "cow_ksm",
        "ksm_",
        "zone_reclaim_",
        "vma_lock_",
        "kcompactd_",
        "pgsteal",
        "pgscan",
    ];
    COUNTER_PREFIXES.iter().any(|p| k.starts_with(p))
}

/// Writes one key as its own family (HuaTuo naming) or with `_total` for counts.
fn emit_key(
    out: &mut MetricSink,
    name_buf: &mut String,
    prefix: &str,
    key: &str,
    help: &str,
    labels: &[(&str, &str)],
    v: u64,
) {
    name_buf.clear();
    name_buf.push_str(prefix);
    name_buf.push_str(key);
    let kind = if out.huatuo_names() {
        Kind::Gauge
    } else {
        crate::exposition::expand_unit_tokens(name_buf);
        if is_event_count(key) {
            name_buf.push_str("_total");
            Kind::Counter
        } else {
            Kind::Gauge
        }
    };
    out.family(name_buf, help, kind).sample(labels, v as f64);
}

/// `/proc/vmstat` or `memory.stat` as (key, value), in the file's order. Strict
/// ([`for_each_kv`]): a malformed line is an error.
pub fn parse_kv(text: &str) -> Result<Vec<(&str, u64)>> {
    let mut out = Vec::with_capacity(200);
    for_each_kv(text, |k, v| out.push((k, v)))?;
    Ok(out)
}

impl Collector for Vmstat {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut name = String::with_capacity(64);
        let mut help = String::with_capacity(64);
        self.file.with(|text| {
            for (k, v) in parse_kv(text)? {
                if !self.host_filter.matches(k) {
                    continue;
                }
                help.clear();
                help.push_str("/proc/vmstat ");
                help.push_str(k);
                emit_key(out, &mut name, "", k, &help, &[], v);
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
        // key → samples, so that each family is written once with all containers.
        let mut rows: Vec<(String, Vec<(usize, u64)>)> = Vec::new();
        let mut usage: Vec<(usize, u64, Option<u64>)> = Vec::new();
        for (i, c) in snap.containers.iter().enumerate() {
            let Some(d) = snap.layout.dir("memory", &c.rel) else {
                continue;
            };
            if read_optional(&d.path.join("memory.stat"), &mut buf)? {
                for (k, v) in parse_kv(&buf)? {
                    if !self.container_filter.matches(k) {
                        continue;
                    }
                    match rows.iter_mut().find(|(key, _)| key == k) {
                        Some((_, s)) => s.push((i, v)),
                        None => rows.push((k.to_string(), vec![(i, v)])),
                    }
                }
            }
            let (cur, max) = if d.v2 {
                ("memory.current", "memory.max")
            } else {
                ("memory.usage_in_bytes", "memory.limit_in_bytes")
            };
            if read_optional(&d.path.join(cur), &mut buf)? {
                let used = parse_u64(buf.trim(), cur)?;
                let limit = if read_optional(&d.path.join(max), &mut buf)? {
                    // "max" (v2) or a huge number (v1, PAGE_COUNTER_MAX) mean no limit.
                    buf.trim().parse::<u64>().ok().filter(|&l| l < (1u64 << 62))
                } else {
                    None
                };
                usage.push((i, used, limit));
            }
        }
        for (k, samples) in &rows {
            help.clear();
            help.push_str("cgroup memory.stat ");
            help.push_str(k);
            name.clear();
            name.push_str("container_");
            name.push_str(k);
            let kind = if out.huatuo_names() {
                Kind::Gauge
            } else {
                crate::exposition::expand_unit_tokens(&mut name);
                if is_event_count(k) {
                    name.push_str("_total");
                    Kind::Counter
                } else {
                    Kind::Gauge
                }
            };
            out.family(&name, &help, kind);
            for (i, v) in samples {
                out.sample(&snap.containers[*i].labels(), *v as f64);
            }
        }
        if !usage.is_empty() {
            out.family(
                "container_usage_bytes",
                "Memory charged to the container (memory.usage_in_bytes or memory.current).",
                Kind::Gauge,
            );
            for (i, used, _) in &usage {
                out.sample(&snap.containers[*i].labels(), *used as f64);
            }
            out.family(
                "container_limit_bytes",
                "The container's memory limit (absent when unlimited).",
                Kind::Gauge,
            );
            for (i, _, limit) in &usage {
                if let Some(l) = limit {
                    out.sample(&snap.containers[*i].labels(), *l as f64);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_classifies() {
        let kv =
            parse_kv("nr_free_pages 100\npgfault 7\nnr_dirtied 3\n\nworkingset_nodes 1\n").unwrap();
        assert_eq!(
            kv,
            vec![
                ("nr_free_pages", 100),
                ("pgfault", 7),
                ("nr_dirtied", 3),
                ("workingset_nodes", 1)
            ]
        );
        assert!(!is_event_count("nr_free_pages"));
        assert!(is_event_count("pgfault"));
        assert!(is_event_count("nr_dirtied"));
        assert!(is_event_count("total_pgmajfault"));
        assert!(!is_event_count("workingset_nodes"));
        assert!(!is_event_count("active_anon"));
        assert!(is_event_count("allocstall_normal"));
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            "pgfault\n",
            "pgfault 1 2\n",
            "pgfault x\n",
            "a 1\nb 1.5\n",
            "pgfault 0x10\n",
        ] {
            assert!(parse_kv(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_container_filter_keeps_budget() {
        let f = Filter::new(
            "s",
            "i",
            Some(DEFAULT_CONTAINER_INCLUDE),
            "e",
            Some(DEFAULT_CONTAINER_EXCLUDE),
        )
        .unwrap();
        assert!(f.matches("active_anon"));
        assert!(f.matches("pgfault"));
        assert!(!f.matches("total_active_anon"));
        assert!(!f.matches("hierarchical_memory_limit"));
        assert!(!f.matches("mapped_file"));
    }

    #[test]
    fn names_follow_the_prefix() {
        let mut name = String::new();
        let mut s = MetricSink::new("bianque", "memory_vmstat");
        emit_key(&mut s, &mut name, "", "pgfault", "h", &[], 5);
        emit_key(&mut s, &mut name, "", "nr_free_pages", "h", &[], 6);
        assert!(s
            .as_str()
            .contains("bianque_memory_vmstat_pgfault_total 5\n"));
        assert!(s
            .as_str()
            .contains("# TYPE bianque_memory_vmstat_nr_free_pages gauge\n"));
        let mut s = MetricSink::new("huatuo_bamai", "memory_vmstat");
        emit_key(&mut s, &mut name, "", "pgfault", "h", &[], 5);
        assert!(s.as_str().contains("# TYPE huatuo_bamai_memory_vmstat_pgfault gauge\nhuatuo_bamai_memory_vmstat_pgfault 5\n"));
    }
}
