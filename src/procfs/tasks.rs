//! The walk over every task (thread) under `/proc`: `<proc>/<pid>/task/<tid>/stat`, for the
//! tracers that look for tasks in one state (D-state load, hung tasks). The one place in
//! procfs that reads files: a walk cannot be a function of one file's text.

use std::path::{Path, PathBuf};

use crate::host::file::read_optional;

use super::pid_stat;

/// A task found by the walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Its process (thread group).
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub state: char,
}

impl Task {
    /// `<proc>/<pid>/task/<tid>`, where the task's other files are (`stack`, `status`).
    pub fn dir(&self, proc_dir: &Path) -> PathBuf {
        proc_dir
            .join(self.pid.to_string())
            .join("task")
            .join(self.tid.to_string())
    }
}

/// Every task whose `stat` state is `state` (`'D'`), process by process, at most `max`.
/// `proc_dir` is `/proc` (under the host root). Entries that are not numbers, tasks that exit
/// during the walk and stat files that cannot be read or parsed are skipped.
pub fn in_state(proc_dir: &Path, state: char, max: usize) -> Vec<Task> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir(proc_dir) else {
        return out;
    };
    let mut buf = String::new();
    for p in procs.flatten() {
        let Some(pid) = number(&p.file_name()) else {
            continue;
        };
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            if out.len() >= max {
                return out;
            }
            let Some(tid) = number(&t.file_name()) else {
                continue;
            };
            if !matches!(read_optional(&t.path().join("stat"), &mut buf), Ok(true)) {
                continue;
            }
            if let Some((comm, s)) = pid_stat::comm_state(&buf) {
                if s == state {
                    out.push(Task {
                        pid,
                        tid,
                        comm: comm.to_string(),
                        state: s,
                    });
                }
            }
        }
    }
    out
}

fn number(name: &std::ffi::OsStr) -> Option<u32> {
    name.to_str()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A /proc with two processes: 10 (threads 10 sleeping, 11 in D) and 20 (one thread in D,
    /// named with a space), plus the entries a real /proc has that are not processes.
    fn fixture(root: &Path) {
        let task = |pid: u32, tid: u32, stat: &str| {
            let d = root.join(format!("{pid}/task/{tid}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("stat"), stat).unwrap();
        };
        task(10, 10, "10 (worker) S 1 10 10 0 -1 0 0 0 0 0 0 0 0 0\n");
        task(10, 11, "11 (worker io) D 1 10 10 0 -1 0 0 0 0 0 0 0 0 0\n");
        task(20, 20, "20 (a (b) c) D 1 20 20 0 -1 0 0 0 0 0 0 0 0 0\n");
        task(30, 30, "garbage\n");
        std::fs::create_dir_all(root.join("sys/kernel")).unwrap();
        std::fs::create_dir_all(root.join("40/task/notanumber")).unwrap();
        std::fs::write(root.join("meminfo"), "MemTotal: 1 kB\n").unwrap();
    }

    #[test]
    fn finds_the_tasks_in_a_state() {
        let root = std::env::temp_dir().join(format!("bq-tasks-{}", std::process::id()));
        fixture(&root);
        let mut d = in_state(&root, 'D', usize::MAX);
        d.sort_by_key(|t| t.tid);
        assert_eq!(
            d,
            vec![
                Task {
                    pid: 10,
                    tid: 11,
                    comm: "worker io".into(),
                    state: 'D'
                },
                Task {
                    pid: 20,
                    tid: 20,
                    comm: "a (b) c".into(),
                    state: 'D'
                },
            ]
        );
        assert_eq!(d[0].dir(&root), root.join("10/task/11"));
        assert_eq!(in_state(&root, 'D', 1).len(), 1);
        assert_eq!(in_state(&root, 'S', 10).len(), 1);
        assert!(in_state(&root.join("nope"), 'D', 10).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn this_machine_has_a_running_task() {
        // The test itself is running: the walk of the real /proc finds at least one R task.
        assert!(!in_state(Path::new("/proc"), 'R', usize::MAX).is_empty());
    }
}
