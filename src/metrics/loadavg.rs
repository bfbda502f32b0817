//! `loadavg`: the host load averages and task counts from `/proc/loadavg`; per container the
//! numbers of running and uninterruptible tasks from taskstats netlink (`CGROUPSTATS_CMD_GET` on
//! the container's cgroup v1 cpu directory, as HuaTuo; cgroup v1 only), and the threads in D
//! state from `/proc/<tid>/stat` (cgroup v1 or v2).
//!
//! Why both: taskstats counts a task as uninterruptible only when its state is exactly
//! TASK_UNINTERRUPTIBLE, so it misses killable waits (a page-cache read waiting for the disk)
//! and freezable ones (a write to a frozen filesystem), which `ps` shows as D and the load
//! average counts. `container_nr_uninterruptible` keeps HuaTuo's value; `container_nr_disk_sleep`
//! counts what `ps` shows.

use std::fs::File;
use std::io::{Read, Seek};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::cgroupfs::taskstats::{CgroupStats, TaskStats};
use crate::cgroupfs::CgroupDir;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::HostRoot;
use crate::procfs::{loadavg, pid_stat};
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "loadavg",
    mode: Mode::Metric,
    description: "load averages (1, 5, 15 min) and runnable/total task counts from /proc/loadavg; container running/uninterruptible tasks (taskstats, cgroup v1) and D-state threads (/proc)",
    requires: &[Requirement::HostFile("proc/loadavg")],
    default_enabled: true,
    build,
};

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: LoadAvgConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(LoadAvg {
        path: ctx.host.proc("loadavg"),
        file: Mutex::new(None),
        host: ctx.host.clone(),
        containers: cfg.containers,
        taskstats: Mutex::new(None),
    })))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct LoadAvgConfig {
    containers: bool,
}

impl Default for LoadAvgConfig {
    fn default() -> Self {
        LoadAvgConfig { containers: true }
    }
}

struct LoadAvg {
    path: std::path::PathBuf,
    /// Kept open and re-read from offset 0: cheaper than open+close per scrape.
    file: Mutex<Option<File>>,
    host: HostRoot,
    containers: bool,
    /// The taskstats netlink socket, opened at the first scrape with containers; `Err` keeps
    /// why it cannot work here (no CONFIG_TASKSTATS), so it is not retried every scrape.
    taskstats: Mutex<Option<Result<TaskStats, String>>>,
}

impl Collector for LoadAvg {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut text = String::with_capacity(64);
        {
            let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = Some(
                    File::open(&self.path)
                        .with_context(|| format!("opening {}", self.path.display()))?,
                );
            }
            let f = guard.as_mut().context("file handle")?;
            f.rewind()?;
            if let Err(e) = f.read_to_string(&mut text) {
                *guard = None;
                return Err(e).with_context(|| format!("reading {}", self.path.display()));
            }
        }
        let s =
            loadavg::parse(&text).with_context(|| format!("parsing {}", self.path.display()))?;
        out.single("load1", "1-minute load average.", Kind::Gauge, s.load1);
        out.single("load5", "5-minute load average.", Kind::Gauge, s.load5);
        out.single("load15", "15-minute load average.", Kind::Gauge, s.load15);
        out.single(
            "runnable_tasks",
            "Tasks currently runnable (running or on a run queue).",
            Kind::Gauge,
            s.runnable as f64,
        );
        out.single(
            "tasks",
            "Tasks (threads) that exist.",
            Kind::Gauge,
            s.tasks as f64,
        );
        if self.containers {
            self.collect_containers(ctx, out);
        }
        Ok(())
    }
}

