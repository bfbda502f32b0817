//! `/proc/uptime`: `5441.36 1633.32`: seconds since boot, and idle time summed over CPUs.

use anyhow::{Context, Result};

/// (uptime, idle) in seconds. Strict: a missing or non-numeric field is an error quoting the
/// text.
pub fn parse(text: &str) -> Result<(f64, f64)> {
    let mut fields = text.split_whitespace();
    let mut next = |what: &str| -> Result<f64> {
        let f = fields
            .next()
            .with_context(|| format!("{:?}: missing {what} field", text.trim()))?;
        f.parse()
            .with_context(|| format!("{:?}: {what} {f:?} is not a number", text.trim()))
    };
    Ok((next("uptime")?, next("idle")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    #[test]
    fn parses_proc_uptime() {
        // This machine's, and a long-running host's.
        assert_eq!(parse("5441.36 1633.32\n").unwrap(), (5441.36, 1633.32));
        assert_eq!(
            parse("350735.47 234388.90\n").unwrap(),
            (350735.47, 234388.90)
        );
    }

    #[test]
    fn rejects_malformed_text() {
        for bad in ["", "12.5", "a b", "1.0 x"] {
            assert_err_quotes(parse(bad), &format!("{bad:?}"));
        }
    }
}
