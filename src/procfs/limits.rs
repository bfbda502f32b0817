//! `/proc/<pid>/limits`: a header, then one row per resource, `Limit  Soft Limit  Hard Limit
//! Units`, columns aligned with spaces (the limit names hold spaces: `Max open files`). A value
//! is a number or `unlimited`. Lenient: rows it cannot read are skipped (callers ask for one).

/// A soft or hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Value(u64),
    Unlimited,
}

/// The (soft, hard) limits of the resource named `name` (`Max open files`), if listed.
pub fn find(text: &str, name: &str) -> Option<(Limit, Limit)> {
    text.lines().skip(1).find_map(|line| {
        let rest = line.strip_prefix(name)?;
        // The name must end here: `Max open files` is not `Max open filesystems`.
        if !rest.starts_with(' ') {
            return None;
        }
        let mut cols = rest.split_ascii_whitespace();
        let value = |s: Option<&str>| match s? {
            "unlimited" => Some(Limit::Unlimited),
            n => n.parse().ok().map(Limit::Value),
        };
        Some((value(cols.next())?, value(cols.next())?))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The head of this machine's `/proc/self/limits` (6.18).
    const LIMITS: &str =
        "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max file size             unlimited            unlimited            bytes     \n\
Max processes             15471                15471                processes \n\
Max open files            1024                 524288               files     \n\
Max address space         unlimited            unlimited            bytes     \n\
Max nice priority         0                    0                    \n";

    #[test]
    fn finds_a_resource_by_its_full_name() {
        assert_eq!(
            find(LIMITS, "Max open files"),
            Some((Limit::Value(1024), Limit::Value(524288)))
        );
        assert_eq!(
            find(LIMITS, "Max address space"),
            Some((Limit::Unlimited, Limit::Unlimited))
        );
        assert_eq!(
            find(LIMITS, "Max nice priority"),
            Some((Limit::Value(0), Limit::Value(0)))
        );
        assert_eq!(find(LIMITS, "Max open"), None);
        assert_eq!(find(LIMITS, "Max locked memory"), None);
        assert_eq!(
            find("Limit\nMax open files  x  1\n", "Max open files"),
            None
        );
        assert_eq!(find("", "Max open files"), None);
    }
}