impl LoadAvg {
    /// `container_nr_running` and `container_nr_uninterruptible` (HuaTuo's names) for each
    /// container with a cgroup v1 cpu directory. A container whose cgroup vanished or is not
    /// v1 is skipped; so is everything when the kernel has no taskstats.
    fn collect_containers(&self, ctx: &ScrapeContext, out: &mut MetricSink) {
        let snap = ctx.cgroups();
        if snap.containers.is_empty() {
            return;
        }
        let (mut tids, mut stat) = (String::new(), String::new());
        let mut proc_path = self.host.proc("");
        let d_state: Vec<(usize, u64)> = snap
            .containers
            .iter()
            .enumerate()
            .filter_map(|(i, ct)| {
                let dir = snap.layout.dir("cpu", &ct.rel)?;
                let n = count_d_state(&dir, &mut proc_path, &mut tids, &mut stat)?;
                Some((i, n))
            })
            .collect();
        if !d_state.is_empty() {
            out.family(
                "container_nr_disk_sleep",
                "Threads of the container in D state as ps shows it: any uninterruptible wait, killable and freezable ones included (/proc/<tid>/stat).",
                Kind::Gauge,
            );
            for (i, n) in &d_state {
                out.sample(&snap.containers[*i].labels(), *n as f64);
            }
        }
        let mut rows: Vec<(usize, CgroupStats)> = Vec::with_capacity(snap.containers.len());
        {
            let mut guard = self.taskstats.lock().unwrap_or_else(|e| e.into_inner());
            let client = guard.get_or_insert_with(|| {
                TaskStats::new().map_err(|e| {
                    tracing::info!("loadavg: no container task counts: {e:#}");
                    format!("{e:#}")
                })
            });
            let Ok(ts) = client.as_mut() else {
                return;
            };
            let mut failed = 0;
            for (i, ct) in snap.containers.iter().enumerate() {
                let Some(dir) = snap.layout.dir("cpu", &ct.rel).filter(|d| !d.v2) else {
                    continue;
                };
                match ts.cgroup(&dir.path) {
                    Ok(s) => rows.push((i, s)),
                    Err(e) => {
                        tracing::debug!("loadavg: {e:#}");
                        failed += 1;
                    }
                }
            }
            // Every request failed: the socket may be broken; open a new one next time.
            if rows.is_empty() && failed > 0 {
                *guard = None;
            }
        }
        if rows.is_empty() {
            return;
        }
        for (name, help, get) in [
            (
                "container_nr_running",
                "Tasks of the container that are running or runnable (taskstats).",
                (|s: &CgroupStats| s.nr_running) as fn(&CgroupStats) -> u64,
            ),
            (
                "container_nr_uninterruptible",
                "Tasks of the container in plain uninterruptible sleep (taskstats: killable and freezable waits are not counted; see container_nr_disk_sleep).",
                |s: &CgroupStats| s.nr_uninterruptible,
            ),
        ] {
            out.family(name, help, Kind::Gauge);
            for (i, s) in &rows {
                out.sample(&snap.containers[*i].labels(), get(s) as f64);
            }
        }
    }
}

/// Threads listed in the cgroup (`tasks` in v1, `cgroup.threads` in v2) whose
/// `<proc_dir>/<tid>/stat` state is `D`. `None` when the list cannot be read (no such file: a
/// fixture, a cgroup that went away). Threads that exit in between are skipped.
fn count_d_state(
    dir: &CgroupDir,
    proc_dir: &mut std::path::PathBuf,
    tids: &mut String,
    stat: &mut String,
) -> Option<u64> {
    let list = if dir.v2 { "cgroup.threads" } else { "tasks" };
    tids.clear();
    File::open(dir.path.join(list))
        .ok()?
        .read_to_string(tids)
        .ok()?;
    let mut n = 0;
    for tid in tids.lines().map(str::trim).filter(|t| !t.is_empty()) {
        proc_dir.push(tid);
        proc_dir.push("stat");
        stat.clear();
        let read = File::open(&*proc_dir).and_then(|mut f| f.read_to_string(stat));
        proc_dir.pop();
        proc_dir.pop();
        if read.is_ok() && pid_stat::comm_state(stat).is_some_and(|(_, state)| state == 'D') {
            n += 1;
        }
    }
    Some(n)
}
