//! A cgroup hierarchy as a tree of directories: every cgroup with its id (the directory's
//! inode, what BPF programs see as a cgroup id) and path, and a cgroup's processes.

use std::collections::HashMap;
use std::path::Path;

/// Cgroups deeper than this below the root are not walked.
const MAX_DEPTH: usize = 32;

/// Every cgroup directory under the hierarchy `root` (the root included, as `/`): inode → path
/// relative to `root`, starting with `/`. Inodes come from the directory entries themselves, so
/// the walk costs no stat per cgroup.
pub fn walk(root: &Path) -> HashMap<u64, String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = HashMap::new();
    if let Ok(meta) = std::fs::metadata(root) {
        out.insert(meta.ino(), "/".into());
    }
    walk_below(root, root, &mut out, 0);
    out
}

fn walk_below(root: &Path, dir: &Path, out: &mut HashMap<u64, String>, depth: usize) {
    use std::os::unix::fs::DirEntryExt;
    if depth > MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            out.insert(e.ino(), rel);
            walk_below(root, &path, out, depth + 1);
        }
    }
}

/// The lowest pid in a cgroup's `cgroup.procs` (a container's init process), 0 if none.
pub fn first_pid(dir: &Path) -> u32 {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .ok()
        .and_then(|t| lowest_pid(&t))
        .unwrap_or(0)
}

/// The lowest pid of a `cgroup.procs` text (one pid a line).
pub fn lowest_pid(procs: &str) -> Option<u32> {
    procs.lines().filter_map(|l| l.trim().parse().ok()).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_tree_with_inodes_and_relative_paths() {
        use std::os::unix::fs::MetadataExt;
        let root = std::env::temp_dir().join(format!("bq-cgtree-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::create_dir_all(root.join("c")).unwrap();
        std::fs::write(root.join("a/cgroup.procs"), "42\n7\n").unwrap();
        let tree = walk(&root);
        let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
        assert_eq!(tree.len(), 4);
        assert_eq!(tree[&ino("")], "/");
        assert_eq!(tree[&ino("a/b")], "/a/b");
        assert_eq!(tree[&ino("c")], "/c");
        assert_eq!(first_pid(&root.join("a")), 7);
        assert_eq!(first_pid(&root.join("c")), 0);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(lowest_pid("x\n\n"), None);
    }
}
