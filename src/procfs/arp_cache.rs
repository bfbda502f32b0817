//! `/proc/net/stat/arp_cache`: a header of column names, then one row per CPU of hexadecimal
//! counters; `entries` (the neighbour table's size) is global, the same in every row.

use anyhow::{bail, Result};

/// `entries`, from the first row. Strict: no header, no `entries` column, no row, a short row
/// or a value that is not hexadecimal is an error.
pub fn entries(text: &str) -> Result<u64> {
    let mut lines = text.lines();
    let Some(head) = lines.next() else {
        bail!("empty");
    };
    let Some(col) = head.split_ascii_whitespace().position(|c| c == "entries") else {
        bail!("no `entries` column");
    };
    let Some(row) = lines.next() else {
        bail!("no data row");
    };
    let Some(v) = row.split_ascii_whitespace().nth(col) else {
        bail!("row {row:?}: truncated");
    };
    u64::from_str_radix(v, 16).map_err(|_| anyhow::anyhow!("row {row:?}: entries {v:?} is not hex"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's (6.18, 2 CPUs).
    const ARP_CACHE: &str = "\
entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs unresolved_discards table_fulls
00000003 0000000d 00000012 00000000   00000046 00000002 00000000   00000000         00000000         00000166         00000000       00000000            00000000
00000003 00000010 00000008 00000000   00000033 00000007 00000000   00000000         00000000         00000000         00000000       00000000            00000000
";

    #[test]
    fn reads_entries() {
        assert_eq!(entries(ARP_CACHE).unwrap(), 3);
        assert_eq!(entries("allocs entries\n1 0000000f\n").unwrap(), 15);
    }

    #[test]
    fn malformed_text_is_an_error() {
        for bad in [
            "",
            "allocs\n1\n",
            "entries\n",
            "entries allocs\nzz 1\n",
            "allocs entries\n1\n",
        ] {
            assert!(entries(bad).is_err(), "{bad:?}");
        }
        assert_err_quotes(entries("entries allocs\nzz 1\n"), "zz 1");
    }
}
