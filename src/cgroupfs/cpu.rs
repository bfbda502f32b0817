//! A cgroup's CPU files: one parser per file format (v1 `cpuacct.usage`, `cpuacct.stat`,
//! `cpu.cfs_quota_us` + `cpu.cfs_period_us`, v1 and v2 `cpu.stat`, v2 `cpu.max`; cpusets are
//! [`crate::procfs::cpulist`]), and the readers that combine a container's v1 or v2 files
//! into its usage, its CFS throttling and the cores it may use.

use anyhow::Result;

use crate::host::file::read_optional;
use crate::procfs::{cpulist, for_each_kv, parse_u64};

use super::Layout;

/// Cumulative CPU time of a cgroup, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CgroupUsage {
    pub usage_ns: u64,
    pub user_ns: u64,
    pub system_ns: u64,
}

/// CFS bandwidth statistics of a cgroup (fields the kernel lacks are None).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Throttling {
    pub nr_periods: Option<u64>,
    pub nr_throttled: Option<u64>,
    pub throttled_ns: Option<u64>,
    pub nr_bursts: Option<u64>,
    pub burst_ns: Option<u64>,
    /// v1 `wait_sum` (ns the cgroup's tasks waited on run queues; only with
    /// `kernel.sched_schedstats=1`).
    pub wait_sum_ns: Option<u64>,
}

/// A v1 or v2 `cpu.stat`: the throttling numbers of both, and the usage only v2 has (v2
/// counts in µs, v1 in ns). Strict ([`for_each_kv`]): a malformed line is an error quoting it;
/// unknown keys are ignored.
pub fn parse_cpu_stat(text: &str) -> Result<(Throttling, Option<CgroupUsage>)> {
    let mut t = Throttling::default();
    let mut u = CgroupUsage::default();
    let mut has_usage = false;
    for_each_kv(text, |k, v| match k {
        "nr_periods" => t.nr_periods = Some(v),
        "nr_throttled" => t.nr_throttled = Some(v),
        "throttled_time" => t.throttled_ns = Some(v),
        "throttled_usec" => t.throttled_ns = Some(v.saturating_mul(1000)),
        "nr_bursts" => t.nr_bursts = Some(v),
        "burst_time" => t.burst_ns = Some(v),
        "burst_usec" => t.burst_ns = Some(v.saturating_mul(1000)),
        "wait_sum" => t.wait_sum_ns = Some(v),
        "usage_usec" => {
            u.usage_ns = v.saturating_mul(1000);
            has_usage = true;
        }
        "user_usec" => u.user_ns = v.saturating_mul(1000),
        "system_usec" => u.system_ns = v.saturating_mul(1000),
        _ => {}
    })?;
    Ok((t, has_usage.then_some(u)))
}

/// v1 `cpuacct.usage`: one number, ns. Strict.
pub fn parse_cpuacct_usage(text: &str) -> Result<u64> {
    parse_u64(text.trim(), "cpuacct.usage")
}

/// v1 `cpuacct.stat` (`user N`, `system N` in USER_HZ ticks) as (user ns, system ns); a key
/// the file lacks reads 0. Strict ([`for_each_kv`]).
pub fn parse_cpuacct_stat(text: &str, clk_tck: u64) -> Result<(u64, u64)> {
    let (mut user, mut system) = (0, 0);
    for_each_kv(text, |k, v| match k {
        "user" => user = ticks_to_ns(v, clk_tck),
        "system" => system = ticks_to_ns(v, clk_tck),
        _ => {}
    })?;
    Ok((user, system))
}

