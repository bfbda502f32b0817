//! Pressure stall information (Documentation/accounting/psi.rst): `/proc/pressure/{cpu,memory,
//! io,irq}` and the cgroup2 `{cpu,memory,io}.pressure` files, which share the format:
//!
//! ```text
//! some avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! full avg10=0.00 avg60=0.00 avg300=0.00 total=0
//! ```
//!
//! (`full` for cpu only since 5.13, where it reads 0 at the system level).

use anyhow::{bail, Result};

use super::{parse_f64, parse_u64};

/// One line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PsiLine {
    /// `some` (at least one task stalled) or `full` (all non-idle tasks stalled).
    pub kind: &'static str,
    /// Percent of wall time stalled, averaged over 10, 60 and 300 s.
    pub avg: [f64; 3],
    /// Total stall time in µs.
    pub total_us: u64,
}

/// Every line, in the file's order. Strict: an unknown kind, a field that is not `key=value`,
/// a non-numeric value or a line without the three averages and the total is an error quoting
/// it. Unknown keys are ignored.
pub fn parse(text: &str) -> Result<Vec<PsiLine>> {
    let mut out = Vec::with_capacity(2);
    for line in text.lines() {
        if let Some(l) = parse_line(line)? {
            out.push(l);
        }
    }
    Ok(out)
}

/// The line of `kind` (`"some"` or `"full"`). Lenient: other lines are not looked at; a
/// missing or malformed line of `kind` is an error.
pub fn find(text: &str, kind: &str) -> Result<PsiLine> {
    let line = text
        .lines()
        .find(|l| l.split_ascii_whitespace().next() == Some(kind));
    match line {
        Some(line) => parse_line(line)?.ok_or_else(|| anyhow::anyhow!("no `{kind}` line")),
        None => bail!("no `{kind}` line"),
    }
}

/// `None` for a blank line.
fn parse_line(line: &str) -> Result<Option<PsiLine>> {
    let mut it = line.split_ascii_whitespace();
    let kind = match it.next() {
        None => return Ok(None),
        Some("some") => "some",
        Some("full") => "full",
        Some(k) => bail!("line {line:?}: unknown kind {k:?}"),
    };
    let mut avg = [f64::NAN; 3];
    let mut total = None;
    for f in it {
        let Some((k, v)) = f.split_once('=') else {
            bail!("line {line:?}: field {f:?} is not key=value");
        };
        match k {
            "avg10" => avg[0] = parse_f64(v, line)?,
            "avg60" => avg[1] = parse_f64(v, line)?,
            "avg300" => avg[2] = parse_f64(v, line)?,
            "total" => total = Some(parse_u64(v, line)?),
            _ => {}
        }
    }
    let Some(total_us) = total else {
        bail!("line {line:?}: no total");
    };
    if avg.iter().any(|a| a.is_nan()) {
        bail!("line {line:?}: missing averages");
    }
    Ok(Some(PsiLine {
        kind,
        avg,
        total_us,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/pressure/io (6.18) and a cgroup2 cpu.pressure of a busy container.
    const IO: &str = "some avg10=0.04 avg60=0.37 avg300=0.84 total=52722329\n\
                      full avg10=0.00 avg60=0.08 avg300=0.06 total=16431624\n";
    const CPU: &str = "some avg10=98.95 avg60=78.19 avg300=71.15 total=1061342282\n\
                       full avg10=12.50 avg60=3.00 avg300=0.50 total=123456\n";

    #[test]
    fn parses_both_lines() {
        let l = parse(IO).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].kind, "some");
        assert_eq!(l[0].avg, [0.04, 0.37, 0.84]);
        assert_eq!(l[0].total_us, 52722329);
        assert_eq!(l[1].kind, "full");
        assert_eq!(l[1].total_us, 16431624);
        // A kernel before 5.13: no `full` line for cpu.
        assert_eq!(
            parse("some avg10=1.00 avg60=2.00 avg300=3.00 total=4\n")
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn finds_one_kind() {
        assert_eq!(find(CPU, "some").unwrap().avg[0], 98.95);
        assert_eq!(find(CPU, "full").unwrap().avg, [12.5, 3.0, 0.5]);
        // Another kind's bad line is not looked at.
        let text = "some avg10=x\nfull avg10=1.00 avg60=0.00 avg300=0.00 total=7\n";
        assert_eq!(find(text, "full").unwrap().total_us, 7);
        for bad in [
            "",
            "full avg10=1.00 avg60=0.00 avg300=0.00 total=7\n",
            "some avg10=x avg60=1 avg300=1 total=1\n",
            "somewhat avg10=1 avg60=1 avg300=1 total=1\n",
        ] {
            assert!(find(bad, "some").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "some",
            "some avg10=1 avg60=1 avg300=1",
            "some avg10=x avg60=1 avg300=1 total=1",
            "some avg10 avg60=1 avg300=1 total=1",
            "half avg10=1 avg60=1 avg300=1 total=1",
            "some avg10=1 total=5",
            "some avg10=1 avg60=1 avg300=1 total=-5",
        ] {
            assert_err_quotes(parse(&format!("{bad}\n")), bad);
        }
    }
}
