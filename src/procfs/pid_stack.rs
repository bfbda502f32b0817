//! `/proc/<pid>/stack` and `/proc/<pid>/task/<tid>/stack`: a task's kernel stack, innermost
//! frame first, one `[<address>] symbol+offset/size` line per frame (the address reads 0
//! without kptr_restrict rights).

/// The frames as the kernel names them, `symbol+0x10/0x20`, innermost first. Lenient: a line
/// without the `[<…>] ` prefix is taken whole; blank lines are skipped.
pub fn frames(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter_map(|l| {
        let f = l.split_once("] ").map(|(_, f)| f).unwrap_or(l).trim();
        (!f.is_empty()).then_some(f)
    })
}

/// `symbol+0x10` of a frame `symbol+0x10/0x20` (the function's size dropped).
pub fn without_size(frame: &str) -> &str {
    frame.split('/').next().unwrap_or(frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task blocked on a frozen filesystem, as root reads it (addresses hidden).
    const STACK: &str = "\
[<0>] percpu_rwsem_wait+0x10d/0x140
[<0>] mnt_want_write+0x8c/0xb0
[<0>] do_sys_openat2+0x6c/0xa0
[<0>] __x64_sys_openat+0x53/0xa0
[<0>] do_syscall_64+0x7b/0x820
[<0>] entry_SYSCALL_64_after_hwframe+0x76/0x7e
";

    #[test]
    fn frames_innermost_first() {
        let f: Vec<&str> = frames(STACK).collect();
        assert_eq!(f.len(), 6);
        assert_eq!(f[0], "percpu_rwsem_wait+0x10d/0x140");
        assert_eq!(f[5], "entry_SYSCALL_64_after_hwframe+0x76/0x7e");
        assert_eq!(without_size(f[1]), "mnt_want_write+0x8c");
        assert_eq!(without_size("schedule"), "schedule");
    }

    #[test]
    fn odd_lines_are_taken_as_they_are() {
        let f: Vec<&str> = frames("\n[<0>] \nno_prefix+0x1/0x2\n  \n").collect();
        assert_eq!(f, ["no_prefix+0x1/0x2"]);
        assert_eq!(frames("").count(), 0);
    }
}
