//! `/proc/<pid>/statm`: `size resident shared text lib data dt`, in pages
//! ([`super::page_size`]).

/// The resident set size in pages. Lenient: `None` when the second field is missing or not a
/// number (a process that exited while being read).
pub fn resident_pages(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_set() {
        // This machine's `cat`.
        assert_eq!(resident_pages("765 409 381 5 0 123 0\n"), Some(409));
        assert_eq!(resident_pages("100 25 3 1 0 10 0\n"), Some(25));
        for bad in ["", "765", "765 x 381"] {
            assert_eq!(resident_pages(bad), None, "{bad:?}");
        }
    }
}
