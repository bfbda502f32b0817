//! Parsers of the kernel's procfs files, one module per file format, each a pure function of
//! the file's text tested on fixture text; shared by every tracer that reads that file (the
//! model is node_exporter's prometheus/procfs library). Reading is the caller's job
//! ([`crate::host::file`]), except for [`tasks`], the one walk over `/proc/<pid>/task/<tid>`.
//!
//! Each parser says in its doc whether it is strict (a malformed line is an error naming the
//! line) or lenient (lines it cannot read are skipped): strict for collectors that export the
//! whole file, lenient where a caller only looks for one line and always skipped the others.

pub mod arp;
pub mod arp_cache;
pub mod buddyinfo;
pub mod cpulist;
pub mod diskstats;
pub mod limits;
pub mod loadavg;
pub mod meminfo;
pub mod mountinfo;
pub mod netdev;
pub mod netstat;
pub mod pid_cgroup;
pub mod pid_ns;
pub mod pid_stack;
pub mod pid_stat;
pub mod pid_statm;
pub mod pressure;
pub mod sockstat;
pub mod softirqs;
pub mod stat;
pub mod tasks;
pub mod tcp_mem;
pub mod uptime;
pub mod xfs_stat;

use anyhow::{Context, Result};

/// Parses an unsigned integer field, naming it in the error.
pub fn parse_u64(field: &str, what: &str) -> Result<u64> {
    field
        .parse::<u64>()
        .with_context(|| format!("{what}: {field:?} is not an unsigned integer"))
}

/// Parses a signed integer field (some kernel counters are printed signed).
pub fn parse_i64(field: &str, what: &str) -> Result<i64> {
    field
        .parse::<i64>()
        .with_context(|| format!("{what}: {field:?} is not an integer"))
}

/// Parses a number in any notation.
pub fn parse_f64(field: &str, what: &str) -> Result<f64> {
    field
        .parse::<f64>()
        .with_context(|| format!("{what}: {field:?} is not a number"))
}

/// `key value` lines (vmstat, memory.stat, memory.events, cpu.stat), in the file's order; keys
/// borrow from `text`. Empty lines are skipped; a line without exactly two fields or with a
/// non-numeric value is an error quoting it.
pub fn for_each_kv<'a>(text: &'a str, mut f: impl FnMut(&'a str, u64)) -> Result<()> {
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(key) = it.next() else { continue };
        let Some(value) = it.next() else {
            anyhow::bail!("line {line:?}: key without a value");
        };
        if it.next().is_some() {
            anyhow::bail!("line {line:?}: more than two fields");
        }
        // Some kernels print a few vmstat values signed (per-CPU drift); clamp those at 0.
        let v = match value.parse::<u64>() {
            Ok(v) => v,
            Err(_) => parse_i64(value, key)
                .with_context(|| format!("line {line:?}"))?
                .max(0) as u64,
        };
        f(key, v);
    }
    Ok(())
}

/// `USER_HZ`: the clock ticks per second that `/proc/stat`, `/proc/<pid>/stat` and cgroup v1
/// `cpuacct.stat` count in (100 on every mainstream kernel; 100 if sysconf cannot say).
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(100)
}

/// The page size in bytes, the unit of `/proc/net/sockstat` `mem`, `/proc/<pid>/statm` and
/// `net.ipv4.tcp_mem` (4096 if sysconf cannot say).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(4096)
}

/// Test helper: `result` is an error whose message, causes included, quotes `quoted` (the bad
/// line or text): every parser here names what it could not read.
#[cfg(test)]
pub(crate) fn assert_err_quotes<T: std::fmt::Debug>(result: Result<T>, quoted: &str) {
    match result {
        Ok(v) => panic!("expected an error quoting {quoted:?}, got {v:?}"),
        Err(e) => {
            let msg = format!("{e:#}");
            assert!(msg.contains(quoted), "{msg:?} does not quote {quoted:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_lines() {
        let mut got = Vec::new();
        for_each_kv("a 1\n\nb -3\nc 18446744073709551615\n", |k, v| {
            got.push((k.to_string(), v))
        })
        .unwrap();
        assert_eq!(
            got,
            vec![("a".into(), 1), ("b".into(), 0), ("c".into(), u64::MAX)]
        );
        for bad in [
            "a\n",
            "a 1 2\n",
            "a x\n",
            "a 1.5\n",
            "a 99999999999999999999\n",
        ] {
            assert_err_quotes(for_each_kv(bad, |_, _| {}), bad.trim_end());
        }
    }

    #[test]
    fn units_of_this_machine() {
        assert!(clk_tck() > 0);
        assert!(page_size() >= 4096 && page_size().is_power_of_two());
    }
}
