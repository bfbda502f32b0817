//! `/proc/net/dev` (and `/proc/<pid>/net/dev`, per network namespace): two header lines, then
//! `name: ` and 16 counters per interface: receive bytes, packets, errs, drop, fifo, frame,
//! compressed, multicast; transmit bytes, packets, errs, drop, fifo, colls, carrier,
//! compressed.

use anyhow::{bail, Result};

use super::parse_u64;

/// (interface, its 16 counters in kernel order), in the file's order. Strict: after the two
/// header lines, a line without `name:`, with an empty name, with other than 16 counters or
/// with a non-numeric one is an error quoting it.
pub fn parse(text: &str) -> Result<Vec<(&str, [u64; 16])>> {
    let mut out = Vec::new();
    for line in text.lines().skip(2) {
        if line.trim().is_empty() {
            continue;
        }
        let Some((name, rest)) = line.split_once(':') else {
            bail!("line {line:?}: no `device:`");
        };
        let mut v = [0u64; 16];
        let mut n = 0;
        for f in rest.split_ascii_whitespace() {
            if n >= 16 {
                bail!("line {line:?}: more than 16 counters");
            }
            v[n] = parse_u64(f, line)?;
            n += 1;
        }
        if n != 16 {
            bail!("line {line:?}: {n} counters, expected 16");
        }
        let name = name.trim();
        if name.is_empty() {
            bail!("line {line:?}: empty device name");
        }
        out.push((name, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    const HEAD: &str = "Inter-|   Receive                                                |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    #[test]
    fn parses_every_interface() {
        // This machine's, with a long veth name that runs into its counters.
        let t = format!(
            "{HEAD}    lo: 320933639 3209330    0    0    0     0          0         0 320933639 3209330    0    0    0     0       0          0\n  \
             eth0: 215622495    5892    0    0    0     0          0         0   272384    3020    0    0    0     0       0          0\n\
             bqh130240:     496       6    0    1    0     0          0         0      496       6    0    1    0     0       0          0\n  \
             eth1:1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16\n"
        );
        let d = parse(&t).unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d[0].0, "lo");
        assert_eq!(
            d[1],
            (
                "eth0",
                [215622495, 5892, 0, 0, 0, 0, 0, 0, 272384, 3020, 0, 0, 0, 0, 0, 0]
            )
        );
        assert_eq!(d[2].0, "bqh130240");
        assert_eq!(d[2].1[3], 1);
        assert_eq!(d[3].1[15], 16);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "eth0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
            "eth0: 1 2 3",
            "eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17",
            "eth0: 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 x",
            ": 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
        ] {
            assert_err_quotes(parse(&format!("{HEAD}{bad}\n")), bad);
        }
    }
}
