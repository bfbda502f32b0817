//! `/proc/diskstats`: one line per block device, `major minor name` then its counters
//! (Documentation/admin-guide/iostats.rst): 11 up to 4.17, 15 with discards (4.18+), 17 with
//! flushes (5.5+).

use anyhow::{bail, Result};

use super::parse_u64;

/// One line; counters a kernel lacks are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskStats<'a> {
    pub major: u32,
    pub minor: u32,
    pub name: &'a str,
    /// The 17 counters after the name, in kernel order: reads completed, reads merged, sectors
    /// read, ms reading, writes completed, writes merged, sectors written, ms writing, I/Os in
    /// progress, ms doing I/O, weighted ms; discards completed, merged, sectors, ms; flushes
    /// completed, ms.
    pub f: [u64; 17],
    /// How many counters the line had.
    pub fields: usize,
}

/// Every device. Strict: a line with a non-numeric or out-of-range field, or fewer than 11
/// counters, is an error quoting it; counters past the 17th are ignored.
pub fn parse(text: &str) -> Result<Vec<DiskStats<'_>>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_ascii_whitespace();
        let Some(major) = it.next() else { continue };
        let (Some(minor), Some(name)) = (it.next(), it.next()) else {
            bail!("line {line:?}: truncated");
        };
        let mut d = DiskStats {
            major: device_number(major, line)?,
            minor: device_number(minor, line)?,
            name,
            ..Default::default()
        };
        for (slot, v) in d.f.iter_mut().zip(it) {
            *slot = parse_u64(v, line)?;
            d.fields += 1;
        }
        if d.fields < 11 {
            bail!("line {line:?}: {} counters, expected at least 11", d.fields);
        }
        out.push(d);
    }
    Ok(out)
}

/// (major, minor, name) of each device, for naming device numbers. Lenient: the counters are
/// not looked at, and a line whose first three fields are not `number number name` is skipped.
pub fn devices(text: &str) -> impl Iterator<Item = (u32, u32, &str)> {
    text.lines().filter_map(|line| {
        let mut it = line.split_ascii_whitespace();
        let (major, minor, name) = (it.next()?, it.next()?, it.next()?);
        Some((major.parse().ok()?, minor.parse().ok()?, name))
    })
}

fn device_number(field: &str, line: &str) -> Result<u32> {
    let v = parse_u64(field, line)?;
    u32::try_from(v).map_err(|_| anyhow::anyhow!("line {line:?}: device number {v} out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// Lines of this machine's /proc/diskstats (6.18: 17 counters), and a 4.x-era line (11).
    const DISKSTATS: &str = "   7       0 loop0 139 0 2798 42 91 79 58170 59 0 88 140 2 0 131074 4 23 33
   7       1 loop1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
 254       0 vda 308935 16661 20025922 300643 156702 101464 236122096 1899368 0 109268 2247785 36915 45 169647080 47364 3889 409
 253       0 zram0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 1 2 3 4 5 6 7 8 9 10 11
";

    #[test]
    fn parses_old_and_new_formats() {
        let d = parse(DISKSTATS).unwrap();
        assert_eq!(d.len(), 5);
        assert_eq!(d[2].name, "vda");
        assert_eq!((d[2].major, d[2].minor), (254, 0));
        assert_eq!(d[2].f[2], 20025922);
        assert_eq!(d[2].f[9], 109268);
        assert_eq!(d[2].f[16], 409);
        assert_eq!(d[2].fields, 17);
        assert_eq!(d[4].fields, 11);
        assert_eq!(d[4].f[10], 11);
        assert_eq!(d[4].f[11..], [0; 6]);
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "8 0",
            "8 0 sda 1 2 3",
            "x 0 sda 1 2 3 4 5 6 7 8 9 10 11",
            "8 0 sda 1 2 3 4 5 6 7 8 9 10 x",
            "8 0 sda 1 2 3 4 5 6 7 8 -9 10 11",
            "4294967296 0 sda 1 2 3 4 5 6 7 8 9 10 11",
        ] {
            assert_err_quotes(parse(&format!("{bad}\n")), bad);
        }
    }

    #[test]
    fn device_names_skip_what_they_cannot_read() {
        let d: Vec<_> = devices("   7       0 loop0 0 0\n 254 1 vda1 1 2\nbad\nx 1 y\n").collect();
        assert_eq!(d, [(7, 0, "loop0"), (254, 1, "vda1")]);
        assert_eq!(devices(DISKSTATS).count(), 5);
    }
}
