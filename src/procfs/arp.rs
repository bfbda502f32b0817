//! `/proc/net/arp` (and `/proc/<pid>/net/arp`, per network namespace): an `IP address …`
//! header, then one line per neighbour: IP address, HW type, Flags, HW address, Mask, Device.

use anyhow::{bail, Result};

/// The number of entries. Strict: a file without the `IP address` header, or an entry with
/// fewer than six fields, is an error quoting it.
pub fn count(text: &str) -> Result<u64> {
    let mut lines = text.lines();
    match lines.next() {
        Some(h) if h.starts_with("IP address") => {}
        _ => bail!("no `IP address` header"),
    }
    let mut n = 0;
    for l in lines {
        if l.trim().is_empty() {
            continue;
        }
        if l.split_ascii_whitespace().count() < 6 {
            bail!("line {l:?}: truncated");
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// This machine's /proc/net/arp (one neighbour), and one with an incomplete entry.
    const ARP: &str = "IP address       HW type     Flags       HW address            Mask     Device\n\
                       192.0.2.1        0x1         0x2         02:fc:00:00:00:05     *        eth0\n\
                       192.0.2.9        0x1         0x0         00:00:00:00:00:00     *        eth0\n";

    #[test]
    fn counts_entries() {
        assert_eq!(count(ARP).unwrap(), 2);
        assert_eq!(
            count(
                "IP address       HW type     Flags       HW address            Mask     Device\n"
            )
            .unwrap(),
            0
        );
    }

    #[test]
    fn malformed_text_is_an_error() {
        assert!(count("").is_err());
        assert!(count("foo\n").is_err());
        assert_err_quotes(count("IP address HW\n1.2.3.4 0x1\n"), "1.2.3.4 0x1");
    }
}
