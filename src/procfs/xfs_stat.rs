//! `/proc/fs/xfs/stat`: XFS's global statistics, one line per group, `name v1 v2 …` (unsigned
//! counters; the kernel's `xfs_stats` groups: `extent_alloc`, `ig`, `log`, `push_ail`, `buf`,
//! …). Strict: a line without values or with a value that is not an unsigned integer is an
//! error quoting the line.

use anyhow::{bail, Context, Result};

use super::parse_u64;

/// One group's counters, in the file's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group<'a> {
    pub name: &'a str,
    pub values: Vec<u64>,
}

pub fn parse(text: &str) -> Result<Vec<Group<'_>>> {
    let mut out = Vec::with_capacity(32);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut fields = line.split_ascii_whitespace();
        let Some(name) = fields.next() else { continue };
        let values = fields
            .map(|f| parse_u64(f, name))
            .collect::<Result<Vec<u64>>>()
            .with_context(|| format!("line {line:?}"))?;
        if values.is_empty() {
            bail!("line {line:?}: no values");
        }
        out.push(Group { name, values });
    }
    Ok(out)
}

/// The `i`th counter of group `name`, if the file has it (older kernels have fewer).
pub fn get(groups: &[Group<'_>], name: &str, i: usize) -> Option<u64> {
    groups
        .iter()
        .find(|g| g.name == name)?
        .values
        .get(i)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::assert_err_quotes;

    /// The head of a busy XFS host's /proc/fs/xfs/stat (made up, in the 6.x layout).
    const STAT: &str = "extent_alloc 4260849 125170297 4618726 131131897\n\
abt 0 0 0 0\n\
ig 5032361 4997211 12 35150 0 35136 81064\n\
log 1372862 18962802 0 1447931 1365\n\
push_ail 2830217 7 1103052 0 91227 138 21 41 0 18\n\
buf 9876543 12345 9800000 4321 77 0 0 0 6543\n\
xpc 480216006656 3108209381621 4104286541589\n\
defer_relog 0\n";

    #[test]
    fn parses_every_group() {
        let g = parse(STAT).unwrap();
        assert_eq!(g.len(), 8);
        assert_eq!(g[0].name, "extent_alloc");
        assert_eq!(g[0].values, [4260849, 125170297, 4618726, 131131897]);
        assert_eq!(get(&g, "ig", 3), Some(35150));
        assert_eq!(get(&g, "push_ail", 1), Some(7));
        assert_eq!(get(&g, "xpc", 2), Some(4104286541589));
        assert_eq!(get(&g, "buf", 9), None);
        assert_eq!(get(&g, "qm", 0), None);
        assert!(parse("").unwrap().is_empty());
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for bad in ["ig 1 2 x", "log", "buf -1"] {
            assert_err_quotes(parse(bad), bad);
        }
    }
}
