//! `/proc/net/sockstat` (and `/proc/<pid>/net/sockstat`, per network namespace): one
//! `PROTO: key value key value …` line per protocol. `mem` values are in pages
//! ([`super::page_size`]); `FRAG: memory` is in bytes.

use anyhow::{bail, Result};

use super::parse_u64;

/// One `key value` pair of a protocol's line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// `sockets`, `TCP`, `UDP`, `UDPLITE`, `RAW`, `FRAG`.
    pub proto: &'a str,
    /// `used`, `inuse`, `orphan`, `tw`, `alloc`, `mem`, `memory`.
    pub key: &'a str,
    pub value: u64,
}

/// Every pair, in the file's order. Strict: a line without `PROTO:`, with an odd number of
/// fields, no fields or a non-numeric value is an error quoting it.
pub fn parse(text: &str) -> Result<Vec<Entry<'_>>> {
    let mut out = Vec::with_capacity(16);
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((proto, rest)) = line.split_once(':') else {
            bail!("line {line:?}: no `PROTO:`");
        };
        if proto.is_empty() || proto.contains(char::is_whitespace) {
            bail!("line {line:?}: expected `PROTO: key value ...`");
        }
        let mut it = rest.split_ascii_whitespace();
        let mut pairs = 0;
        while let Some(key) = it.next() {
            let Some(v) = it.next() else {
                bail!("line {line:?}: {key:?} has no value");
            };
            out.push(Entry {
                proto,
                key,
                value: parse_u64(v, line)?,
            });
            pairs += 1;
        }
        if pairs == 0 {
            bail!("line {line:?}: expected `PROTO: key value ...`");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/net/sockstat (6.18), with some TCP load added.
    const SOCKSTAT: &str = "\
sockets: used 25
TCP: inuse 4 orphan 1 tw 12 alloc 6 mem 3
UDP: inuse 2 mem 1
UDPLITE: inuse 0
RAW: inuse 0
FRAG: inuse 0 memory 0
";

    #[test]
    fn parses_every_pair() {
        let e = parse(SOCKSTAT).unwrap();
        assert_eq!(e.len(), 12);
        assert_eq!(
            e[0],
            Entry {
                proto: "sockets",
                key: "used",
                value: 25
            }
        );
        assert_eq!(
            e[5],
            Entry {
                proto: "TCP",
                key: "mem",
                value: 3
            }
        );
        assert_eq!((e[11].proto, e[11].key), ("FRAG", "memory"));
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "sockets used 14",
            "TCP: inuse",
            "TCP: inuse x",
            "TCP: inuse 1 orphan",
            "TCP:",
            "T CP: inuse 1",
            ": inuse 1",
            "TCP: inuse -1",
        ] {
            assert_err_quotes(parse(&format!("sockets: used 1\n{bad}\n")), bad);
        }
    }
}
