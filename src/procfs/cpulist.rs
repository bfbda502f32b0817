//! The kernel's CPU list format (`0-3,8,10-11`): `/sys/devices/system/cpu/online`, cgroup
//! `cpuset.cpus`.

/// The CPUs of a list, in the list's order; `None` if any part is malformed (`3-1`, `a`, `1,,2`)
/// or the list is empty.
pub fn parse(text: &str) -> Option<Vec<u32>> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u32 = a.trim().parse().ok()?;
                let b: u32 = b.trim().parse().ok()?;
                if b < a {
                    return None;
                }
                // Bounded: a corrupt list must not allocate billions of entries.
                out.extend(a..=b.min(a.saturating_add(65_535)));
            }
            None => out.push(part.trim().parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        assert_eq!(parse("0-3,8,10-11\n").map(|v| v.len()), Some(7));
        assert_eq!(parse("1"), Some(vec![1]));
        assert_eq!(parse("0-1,4"), Some(vec![0, 1, 4]));
        for bad in ["", "a", "3-1", "1-", "1,,2"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
