//! `/proc/net/netstat` and `/proc/net/snmp` (and their `/proc/<pid>/net/` copies, per network
//! namespace): pairs of lines, `Proto: Name Name …` then `Proto: value value …`. Values are
//! signed (`Tcp: MaxConn` is -1).

use anyhow::{bail, Context, Result};

use super::parse_i64;

/// One counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// `Ip`, `Tcp`, `TcpExt`, `IpExt`, `MPTcpExt`…
    pub proto: &'a str,
    pub name: &'a str,
    pub value: i64,
}

/// Every counter, in the file's order. Strict: a header without its value line, a pair whose
/// protocols differ or lack `Proto:`, a different number of names and values, or a value that
/// is not an integer is an error quoting the lines.
pub fn parse(text: &str) -> Result<Vec<Entry<'_>>> {
    let mut out = Vec::with_capacity(200);
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(head) = lines.next() {
        let Some(values) = lines.next() else {
            bail!("header {head:?} without a value line");
        };
        let (Some((p1, names)), Some((p2, vals))) = (head.split_once(':'), values.split_once(':'))
        else {
            bail!("line pair {head:?} / {values:?}: no `Proto:`");
        };
        if p1 != p2 || p1.is_empty() || p1.contains(char::is_whitespace) {
            bail!("line pair {head:?} / {values:?}: protocol mismatch {p1:?} / {p2:?}");
        }
        let (n_names, n_vals) = (
            names.split_ascii_whitespace().count(),
            vals.split_ascii_whitespace().count(),
        );
        if n_names != n_vals {
            bail!("line pair {head:?} / {values:?}: {n_names} names but {n_vals} values");
        }
        for (name, v) in names
            .split_ascii_whitespace()
            .zip(vals.split_ascii_whitespace())
        {
            out.push(Entry {
                proto: p1,
                name,
                value: parse_i64(v, name).with_context(|| format!("line {values:?}"))?,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// The head of this machine's /proc/net/snmp (6.18), and a Tcp pair with MaxConn -1.
    const SNMP: &str = "\
Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards InDelivers OutRequests OutDiscards OutNoRoutes ReasmTimeout ReasmReqds ReasmOKs ReasmFails FragOKs FragFails FragCreates OutTransmits
Ip: 2 64 3215491 0 0 0 0 0 3215488 3216517 3972 0 0 0 0 0 0 0 0 3216517
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens
Tcp: 1 200 120000 -1 31
";

    #[test]
    fn parses_header_and_value_pairs() {
        let e = parse(SNMP).unwrap();
        assert_eq!(e.len(), 25);
        assert_eq!(
            e[2],
            Entry {
                proto: "Ip",
                name: "InReceives",
                value: 3215491
            }
        );
        assert_eq!(
            (e[23].proto, e[23].name, e[23].value),
            ("Tcp", "MaxConn", -1)
        );
        let e = parse(
            "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 31\nUdp: InDatagrams\nUdp: 5\n",
        )
        .unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            (e[3].proto, e[3].name, e[3].value),
            ("Udp", "InDatagrams", 5)
        );
    }

    #[test]
    fn malformed_pairs_are_errors_naming_the_lines() {
        for (bad, named) in [
            ("Tcp: A B\n", "Tcp: A B"),
            ("Tcp: A B\nTcp: 1\n", "Tcp: 1"),
            ("Tcp: A\nUdp: 1\n", "Udp: 1"),
            ("Tcp: A\nTcp: x\n", "Tcp: x"),
            ("Tcp A\nTcp 1\n", "Tcp 1"),
            ("Tcp: A B\nTcp: 1 2 3\n", "Tcp: 1 2 3"),
        ] {
            assert_err_quotes(parse(bad), named);
        }
    }
}
