//! `/proc/<pid>/cgroup`: the task's cgroup in each hierarchy, one
//! `hierarchy-id:controller,list:/path` line per hierarchy (cgroups(7)); the cgroup2 line is
//! `0::/path`.

/// One line; the path may itself hold `:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership<'a> {
    pub hierarchy: &'a str,
    /// Comma-separated v1 controllers (`cpu,cpuacct`, `name=systemd`); empty for cgroup2.
    pub controllers: &'a str,
    pub path: &'a str,
}

impl Membership<'_> {
    pub fn has_controller(&self, controller: &str) -> bool {
        self.controllers.split(',').any(|c| c == controller)
    }

    pub fn is_v2(&self) -> bool {
        self.hierarchy == "0" && self.controllers.is_empty()
    }
}

/// Every line, in the file's order. Lenient: a line without two `:` is skipped.
pub fn parse(text: &str) -> impl Iterator<Item = Membership<'_>> {
    text.lines().filter_map(|l| {
        let mut it = l.splitn(3, ':');
        Some(Membership {
            hierarchy: it.next()?,
            controllers: it.next()?,
            path: it.next()?,
        })
    })
}

/// The path in the v1 hierarchy holding `controller`, else the cgroup2 path.
pub fn path_of<'a>(text: &'a str, controller: &str) -> Option<&'a str> {
    parse(text)
        .find(|m| m.has_controller(controller))
        .or_else(|| parse(text).find(Membership::is_v2))
        .map(|m| m.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A container's shell on a hybrid host (cpu and cpuacct co-mounted, as systemd mounts them),
    /// and a container's on a cgroup2-only host.
    const HYBRID: &str = "\
11:pids:/libpod_parent/libpod-4b1c0d2e
10:blkio:/libpod_parent/libpod-4b1c0d2e
9:memory:/libpod_parent/libpod-4b1c0d2e
3:cpu,cpuacct:/libpod_parent/libpod-4b1c0d2e
1:name=systemd:/
0::/libpod_parent/libpod-4b1c0d2e
";
    const UNIFIED: &str = "0::/system.slice/docker-1f2e.scope\n";

    #[test]
    fn lines_and_lookups() {
        let all: Vec<Membership> = parse(HYBRID).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[3].controllers, "cpu,cpuacct");
        assert!(all[3].has_controller("cpuacct"));
        assert!(!all[3].has_controller("cpuset"));
        assert!(all[5].is_v2());
        assert_eq!(
            path_of(HYBRID, "memory"),
            Some("/libpod_parent/libpod-4b1c0d2e")
        );
        assert_eq!(path_of(HYBRID, "name=systemd"), Some("/"));
        assert_eq!(
            path_of(UNIFIED, "memory"),
            Some("/system.slice/docker-1f2e.scope")
        );
    }

    #[test]
    fn odd_lines_are_skipped_and_paths_keep_their_colons() {
        let text = "garbage\n5:memory\n6:memory:/a:b\n";
        let all: Vec<Membership> = parse(text).collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].path, "/a:b");
        assert_eq!(path_of("7:cpu:/x\n", "memory"), None);
        assert_eq!(path_of("", "memory"), None);
    }
}
