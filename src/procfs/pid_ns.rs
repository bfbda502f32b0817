//! `/proc/<pid>/ns/<type>`: a symbolic link naming the namespace, `net:[4026531840]`.

use std::path::Path;

/// The inode of a namespace link's target text (`net:[4026531840]` → 4026531840).
pub fn inode(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The network namespace inode of a process under `proc_dir` (`/proc`), 0 if unknown.
pub fn net_inum(proc_dir: &Path, pid: u32) -> u64 {
    if pid == 0 {
        return 0;
    }
    std::fs::read_link(proc_dir.join(format!("{pid}/ns/net")))
        .ok()
        .and_then(|l| inode(l.to_str()?, "net"))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links() {
        assert_eq!(inode("net:[4026531840]", "net"), Some(4026531840));
        assert_eq!(inode("mnt:[4026531840]", "net"), None);
        assert_eq!(inode("net:[x]", "net"), None);
        assert_ne!(net_inum(Path::new("/proc"), std::process::id()), 0);
        assert_eq!(net_inum(Path::new("/proc"), 0), 0);
    }
}
