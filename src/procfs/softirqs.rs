//! `/proc/softirqs`: a header naming the CPUs (`CPU0 CPU1 …`), then one `TYPE: n n …` line per
//! softirq type with a count per CPU.

use anyhow::{bail, Result};

use super::parse_u64;

/// (type, count summed over CPUs), in the file's order. Strict: a line without `TYPE:`, with a
/// non-numeric count, or with another number of columns than the header has CPUs is an error
/// quoting it; so is an empty file.
pub fn parse(text: &str) -> Result<Vec<(&str, u64)>> {
    let mut out = Vec::with_capacity(10);
    let mut lines = text.lines();
    let cpus = match lines.next() {
        Some(h) => h.split_ascii_whitespace().count(),
        None => bail!("empty file"),
    };
    for line in lines {
        let Some((name, rest)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            bail!("line {line:?}: no `TYPE:`");
        };
        let mut sum = 0u64;
        let mut n = 0;
        for f in rest.split_ascii_whitespace() {
            sum = sum.wrapping_add(parse_u64(f, line)?);
            n += 1;
        }
        if n != cpus {
            bail!("line {line:?}: {n} columns for {cpus} CPUs");
        }
        out.push((name.trim(), sum));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/softirqs (6.18, 2 CPUs; the header ends in spaces).
    const SOFTIRQS: &str = concat!(
        "                    CPU0       CPU1       \n",
        "          HI:          0          0
       TIMER:      80377      88132
      NET_TX:          8         22
      NET_RX:      28570    1546839
       BLOCK:        155     231635
    IRQ_POLL:          0          0
     TASKLET:        173          6
       SCHED:      82209      80285
     HRTIMER:          9          1
         RCU:     239962     247243
"
    );

    #[test]
    fn sums_each_type_over_cpus() {
        let s = parse(SOFTIRQS).unwrap();
        assert_eq!(s.len(), 10);
        assert_eq!(s[0], ("HI", 0));
        assert_eq!(s[3], ("NET_RX", 28570 + 1546839));
        assert_eq!(s[9], ("RCU", 239962 + 247243));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        assert!(parse("").is_err());
        for (bad, named) in [
            ("  CPU0 CPU1\n HI: 1\n", " HI: 1"),
            (" CPU0\n HI: x\n", " HI: x"),
            (" CPU0\n HI 1\n", " HI 1"),
            (" CPU0\n HI: 1 2\n", " HI: 1 2"),
        ] {
            assert_err_quotes(parse(bad), named);
        }
    }
}
