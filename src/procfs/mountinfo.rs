//! `/proc/<pid>/mountinfo`: one mount per line,
//! `<id> <parent> <maj:min> <root> <mount point> <options> [optional…] - <fstype> <source> <super options>`.

use std::borrow::Cow;

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

/// One line's fields as they stand in the text (nothing allocated), for readers that run at
/// every scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountLine<'a> {
    /// With the kernel's octal escapes; [`MountLine::mount_point`] decodes them.
    pub mount_point_escaped: &'a str,
    /// Comma-separated per-mount options.
    pub options: &'a str,
    pub fstype: &'a str,
    /// Comma-separated filesystem options (empty if the line has none).
    pub super_options: &'a str,
}

impl<'a> MountLine<'a> {
    /// The mount point, escapes decoded (borrowed when it has none).
    pub fn mount_point(&self) -> Cow<'a, str> {
        if self.mount_point_escaped.contains('\\') {
            Cow::Owned(unescape(self.mount_point_escaped))
        } else {
            Cow::Borrowed(self.mount_point_escaped)
        }
    }

    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

impl From<MountLine<'_>> for Mount {
    fn from(l: MountLine<'_>) -> Mount {
        let list = |s: &str| {
            if s.is_empty() {
                Vec::new()
            } else {
                s.split(',').map(str::to_string).collect()
            }
        };
        Mount {
            mount_point: l.mount_point().into_owned(),
            options: list(l.options),
            fstype: l.fstype.to_string(),
            super_options: list(l.super_options),
        }
    }
}

/// Every mount, in the file's order (a later mount on the same point hides an earlier one).
/// A malformed line is an error that quotes it.
pub fn parse(text: &str) -> Result<Vec<Mount>> {
    lines(text).map(|l| l.map(Mount::from)).collect()
}

/// The mounts of the lines that parse; a malformed line is skipped (for readers that only
/// look for one kind of mount).
pub fn parse_lenient(text: &str) -> Vec<Mount> {
    lines(text)
        .filter_map(Result::ok)
        .map(Mount::from)
        .collect()
}

/// Each non-blank line, borrowed; a malformed line is an `Err` that quotes it (the caller
/// picks strict or lenient).
pub fn lines(text: &str) -> impl Iterator<Item = Result<MountLine<'_>>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
}

fn parse_line(line: &str) -> Result<MountLine<'_>> {
    let Some((left, right)) = line.split_once(" - ") else {
        bail!("line {line:?}: no ` - ` separator");
    };
    let mut f = left.split_ascii_whitespace();
    let (Some(id), Some(_parent), Some(dev), Some(_root), Some(mount_point), Some(options)) =
        (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        bail!("line {line:?}: truncated");
    };
    let mut r = right.split_ascii_whitespace();
    let (Some(fstype), Some(_source)) = (r.next(), r.next()) else {
        bail!("line {line:?}: truncated");
    };
    if id.parse::<u64>().is_err() || !dev.contains(':') || !mount_point.starts_with('/') {
        bail!("line {line:?}: malformed");
    }
    Ok(MountLine {
        mount_point_escaped: mount_point,
        options,
        fstype,
        super_options: r.next().unwrap_or(""),
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
    use crate::procfs::assert_err_quotes;

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
            assert_err_quotes(parse(bad), bad.trim_end());
            let text = format!("{bad}27 1 254:0 / / rw - ext4 /dev/vda rw\n");
            assert_eq!(parse_lenient(&text).len(), 1, "{bad:?}");
        }
    }

    #[test]
    fn borrowed_lines_decode_only_what_is_escaped() {
        // A line of this machine's /proc/self/mountinfo, a blank line, and a mount point with a
        // space.
        let text = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                    \n\
                    28 27 0:25 / /mnt/a\\040b ro,nosuid shared:1 - tmpfs x\n";
        let l: Vec<MountLine> = lines(text).collect::<Result<_>>().unwrap();
        assert_eq!(l.len(), 2);
        assert!(matches!(
            l[0].mount_point(),
            Cow::Borrowed("/sys/fs/cgroup")
        ));
        assert!(!l[0].read_only());
        assert_eq!(l[0].super_options, "rw,mode=755");
        assert_eq!(l[1].mount_point(), "/mnt/a b");
        assert!(l[1].read_only());
        assert_eq!(l[1].super_options, "");
        assert_eq!(Mount::from(l[1]).super_options, Vec::<String>::new());
        let bad: Vec<bool> = lines("27 1 254:0 / / rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n")
            .map(|l| l.is_ok())
            .collect();
        assert_eq!(bad, [false, true]);
    }
}
