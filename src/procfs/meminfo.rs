//! `/proc/meminfo`: one `Key:   value [kB]` line per field (proc(5)). Most values are in kB;
//! the `HugePages_*` counts have no unit.

use anyhow::{bail, Result};

use super::parse_u64;

/// One line of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// The file's own name (`MemTotal`, `Active(anon)`, `HugePages_Total`).
    pub key: &'a str,
    /// Bytes when the line had `kB`, else the bare count.
    pub value: u64,
    /// Whether the line had `kB` (the value is then in bytes).
    pub kb: bool,
}

/// Every line, in the file's order. Strict: a malformed line (no `key:`, no value, a unit other
/// than `kB`, a key with spaces, extra fields) is an error that quotes it.
pub fn parse(text: &str) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::with_capacity(64);
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        out.push(parse_line(line)?);
    }
    Ok(out)
}

/// The value of `key` in bytes (or the bare count for a line without `kB`). Lenient: other
/// lines are not looked at; a missing or malformed `key` line is an error.
pub fn bytes(text: &str, key: &str) -> Result<u64> {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')));
    match line {
        Some(line) => Ok(parse_line(line)?.value),
        None => bail!("no {key} in meminfo"),
    }
}

fn parse_line(line: &str) -> Result<Field<'_>> {
    let Some((key, rest)) = line.split_once(':') else {
        bail!("line {line:?}: no `key:`");
    };
    let mut it = rest.split_ascii_whitespace();
    let Some(v) = it.next() else {
        bail!("line {line:?}: no value");
    };
    let v = parse_u64(v, line)?;
    let kb = match it.next() {
        None => false,
        Some("kB") => true,
        Some(u) => bail!("line {line:?}: unknown unit {u:?}"),
    };
    if it.next().is_some() || key.is_empty() || key.contains(char::is_whitespace) {
        bail!("line {line:?}: malformed");
    }
    Ok(Field {
        key,
        value: if kb { v.saturating_mul(1024) } else { v },
        kb,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// The head and tail of this machine's /proc/meminfo (6.18, x86_64, no swap).
    const MEMINFO: &str = "\
MemTotal:       24683584 kB
MemFree:          736584 kB
MemAvailable:   18852092 kB
Active(anon):       1132 kB
Inactive(anon):  5195008 kB
SUnreclaim:        90728 kB
NFS_Unstable:          0 kB
VmallocTotal:   34359738367 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
DirectMap1G:    25165824 kB
";

    #[test]
    fn parses_every_line() {
        let m = parse(MEMINFO).unwrap();
        assert_eq!(m.len(), 12);
        assert_eq!(
            m[0],
            Field {
                key: "MemTotal",
                value: 24683584 * 1024,
                kb: true
            }
        );
        assert_eq!(m[3].key, "Active(anon)");
        assert_eq!(m[7].value, 34359738367 * 1024);
        assert_eq!(
            m[8],
            Field {
                key: "HugePages_Total",
                value: 0,
                kb: false
            }
        );
    }

    #[test]
    fn looks_up_one_field() {
        assert_eq!(bytes(MEMINFO, "MemTotal").unwrap(), 24683584 * 1024);
        assert_eq!(bytes(MEMINFO, "Inactive(anon)").unwrap(), 5195008 * 1024);
        // `Hugepagesize` must not match `HugePages_…`, nor `MemFree` match `MemFreeX`.
        assert_eq!(bytes(MEMINFO, "Hugepagesize").unwrap(), 2048 * 1024);
        assert!(bytes("MemFreeX: 1 kB\n", "MemFree").is_err());
        assert_err_quotes(bytes(MEMINFO, "Shmem"), "no Shmem");
        // Other malformed lines do not matter; the wanted one does, and is named.
        assert_eq!(bytes("junk\nMemTotal: 5 kB\n", "MemTotal").unwrap(), 5120);
        assert_err_quotes(bytes("MemTotal: x kB\n", "MemTotal"), "MemTotal: x kB");
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in [
            "MemTotal 1 kB\n",
            "MemTotal:\n",
            "MemTotal: x kB\n",
            "MemTotal: 1 MB\n",
            "MemTotal: 1 kB x\n",
            "Mem Total: 1 kB\n",
            ": 1 kB\n",
            "MemTotal: -1 kB\n",
        ] {
            let text = format!("MemFree: 1 kB\n{bad}");
            assert_err_quotes(parse(&text), bad.trim_end());
        }
    }
}
