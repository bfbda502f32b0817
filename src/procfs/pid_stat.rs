//! `/proc/<pid>/stat` and `/proc/<pid>/task/<tid>/stat`: one line, `pid (comm) state ppid …`
//! (proc(5)). comm may hold spaces and parentheses (a task may name itself `a (b) c`), so it
//! runs from the first `(` to the last `)`; the fields after it are counted from there.

use anyhow::{bail, Result};

use super::parse_u64;

/// The fields callers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidStat<'a> {
    pub pid: u32,
    pub comm: &'a str,
    /// `R`, `S`, `D`, `Z`, `T`, `t`, `X`, `I`…
    pub state: char,
    /// CPU time in user and kernel mode, in USER_HZ ticks ([`super::clk_tck`]).
    pub utime: u64,
    pub stime: u64,
}

/// After `)`: state is field 3 of the line, utime 14 and stime 15 (proc(5)), so 0, 11 and 12
/// counted from the state.
const UTIME: usize = 11;
const STIME: usize = 12;

/// (comm, state) only: the cheap check of a task walk. Lenient: `None` when there is no
/// `(comm)` or nothing after it; the fields after the state are not looked at.
pub fn comm_state(text: &str) -> Option<(&str, char)> {
    let (_, comm, rest) = split(text)?;
    let state = rest.trim_start().chars().next()?;
    Some((comm, state))
}

/// pid, comm, state, utime and stime. Strict: a line without `(comm)`, truncated before
/// stime, or with a non-numeric field among those is an error quoting it.
pub fn parse(text: &str) -> Result<PidStat<'_>> {
    let line = text.trim_end();
    let Some((pid, comm, rest)) = split(line) else {
        bail!("line {line:?}: no `(comm)`");
    };
    let pid = u32::try_from(parse_u64(pid.trim(), line)?)
        .map_err(|_| anyhow::anyhow!("line {line:?}: pid out of range"))?;
    let mut fields = rest.split_ascii_whitespace();
    let Some(state) = fields.next().and_then(|s| s.chars().next()) else {
        bail!("line {line:?}: no state");
    };
    // `fields` now starts at ppid (index 1 counted from the state).
    let mut nth = |skip: usize| -> Result<u64> {
        match fields.nth(skip) {
            Some(f) => parse_u64(f, line),
            None => bail!("line {line:?}: truncated"),
        }
    };
    let utime = nth(UTIME - 1)?;
    let stime = nth(STIME - UTIME - 1)?;
    Ok(PidStat {
        pid,
        comm,
        state,
        utime,
        stime,
    })
}

/// What a process exporter reports of itself (the standard `process_*` metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessStat {
    /// CPU time in user and kernel mode, USER_HZ ticks.
    pub utime: u64,
    pub stime: u64,
    /// Start after boot, USER_HZ ticks.
    pub starttime: u64,
    /// Virtual memory size, bytes.
    pub vsize: u64,
    /// Resident set, pages.
    pub rss_pages: u64,
}

/// After `)`, counted from the state (field 3): starttime is field 22, vsize 23, rss 24.
const STARTTIME: usize = 19;

/// utime, stime, starttime, vsize and rss. Strict like [`parse`].
pub fn parse_process(text: &str) -> Result<ProcessStat> {
    let line = text.trim_end();
    let Some((_, _, rest)) = split(line) else {
        bail!("line {line:?}: no `(comm)`");
    };
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |i: usize| -> Result<u64> {
        match fields.get(i) {
            Some(f) => parse_u64(f, line),
            None => bail!("line {line:?}: truncated"),
        }
    };
    Ok(ProcessStat {
        utime: field(UTIME)?,
        stime: field(STIME)?,
        starttime: field(STARTTIME)?,
        vsize: field(STARTTIME + 1)?,
        rss_pages: field(STARTTIME + 2)?,
    })
}

/// (before `(`, comm, after `)`).
fn split(text: &str) -> Option<(&str, &str, &str)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    Some((
        text.get(..open)?,
        text.get(open + 1..close)?,
        text.get(close + 1..)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's `/proc/self/stat` of a `cat`, and a thread that named itself oddly.
    const CAT: &str = "28531 (cat) R 28524 28524 26233 0 -1 4194304 101 0 0 0 7 3 0 0 20 0 1 0 287015 3133440 408 18446744073709551615 94759167840256 94759167860137 140734440254640 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 94759167876144 94759167877760 94759937462272 140734440262370 140734440262390 140734440262390 140734440263659 0\n";
    const ODD: &str = "1234 (a (b) c) D 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 10 18446744073709551615";

    #[test]
    fn parses_fields_after_a_comm_with_spaces_and_parentheses() {
        assert_eq!(
            parse(CAT).unwrap(),
            PidStat {
                pid: 28531,
                comm: "cat",
                state: 'R',
                utime: 7,
                stime: 3
            }
        );
        let p = parse(ODD).unwrap();
        assert_eq!(
            (p.comm, p.state, p.utime, p.stime),
            ("a (b) c", 'D', 250, 50)
        );
        assert_eq!(parse("1 () S 0 0 0 0 0 0 0 0 0 0 1 2").unwrap().comm, "");
    }

    #[test]
    fn process_fields_for_the_process_metrics() {
        assert_eq!(
            parse_process(CAT).unwrap(),
            ProcessStat {
                utime: 7,
                stime: 3,
                starttime: 287015,
                vsize: 3133440,
                rss_pages: 408
            }
        );
        assert_eq!(parse_process(ODD).unwrap().rss_pages, 10);
        for bad in [
            "garbage",
            "1234 (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 100 1000",
            "1234 (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 1 0 100 1000 x",
        ] {
            assert_err_quotes(parse_process(bad), bad);
        }
    }

    #[test]
    fn comm_and_state_alone() {
        assert_eq!(comm_state(CAT), Some(("cat", 'R')));
        assert_eq!(comm_state(ODD), Some(("a (b) c", 'D')));
        // Truncated after the state: still enough for a walk.
        assert_eq!(comm_state("42 (sh (x)) D"), Some(("sh (x)", 'D')));
        for bad in [
            "garbage",
            "1 (init",
            "1 init) S",
            "1 )x( S",
            "1 (init)",
            "1 (init)   ",
        ] {
            assert_eq!(comm_state(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "garbage",
            "1234 (x) R 1",
            "1234 (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 250",
            "1234 (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 x 50",
            "1234 (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 -50",
            "x (x) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 50",
            "1234 (x)",
            "1 )x( R 1 1234 1234 0 -1 4194304 100 0 0 0 250 50",
        ] {
            assert_err_quotes(parse(bad), bad);
        }
    }
}
