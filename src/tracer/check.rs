//! What a tracer needs from the machine, and whether this machine has it. The same reasons go
//! to `bianque check`, `GET /tracers` and the `inactive` status.

use std::path::Path;
use std::sync::OnceLock;

use crate::bpf::btf;
use crate::host::HostRoot;

/// A Linux capability the agent may need, checked in its effective set (capget), so the agent
/// runs as any user that holds the set (systemd `AmbientCapabilities=`, `setpriv`), not as uid 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Capability {
    /// Loading BPF programs, creating maps, reading BTF.
    Bpf,
    /// Tracing programs (tp_btf, raw_tp, perf_event), bpf_probe_read_kernel, perf_event_open
    /// on every CPU.
    Perfmon,
    /// Other users' `/proc/<pid>/{fd,io,maps,ns}` (PTRACE_MODE_READ).
    SysPtrace,
    /// Reading files and directories whatever their mode (tracefs, other users' binaries).
    DacReadSearch,
    /// `/dev/kmsg` under `kernel.dmesg_restrict=1`, real addresses in `/proc/kallsyms`.
    Syslog,
    /// `/proc/<pid>/stack`: the kernel allows it to CAP_SYS_ADMIN only.
    SysAdmin,
}

impl Capability {
    /// What `bianque check`, the README and the systemd unit call it.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Bpf => "CAP_BPF",
            Capability::Perfmon => "CAP_PERFMON",
            Capability::SysPtrace => "CAP_SYS_PTRACE",
            Capability::DacReadSearch => "CAP_DAC_READ_SEARCH",
            Capability::Syslog => "CAP_SYSLOG",
            Capability::SysAdmin => "CAP_SYS_ADMIN",
        }
    }

    fn to_caps(self) -> caps::Capability {
        match self {
            Capability::Bpf => caps::Capability::CAP_BPF,
            Capability::Perfmon => caps::Capability::CAP_PERFMON,
            Capability::SysPtrace => caps::Capability::CAP_SYS_PTRACE,
            Capability::DacReadSearch => caps::Capability::CAP_DAC_READ_SEARCH,
            Capability::Syslog => caps::Capability::CAP_SYSLOG,
            Capability::SysAdmin => caps::Capability::CAP_SYS_ADMIN,
        }
    }

    /// Whether this process holds it now (effective set). A failed capget counts as not held.
    pub fn held(self) -> bool {
        caps::has_cap(None, caps::CapSet::Effective, self.to_caps()).unwrap_or(false)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Capabilities without which the tracer cannot run (all missing ones are named).
    Caps(&'static [Capability]),
    /// A capability without which the tracer runs but records less (the text says what).
    Degrades(Capability, &'static str),
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
    /// Loading and attaching a tracing BPF program.
    pub const BPF: Requirement = Requirement::Caps(&[Capability::Bpf, Capability::Perfmon]);

    /// `Err(reason)` when this machine does not meet the requirement.
    pub fn check(&self, host: &HostRoot) -> Result<(), String> {
        match *self {
            Requirement::Caps(caps) => {
                let missing: Vec<&str> = caps
                    .iter()
                    .filter(|c| !c.held())
                    .map(|c| c.name())
                    .collect();
                if missing.is_empty() {
                    Ok(())
                } else {
                    Err(format!("missing capabilities: {}", missing.join(", ")))
                }
            }
            // Not a reason to stay off: see `degraded`.
            Requirement::Degrades(..) => Ok(()),
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

/// What the agent itself needs besides its tracers: other processes' `/proc/<pid>/ns/net` and
/// cgroup links, to attribute a record to its container.
pub const AGENT_CAPABILITIES: &[Capability] = &[Capability::SysPtrace];

/// The set to grant the agent (systemd unit, container, setpriv): every capability some
/// tracer cannot run without, plus [`AGENT_CAPABILITIES`]. Capabilities that only enrich
/// records ([`Requirement::Degrades`]) are left out: least privilege first.
pub fn deployment_capabilities<'a>(
    all_requires: impl IntoIterator<Item = &'a [Requirement]>,
) -> Vec<Capability> {
    let mut out: Vec<Capability> = AGENT_CAPABILITIES.to_vec();
    for reqs in all_requires {
        out.extend(required_capabilities(reqs));
    }
    out.sort();
    out.dedup();
    out
}

/// The first unmet requirement's reason, if any. Missing capabilities come first, all of them
/// in one reason, so an operator fixes them in one go.
pub fn check_all(reqs: &[Requirement], host: &HostRoot) -> Result<(), String> {
    let missing = missing_capabilities(reqs);
    if !missing.is_empty() {
        let names: Vec<&str> = missing.iter().map(|c| c.name()).collect();
        return Err(format!("missing capabilities: {}", names.join(", ")));
    }
    reqs.iter().try_for_each(|r| r.check(host))
}

/// The capabilities in `reqs` that this process does not hold and the tracer cannot run
/// without, in a stable order.
pub fn missing_capabilities(reqs: &[Requirement]) -> Vec<Capability> {
    let mut out: Vec<Capability> = required_capabilities(reqs)
        .into_iter()
        .filter(|c| !c.held())
        .collect();
    out.dedup();
    out
}

/// Every capability the tracer cannot run without.
pub fn required_capabilities(reqs: &[Requirement]) -> Vec<Capability> {
    let mut out: Vec<Capability> = reqs
        .iter()
        .flat_map(|r| match r {
            Requirement::Caps(c) => c.to_vec(),
            _ => Vec::new(),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the tracer loses for a capability this process does not hold (`CAP_X: what`).
pub fn degraded(reqs: &[Requirement]) -> Vec<String> {
    reqs.iter()
        .filter_map(|r| match r {
            Requirement::Degrades(c, what) if !c.held() => Some(format!("{}: {what}", c.name())),
            _ => None,
        })
        .collect()
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
    fn missing_capabilities_are_named_together() {
        // A capability list reason names every missing one; this test runs either way.
        let reqs = [Requirement::BPF, Requirement::Caps(&[Capability::Syslog])];
        let missing = missing_capabilities(&reqs);
        let want: Vec<Capability> = [Capability::Bpf, Capability::Perfmon, Capability::Syslog]
            .into_iter()
            .filter(|c| !c.held())
            .collect();
        assert_eq!(missing, want);
        match check_all(&reqs, &HostRoot::default()) {
            Ok(()) => assert!(want.is_empty()),
            Err(e) => {
                for c in &want {
                    assert!(e.contains(c.name()), "{e}");
                }
            }
        }
        assert_eq!(
            required_capabilities(&reqs),
            [Capability::Bpf, Capability::Perfmon, Capability::Syslog]
        );
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
