//! What a tracer needs from the machine, and whether this machine has it. The same reasons go
//! to `bianque check`, `GET /tracers` and the `inactive` status.

use std::path::Path;
use std::sync::OnceLock;

use crate::bpf::btf;
use crate::host::HostRoot;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Loading BPF needs root (CAP_BPF + CAP_PERFMON).
    Root,
    /// Kernel BTF at /sys/kernel/btf/vmlinux (CO-RE, tp_btf).
    Btf,
    /// A tracepoint usable from `tp_btf`/`raw_tp` (checked in BTF: `btf_trace_<name>`).
    BtfTracepoint(&'static str),
    /// A classic tracepoint `group/name` (checked in tracefs).
    Tracepoint(&'static str, &'static str),
    /// A file under the host root, e.g. `proc/loadavg`.
    HostFile(&'static str),
    /// kprobes (a `kprobe` PMU); only optional variants may need it.
    Kprobes,
}

impl Requirement {
    /// `Err(reason)` when this machine does not meet the requirement.
    pub fn check(&self, host: &HostRoot) -> Result<(), String> {
        match *self {
            Requirement::Root => {
                // SAFETY: geteuid has no preconditions and cannot fail.
                let uid = unsafe { libc::geteuid() };
                if uid == 0 {
                    Ok(())
                } else {
                    Err(format!("needs root to load BPF (running as uid {uid})"))
                }
            }
            Requirement::Btf => {
                if Path::new(btf::VMLINUX_BTF).exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "no kernel BTF at {} (CONFIG_DEBUG_INFO_BTF=n)",
                        btf::VMLINUX_BTF
                    ))
                }
            }
            Requirement::BtfTracepoint(name) => match kernel_btf() {
                Ok(b) if b.has_tracepoint(name) => Ok(()),
                Ok(_) => Err(format!("tracepoint {name} does not exist in this kernel")),
                Err(e) => Err(e.clone()),
            },
            Requirement::Tracepoint(group, name) => {
                let dir = crate::bpf::tracefs_dir()
                    .map_err(|e| format!("tracepoint {group}/{name}: {e}"))?;
                if dir.join("events").join(group).join(name).exists() {
                    Ok(())
                } else {
                    Err(format!(
                        "tracepoint {group}/{name} does not exist in this kernel"
                    ))
                }
            }
            Requirement::HostFile(rel) => {
                let p = host.root().join(rel);
                if p.exists() {
                    Ok(())
                } else {
                    Err(format!("{} does not exist", p.display()))
                }
            }
            Requirement::Kprobes => {
                if Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                    Ok(())
                } else {
                    Err("kprobes are not available (no kprobe PMU in /sys/bus/event_source/devices)".into())
                }
            }
        }
    }
}

/// The first unmet requirement's reason, if any.
pub fn check_all(reqs: &[Requirement], host: &HostRoot) -> Result<(), String> {
    reqs.iter().try_for_each(|r| r.check(host))
}

/// The running kernel's BTF, parsed once.
fn kernel_btf() -> &'static Result<btf::KernelBtf, String> {
    static BTF: OnceLock<Result<btf::KernelBtf, String>> = OnceLock::new();
    BTF.get_or_init(|| btf::KernelBtf::load().map_err(|e| format!("cannot read kernel BTF: {e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_reason_names_the_path() {
        let host = HostRoot::new("/nonexistent-root");
        let err = Requirement::HostFile("proc/loadavg")
            .check(&host)
            .unwrap_err();
        assert!(err.contains("/nonexistent-root/proc/loadavg"), "{err}");
    }

    #[test]
    fn this_kernel_has_kfree_skb_and_no_bogus_tracepoint() {
        let host = HostRoot::default();
        assert_eq!(Requirement::BtfTracepoint("kfree_skb").check(&host), Ok(()));
        let err = Requirement::BtfTracepoint("no_such_tp_xyz")
            .check(&host)
            .unwrap_err();
        assert!(err.contains("no_such_tp_xyz"), "{err}");
    }
}
