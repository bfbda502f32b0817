//! `/proc/loadavg`: `0.20 0.18 0.12 1/80 11206`: the 1, 5 and 15-minute load averages,
//! runnable/total tasks (threads) and the last pid allocated (proc(5)).

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadAvg {
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    /// Tasks running or on a run queue now.
    pub runnable: u64,
    /// Tasks (threads) that exist.
    pub tasks: u64,
}

/// Strict: fewer than four fields, or a field that is not a number (`running/total` for the
/// fourth), is an error quoting the text. The last pid is not read.
pub fn parse(text: &str) -> Result<LoadAvg> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.len() < 4 {
        bail!(
            "expected at least 4 fields, found {}: {:?}",
            fields.len(),
            text.trim()
        );
    }
    let load = |i: usize| {
        fields[i].parse::<f64>().with_context(|| {
            format!(
                "{:?}: field {} {:?} is not a number",
                text.trim(),
                i + 1,
                fields[i]
            )
        })
    };
    let Some((runnable, tasks)) = fields[3].split_once('/') else {
        bail!(
            "{:?}: field 4 {:?} is not running/total",
            text.trim(),
            fields[3]
        );
    };
    let count = |v: &str| {
        v.parse::<u64>()
            .with_context(|| format!("{:?}: task count {v:?} is not a number", text.trim()))
    };
    Ok(LoadAvg {
        load1: load(0)?,
        load5: load(1)?,
        load15: load(2)?,
        runnable: count(runnable)?,
        tasks: count(tasks)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    #[test]
    fn parses_real_format() {
        // This machine's /proc/loadavg during a build.
        assert_eq!(
            parse("2.56 4.08 4.88 4/126 13111\n").unwrap(),
            LoadAvg {
                load1: 2.56,
                load5: 4.08,
                load15: 4.88,
                runnable: 4,
                tasks: 126
            }
        );
        assert_eq!(parse("0.20 0.18 0.12 1/80 11206\n").unwrap().tasks, 80);
    }

    #[test]
    fn malformed_text_is_an_error_not_a_panic() {
        for bad in [
            "",
            "0.1 0.2",
            "x 0.2 0.3 1/2 3",
            "0.1 0.2 0.3 12 3",
            "0.1 0.2 0.3 a/2 3",
            "0.1 0.2 0.3 1/ 3",
            "\u{0}\u{0}",
        ] {
            assert_err_quotes(parse(bad), &format!("{:?}", bad.trim()));
        }
    }
}
