//! `memory_events`: per container memory events: cgroup v2 `memory.events` (low, high, max,
//! oom, oom_kill, oom_group_kill); on cgroup v1 the equivalents `memory.failcnt` (as `max`) and
//! `oom_kill` from `memory.oom_control`. Keys filtered by include/exclude regexes.

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::read_optional;
use crate::procfs::{for_each_kv, parse_u64};
use crate::tracer::{BuildContext, Collector, Mode, ScrapeContext, Tracer, TracerSpec, TRACERS};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "memory_events",
    mode: Mode::Metric,
    description: "per container memory events (memory.events; v1: failcnt, oom_kill)",
    requires: &[],
    default_enabled: true,
    build,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct EventsConfig {
    include: Option<String>,
    exclude: Option<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: EventsConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(MemoryEvents {
        filter: Filter::new(
            ctx.section,
            "include",
            cfg.include.as_deref(),
            "exclude",
            cfg.exclude.as_deref(),
        )?,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct MemoryEvents {
    filter: Filter,
    buf: std::sync::Mutex<String>,
}

/// A container's events as (key, count), v2 file or v1 equivalents.
fn read_events(dir: &crate::cgroupfs::CgroupDir, buf: &mut String) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    if dir.v2 {
        if read_optional(&dir.path.join("memory.events"), buf)? {
            for_each_kv(buf, |k, v| out.push((k.to_string(), v)))?;
        }
    } else {
        if read_optional(&dir.path.join("memory.failcnt"), buf)? {
            out.push(("max".to_string(), parse_u64(buf.trim(), "memory.failcnt")?));
        }
        if read_optional(&dir.path.join("memory.oom_control"), buf)? {
            for_each_kv(buf, |k, v| {
                if k == "oom_kill" {
                    out.push((k.to_string(), v));
                }
            })?;
        }
    }
    Ok(out)
}

impl Collector for MemoryEvents {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let snap = ctx.cgroups();
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<(String, Vec<(usize, u64)>)> = Vec::new();
        for (i, c) in snap.containers.iter().enumerate() {
            let Some(d) = snap.layout.dir("memory", &c.rel) else {
                continue;
            };
            for (k, v) in read_events(&d, &mut buf)? {
                if !self.filter.matches(&k) {
                    continue;
                }
                match rows.iter_mut().find(|(key, _)| *key == k) {
                    Some((_, s)) => s.push((i, v)),
                    None => rows.push((k, vec![(i, v)])),
                }
            }
        }
        let huatuo = out.huatuo_names();
        let mut name = String::new();
        let mut help = String::new();
        for (k, samples) in &rows {
            name.clear();
            name.push_str("container_");
            name.push_str(k);
            help.clear();
            help.push_str("memory events ");
            help.push_str(k);
            if huatuo {
                out.family(&name, &help, Kind::Gauge);
            } else {
                name.push_str("_total");
                out.family(&name, &help, Kind::Counter);
            }
            for (i, v) in samples {
                out.sample(&snap.containers[*i].labels(), *v as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_files() {
        let dir = std::env::temp_dir().join(format!("bq-memevents-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("memory.events"),
            "low 0\nhigh 2\nmax 3\noom 1\noom_kill 1\n",
        )
        .unwrap();
        std::fs::write(dir.join("memory.failcnt"), "7\n").unwrap();
        std::fs::write(
            dir.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 4\n",
        )
        .unwrap();
        let mut buf = String::new();
        let v2 = read_events(
            &crate::cgroupfs::CgroupDir {
                path: dir.clone(),
                v2: true,
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(v2.len(), 5);
        assert_eq!(v2[2], ("max".to_string(), 3));
        let v1 = read_events(
            &crate::cgroupfs::CgroupDir {
                path: dir.clone(),
                v2: false,
            },
            &mut buf,
        )
        .unwrap();
        assert_eq!(
            v1,
            vec![("max".to_string(), 7), ("oom_kill".to_string(), 4)]
        );
        std::fs::write(dir.join("memory.events"), "low\n").unwrap();
        assert!(read_events(
            &crate::cgroupfs::CgroupDir {
                path: dir.clone(),
                v2: true
            },
            &mut buf
        )
        .is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
