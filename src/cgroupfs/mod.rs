//! The kernel's cgroup files and interfaces, v1 and v2: pure parsers of the files a cgroup
//! directory holds, where the hierarchies are mounted, and the taskstats netlink query of a
//! cgroup's task states. Fixture-tested, shared by every tracer that reads a cgroup.

pub mod taskstats;
