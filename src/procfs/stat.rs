//! `/proc/stat`: CPU time per mode (all CPUs in the `cpu` line, then one `cpuN` line each, in
//! USER_HZ ticks: [`super::clk_tck`]), and the `ctxt`, `intr`, `btime`, `processes`,
//! `procs_running`, `procs_blocked` counters (proc(5)).

use anyhow::{bail, Result};

use super::parse_u64;

/// The mode columns of a `cpu` line, in kernel order (proc(5)).
pub const MODES: [&str; 10] = [
    "user",
    "nice",
    "system",
    "idle",
    "iowait",
    "irq",
    "softirq",
    "steal",
    "guest",
    "guest_nice",
];

/// Ticks (USER_HZ) per mode, indexed as [`MODES`]; modes an old kernel lacks stay 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTimes(pub [u64; 10]);

impl CpuTimes {
    /// All time except guest and guest_nice (the kernel already counts them in user and nice).
    pub fn total(&self) -> u64 {
        self.0[..8].iter().sum()
    }
    /// user + nice.
    pub fn usr(&self) -> u64 {
        self.0[0] + self.0[1]
    }
    /// system + irq + softirq.
    pub fn sys(&self) -> u64 {
        self.0[2] + self.0[5] + self.0[6]
    }
    pub fn iowait(&self) -> u64 {
        self.0[4]
    }
    /// The first eight modes (user … steal): the time that adds up to [`CpuTimes::total`].
    pub fn without_guest(&self) -> [u64; 8] {
        let mut out = [0; 8];
        out.copy_from_slice(&self.0[..8]);
        out
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct ProcStat {
    /// The `cpu` line: all CPUs.
    pub total: CpuTimes,
    /// The `cpuN` lines, in the file's order (offline CPUs are not listed).
    pub per_cpu: Vec<(u32, CpuTimes)>,
    pub ctxt: Option<u64>,
    pub intr: Option<u64>,
    pub processes: Option<u64>,
    pub btime: Option<u64>,
    pub procs_running: Option<u64>,
    pub procs_blocked: Option<u64>,
}

/// The whole file. Strict for the lines it knows (`cpu`, `cpuN` and the counters above): one
/// that is malformed is an error quoting it, and so is a file without a `cpu` line; other
/// lines (`softirq`, lines of future kernels) are ignored.
pub fn parse(text: &str) -> Result<ProcStat> {
    let mut s = ProcStat::default();
    let mut saw_total = false;
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(key) = it.next() else { continue };
        let single = |it: &mut std::str::SplitAsciiWhitespace| -> Result<u64> {
            match it.next() {
                Some(v) => parse_u64(v, line),
                None => bail!("line {line:?}: no value"),
            }
        };
        match key {
            "cpu" => {
                s.total = parse_times(&mut it, line)?;
                saw_total = true;
            }
            k if k.starts_with("cpu") => {
                let n = u32::try_from(parse_u64(&k[3..], line)?)
                    .map_err(|_| anyhow::anyhow!("line {line:?}: CPU number out of range"))?;
                s.per_cpu.push((n, parse_times(&mut it, line)?));
            }
            "ctxt" => s.ctxt = Some(single(&mut it)?),
            "intr" => s.intr = Some(single(&mut it)?),
            "processes" => s.processes = Some(single(&mut it)?),
            "btime" => s.btime = Some(single(&mut it)?),
            "procs_running" => s.procs_running = Some(single(&mut it)?),
            "procs_blocked" => s.procs_blocked = Some(single(&mut it)?),
            _ => {}
        }
    }
    if !saw_total {
        bail!("no `cpu` line");
    }
    Ok(s)
}

/// The `cpu` line only (all CPUs), for detectors that sample the host's time split. Lenient:
/// other lines are not looked at; a missing or malformed `cpu` line is an error quoting it.
pub fn parse_total(text: &str) -> Result<CpuTimes> {
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        if it.next() == Some("cpu") {
            return parse_times(&mut it, line);
        }
    }
    bail!("no `cpu` line")
}