/// Exact for any tick rate (USER_HZ divides 1e9 on every kernel, but need not).
fn ticks_to_ns(ticks: u64, clk_tck: u64) -> u64 {
    let ns = u128::from(ticks) * 1_000_000_000 / u128::from(clk_tck.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

/// The v1 quota in cores, `cpu.cfs_quota_us` / `cpu.cfs_period_us`; `None` without a quota
/// (`-1`) or when either file is malformed.
pub fn quota_cores_v1(quota: &str, period: &str) -> Option<f64> {
    let q: i64 = quota.trim().parse().ok()?;
    let p: i64 = period.trim().parse().ok()?;
    (q > 0 && p > 0).then(|| q as f64 / p as f64)
}

/// The v2 quota in cores from `cpu.max` (`quota period`); `None` without a quota (`max`) or
/// when the file is malformed.
pub fn quota_cores_v2(cpu_max: &str) -> Option<f64> {
    let mut it = cpu_max.split_ascii_whitespace();
    let q: f64 = it.next()?.parse().ok()?; // "max" fails to parse: no quota
    let p: f64 = it.next()?.parse().ok()?;
    (q > 0.0 && p > 0.0).then_some(q / p)
}

/// HuaTuo's `wait_sum_percent`: run-queue wait as a share of the time the cgroup's tasks were
/// runnable (waiting or running) between two samples of (`wait_sum` ns, usage ns):
/// Δwait / (Δwait + Δusage) × 100. `None` when a counter went back (cgroup recreated); 0 when
/// neither moved.
pub fn wait_sum_percent(prev: (u64, u64), cur: (u64, u64)) -> Option<f64> {
    if cur.0 < prev.0 || cur.1 < prev.1 {
        return None;
    }
    let (dw, du) = ((cur.0 - prev.0) as f64, (cur.1 - prev.1) as f64);
    if dw + du <= 0.0 {
        return Some(0.0);
    }
    Some(dw * 100.0 / (dw + du))
}

/// The cumulative usage and the throttling of the cgroup `rel` (v2: the cpu controller's
/// `cpu.stat`; v1: throttling from `cpu.stat`, usage from `cpuacct.usage` and
/// `cpuacct.stat`). `None` for what the cgroup has no file for; `buf` is reused.
pub fn read_usage(
    layout: &Layout,
    rel: &str,
    buf: &mut String,
    clk_tck: u64,
) -> Result<(Option<CgroupUsage>, Option<Throttling>)> {
    let mut usage = None;
    let mut throttling = None;
    if let Some(d) = layout.dir("cpu", rel) {
        if read_optional(&d.path.join("cpu.stat"), buf)? {
            let (t, u) = parse_cpu_stat(buf)?;
            throttling = Some(t);
            if d.v2 {
                usage = u;
            }
        }
    }
    if usage.is_none() {
        if let Some(d) = layout.dir("cpuacct", rel).filter(|d| !d.v2) {
            if read_optional(&d.path.join("cpuacct.usage"), buf)? {
                let mut u = CgroupUsage {
                    usage_ns: parse_cpuacct_usage(buf)?,
                    ..CgroupUsage::default()
                };
                if read_optional(&d.path.join("cpuacct.stat"), buf)? {
                    (u.user_ns, u.system_ns) = parse_cpuacct_stat(buf, clk_tck)?;
                }
                usage = Some(u);
            }
        }
    }
    Ok((usage, throttling))
}

/// The CPU cores the cgroup `rel` may use: its CFS quota (v1 `cpu.cfs_quota_us` /
/// `cpu.cfs_period_us`, v2 `cpu.max`), else the size of its cpuset (v2
/// `cpuset.cpus.effective`; v1 `cpuset.effective_cpus`, else `cpuset.cpus`). `None` when it
/// is limited by neither: it may use every CPU. `buf` is reused.
pub fn read_cores(layout: &Layout, rel: &str, buf: &mut String) -> Result<Option<f64>> {
    if let Some(d) = layout.dir("cpu", rel) {
        let quota = if d.v2 {
            read_optional(&d.path.join("cpu.max"), buf)?
                .then(|| quota_cores_v2(buf))
                .flatten()
        } else if read_optional(&d.path.join("cpu.cfs_quota_us"), buf)? {
            let q = buf.clone();
            read_optional(&d.path.join("cpu.cfs_period_us"), buf)?
                .then(|| quota_cores_v1(&q, buf))
                .flatten()
        } else {
            None
        };
        if quota.is_some() {
            return Ok(quota);
        }
    }
    if let Some(d) = layout.dir("cpuset", rel) {
        let names: &[&str] = if d.v2 {
            &["cpuset.cpus.effective"]
        } else {
            &["cpuset.effective_cpus", "cpuset.cpus"]
        };
        for n in names {
            if read_optional(&d.path.join(n), buf)? {
                if let Some(cpus) = cpulist::parse(buf) {
                    return Ok(Some(cpus.len() as f64));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::host::HostRoot;
    use crate::procfs::assert_err_quotes;

    // Files of this machine (6.18, hybrid: v1 cpu, cpuacct, cpuset; cgroup2 `unified`).
    const V1_CPU_STAT: &str =
        "nr_periods 0\nnr_throttled 0\nthrottled_time 0\nnr_bursts 0\nburst_time 0\n";
    const V2_CPU_STAT: &str =
        "usage_usec 4203228599\nuser_usec 3436163121\nsystem_usec 767065477\nnice_usec 0\n";
    const CPUACCT_STAT: &str = "user 345894\nsystem 77153\n";

    #[test]
    fn cpu_stat_v1_and_v2() {
        let (t, u) = parse_cpu_stat(V1_CPU_STAT).unwrap();
        assert_eq!(t.nr_periods, Some(0));
        assert_eq!(t.throttled_ns, Some(0));
        assert_eq!(t.wait_sum_ns, None, "absent without schedstats");
        assert!(u.is_none());
        let (t, u) = parse_cpu_stat(
            "nr_periods 10\nnr_throttled 3\nthrottled_time 5000\nnr_bursts 0\nburst_time 0\n",
        )
        .unwrap();
        assert_eq!((t.nr_throttled, t.throttled_ns), (Some(3), Some(5000)));
        assert!(u.is_none());
        let (t, u) = parse_cpu_stat(V2_CPU_STAT).unwrap();
        assert_eq!(t, Throttling::default());
        assert_eq!(
            u,
            Some(CgroupUsage {
                usage_ns: 4_203_228_599_000,
                user_ns: 3_436_163_121_000,
                system_ns: 767_065_477_000
            })
        );
        // A limited v2 container: throttling in µs.
        let (t, _) = parse_cpu_stat(
            "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 1\nnr_throttled 1\nthrottled_usec 7\nnr_bursts 0\nburst_usec 0\n",
        )
        .unwrap();
        assert_eq!((t.throttled_ns, t.burst_ns), (Some(7000), Some(0)));
        // v1 with kernel.sched_schedstats=1.
        let (t, _) = parse_cpu_stat(
            "nr_periods 10\nnr_throttled 3\nthrottled_time 5000\nwait_sum 123456789\n",
        )
        .unwrap();
        assert_eq!(t.wait_sum_ns, Some(123_456_789));
        for bad in ["nr_periods\n", "nr_periods x\n", "a 1 2\n", "wait_sum x\n"] {
            assert_err_quotes(parse_cpu_stat(bad), bad.trim_end());
        }
    }

    #[test]
    fn cpuacct_files() {
        assert_eq!(
            parse_cpuacct_usage("4222759654749\n").unwrap(),
            4_222_759_654_749
        );
        assert!(parse_cpuacct_usage("x\n").is_err());
        assert!(parse_cpuacct_usage("").is_err());
        assert_eq!(
            parse_cpuacct_stat(CPUACCT_STAT, 100).unwrap(),
            (3_458_940_000_000, 771_530_000_000)
        );
        assert_eq!(
            parse_cpuacct_stat("user 3\nsystem 1\n", 300).unwrap(),
            (10_000_000, 3_333_333)
        );
        assert_eq!(
            parse_cpuacct_stat("user 150\n", 100).unwrap(),
            (1_500_000_000, 0)
        );
        assert!(parse_cpuacct_stat("user x\n", 100).is_err());
    }

    #[test]
    fn quotas() {
        assert_eq!(quota_cores_v1("-1\n", "100000\n"), None);
        assert_eq!(quota_cores_v1("50000\n", "100000\n"), Some(0.5));
        assert_eq!(quota_cores_v1("x\n", "100000\n"), None);
        assert_eq!(quota_cores_v2("max 100000\n"), None);
        assert_eq!(quota_cores_v2("200000 100000\n"), Some(2.0));
        assert_eq!(quota_cores_v2("garbage"), None);
        assert_eq!(quota_cores_v2("200000"), None);
    }

    #[test]
    fn wait_share() {
        // 1 s waited, 3 s ran → 25 %.
        assert_eq!(
            wait_sum_percent((0, 0), (1_000_000_000, 3_000_000_000)),
            Some(25.0)
        );
        assert_eq!(wait_sum_percent((5, 5), (5, 5)), Some(0.0));
        assert_eq!(wait_sum_percent((10, 0), (5, 100)), None, "rollback");
        assert_eq!(wait_sum_percent((0, 10), (5, 5)), None, "rollback");
    }

    fn write(dir: &Path, files: &[(&str, &str)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }

    #[test]
    fn readers_combine_a_containers_v1_or_v2_files() {
        let root = std::env::temp_dir().join(format!("bq-cgroupfs-cpu-{}", std::process::id()));
        let host = HostRoot::new(&root);
        let cg = root.join("sys/fs/cgroup");
        let mut buf = String::new();

        // Hybrid: v1 cpu, cpuacct, cpuset; a 1.5-core quota.
        let hybrid = Layout::from_mountinfo(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n\
             33 31 0:30 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n\
             34 31 0:31 / /sys/fs/cgroup/cpuset rw - cgroup cgroup rw,cpuset\n\
             41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            &host,
        );
        write(
            &cg.join("cpu/c1"),
            &[
                (
                    "cpu.stat",
                    "nr_periods 10\nnr_throttled 2\nthrottled_time 900\n",
                ),
                ("cpu.cfs_quota_us", "150000\n"),
                ("cpu.cfs_period_us", "100000\n"),
            ],
        );
        write(
            &cg.join("cpuacct/c1"),
            &[
                ("cpuacct.usage", "3000000000\n"),
                ("cpuacct.stat", "user 200\nsystem 100\n"),
            ],
        );
        write(&cg.join("cpuset/c1"), &[("cpuset.cpus", "0-3\n")]);
        let (u, t) = read_usage(&hybrid, "/c1", &mut buf, 100).unwrap();
        assert_eq!(
            u,
            Some(CgroupUsage {
                usage_ns: 3_000_000_000,
                user_ns: 2_000_000_000,
                system_ns: 1_000_000_000
            })
        );
        assert_eq!(t.and_then(|t| t.nr_throttled), Some(2));
        assert_eq!(read_cores(&hybrid, "/c1", &mut buf).unwrap(), Some(1.5));
        // No quota: the cpuset, its effective list first.
        write(&cg.join("cpu/c1"), &[("cpu.cfs_quota_us", "-1\n")]);
        assert_eq!(read_cores(&hybrid, "c1", &mut buf).unwrap(), Some(4.0));
        write(&cg.join("cpuset/c1"), &[("cpuset.effective_cpus", "1\n")]);
        assert_eq!(read_cores(&hybrid, "c1", &mut buf).unwrap(), Some(1.0));
        // A cgroup without files: nothing known, no error.
        assert_eq!(read_usage(&hybrid, "gone", &mut buf, 100).unwrap().0, None);
        assert_eq!(read_cores(&hybrid, "gone", &mut buf).unwrap(), None);

        // cgroup2 only: cpu.stat has the usage; cpu.max the quota.
        let unified = Layout::from_mountinfo(
            "30 23 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n",
            &host,
        );
        write(
            &cg.join("unified/c2"),
            &[
                ("cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\nnr_periods 4\nnr_throttled 1\nthrottled_usec 9\n"),
                ("cpu.max", "max 100000\n"),
                ("cpuset.cpus.effective", "0-1\n"),
            ],
        );
        let (u, t) = read_usage(&unified, "c2", &mut buf, 100).unwrap();
        assert_eq!(u.map(|u| u.usage_ns), Some(5000));
        assert_eq!(t.and_then(|t| t.throttled_ns), Some(9000));
        assert_eq!(read_cores(&unified, "c2", &mut buf).unwrap(), Some(2.0));
        write(&cg.join("unified/c2"), &[("cpu.max", "50000 100000\n")]);
        assert_eq!(read_cores(&unified, "c2", &mut buf).unwrap(), Some(0.5));
        // A malformed file is an error quoting the line.
        write(&cg.join("unified/c2"), &[("cpu.stat", "usage_usec x\n")]);
        assert_err_quotes(read_usage(&unified, "c2", &mut buf, 100), "usage_usec x");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
