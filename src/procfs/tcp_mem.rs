//! `/proc/sys/net/ipv4/tcp_mem`: `min pressure max`, in pages ([`super::page_size`]): below
//! `min` TCP does not regulate its memory, above `pressure` it moderates buffers, `max` is the
//! limit.

use anyhow::{bail, Context, Result};

/// [min, pressure, max]. Strict: other than three unsigned numbers is an error quoting the
/// text.
pub fn parse(text: &str) -> Result<[u64; 3]> {
    let mut it = text.split_ascii_whitespace();
    let (Some(min), Some(pressure), Some(max), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        bail!("expected 3 numbers, found {:?}", text.trim());
    };
    let num = |f: &str| {
        f.parse::<u64>()
            .with_context(|| format!("{:?}: {f:?} is not an unsigned integer", text.trim()))
    };
    Ok([num(min)?, num(pressure)?, num(max)?])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    #[test]
    fn parses_and_rejects() {
        // This machine's (24 GB) and a larger host's.
        assert_eq!(
            parse("287892\t383858\t575784\n").unwrap(),
            [287892, 383858, 575784]
        );
        assert_eq!(
            parse("188475\t251300\t376950\n").unwrap(),
            [188475, 251300, 376950]
        );
        for bad in ["", "1 2", "1 2 3 4", "1 x 3", "-1 2 3"] {
            assert_err_quotes(parse(bad), &format!("{bad:?}"));
        }
    }
}
