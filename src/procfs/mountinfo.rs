//! `/proc/<pid>/mountinfo`: one mount per line,
//! `<id> <parent> <maj:min> <root> <mount point> <options> [optional…] - <fstype> <source> <super options>`.

use anyhow::{bail, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it is mounted, with the kernel's octal escapes (`\040`) decoded.
    pub mount_point: String,
    /// Per-mount options (`ro`, `nosuid`…).
    pub options: Vec<String>,
    pub fstype: String,
    /// Filesystem options; for a v1 cgroup hierarchy they name its controllers.
    pub super_options: Vec<String>,
}

impl Mount {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

/// Every mount, in the file's order (a later mount on the same point hides an earlier one).
/// A malformed line is an error that quotes it.
pub fn parse(text: &str) -> Result<Vec<Mount>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

/// The mounts of the lines that parse; a malformed line is skipped (for readers that only
/// look for one kind of mount).
pub fn parse_lenient(text: &str) -> Vec<Mount> {
    text.lines().filter_map(|l| parse_line(l).ok()).collect()
}

fn parse_line(line: &str) -> Result<Mount> {
    let Some((left, right)) = line.split_once(" - ") else {
        bail!("line {line:?}: no ` - ` separator");
    };
    let f: Vec<&str> = left.split_ascii_whitespace().collect();
    let r: Vec<&str> = right.split_ascii_whitespace().collect();
    if f.len() < 6 || r.len() < 2 {
        bail!("line {line:?}: truncated");
    }
    if f[0].parse::<u64>().is_err() || !f[2].contains(':') || !f[4].starts_with('/') {
        bail!("line {line:?}: malformed");
    }
    let list = |s: &str| s.split(',').map(str::to_string).collect::<Vec<_>>();
    Ok(Mount {
        mount_point: unescape(f[4]),
        options: list(f[5]),
        fstype: r[0].to_string(),
        super_options: r.get(2).map(|s| list(s)).unwrap_or_default(),
    })
}

/// Decodes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_escapes() {
        let m = parse(
            "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
             28 27 0:25 / /mnt/a\\040b ro,nosuid shared:1 - tmpfs x ro\n\
             40 30 0:36 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n",
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].mount_point, "/");
        assert!(!m[0].read_only());
        assert_eq!(m[1].mount_point, "/mnt/a b");
        assert!(m[1].read_only());
        assert_eq!(m[2].fstype, "cgroup");
        assert_eq!(m[2].super_options, ["rw", "memory"]);
    }

    #[test]
    fn malformed_lines_are_errors_or_skipped() {
        for bad in [
            "27 1 254:0 / / rw,relatime ext4 /dev/vda rw\n",
            "27 1 254:0 / - ext4 /dev/vda rw\n",
            "x 1 254:0 / / rw - ext4 /dev/vda rw\n",
            "27 1 254:0 / / rw - ext4\n",
            "27 1 2540 / / rw - ext4 /dev/vda rw\n",
            "27 1 254:0 / mnt rw - ext4 /dev/vda rw\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
            let text = format!("{bad}27 1 254:0 / / rw - ext4 /dev/vda rw\n");
            assert_eq!(parse_lenient(&text).len(), 1, "{bad:?}");
        }
    }
}