/// The mode columns after a `cpu`/`cpuN` key: at least user, nice, system and idle (every
/// kernel has those); columns past guest_nice are ignored.
fn parse_times(fields: &mut std::str::SplitAsciiWhitespace, line: &str) -> Result<CpuTimes> {
    let mut t = CpuTimes::default();
    let mut n = 0;
    for (slot, f) in t.0.iter_mut().zip(fields) {
        *slot = parse_u64(f, line)?;
        n += 1;
    }
    if n < 4 {
        bail!("line {line:?}: expected at least 4 time columns, found {n}");
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/stat (6.18, 2 CPUs), the `intr` line cut short.
    const STAT: &str = "\
cpu  342762 0 76025 149518 2599 0 546 418 0 0
cpu0 166636 0 38234 79998 821 0 30 209 0 0
cpu1 176125 0 37790 69519 1778 0 515 208 0 0
intr 2081582 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 1 1 16 0 0 0 0 573 976
ctxt 3710111
btime 1796192490
processes 93447
procs_running 7
procs_blocked 0
softirq 2625622 0 168508 30 1575409 231790 0 179 162494 10 487202
";

    #[test]
    fn parses_the_whole_file() {
        let s = parse(STAT).unwrap();
        assert_eq!(
            s.total.0,
            [342762, 0, 76025, 149518, 2599, 0, 546, 418, 0, 0]
        );
        assert_eq!(s.per_cpu.len(), 2);
        assert_eq!(s.per_cpu[1].0, 1);
        assert_eq!(s.per_cpu[1].1 .0[3], 69519);
        assert_eq!(s.ctxt, Some(3710111));
        assert_eq!(s.intr, Some(2081582));
        assert_eq!(s.btime, Some(1796192490));
        assert_eq!(s.processes, Some(93447));
        assert_eq!(s.procs_running, Some(7));
        assert_eq!(s.procs_blocked, Some(0));
        assert_eq!(s.total.total(), 342762 + 76025 + 149518 + 2599 + 546 + 418);
        assert_eq!(s.total.usr(), 342762);
        assert_eq!(s.total.sys(), 76025 + 546);
        assert_eq!(s.total.iowait(), 2599);
        assert_eq!(
            s.total.without_guest(),
            [342762, 0, 76025, 149518, 2599, 0, 546, 418]
        );
        // Kernels before 2.6.11 have only 4 columns (the rest stay 0); guest time is not
        // counted twice in the total.
        let s = parse("cpu 1 2 3 4\n").unwrap();
        assert_eq!(s.total.0[..5], [1, 2, 3, 4, 0]);
        assert_eq!(parse("cpu 1 1 1 1 0 0 0 0 5 5\n").unwrap().total.total(), 4);
    }

    #[test]
    fn malformed_known_lines_are_errors_naming_the_line() {
        // (text, what the error must quote)
        for (bad, named) in [
            ("", "no `cpu` line"),
            ("intr 5\n", "no `cpu` line"),
            ("cpu 1 2 3\n", "cpu 1 2 3"),
            ("cpu 1 2 x 4\n", "cpu 1 2 x 4"),
            ("cpu 1 2 3 4\ncpuX 1 2 3 4\n", "cpuX 1 2 3 4"),
            ("cpu 1 2 3 4\ncpu99999999999 1 2 3 4\n", "cpu99999999999"),
            ("cpu 1 2 3 4\ncpu0 1 2\n", "cpu0 1 2"),
            ("cpu 1 2 3 4\nctxt\n", "ctxt"),
            ("cpu 1 2 3 4\nprocs_running -1\n", "procs_running -1"),
            ("cpu 1 2 3 4\nbtime 1e9\n", "btime 1e9"),
        ] {
            assert_err_quotes(parse(bad), named);
        }
        // Lines it does not know are not its business.
        assert!(parse("cpu 1 2 3 4\nnew_counter x y\n").is_ok());
    }

    #[test]
    fn the_total_line_alone_ignores_the_others() {
        assert_eq!(parse_total(STAT).unwrap().0[2], 76025);
        assert_eq!(
            parse_total("cpu0 1 2\ncpu  1 2 3 4 5 6 7 8\n").unwrap().0[..8],
            [1, 2, 3, 4, 5, 6, 7, 8]
        );
        for bad in ["", "cpu0 1 2 3 4\n", "cpu  x 1 2 3\n", "cpu 1 2\n"] {
            assert!(parse_total(bad).is_err(), "{bad:?}");
        }
        assert_err_quotes(parse_total("cpu  1 2 x 4\n"), "cpu  1 2 x 4");
    }
}
