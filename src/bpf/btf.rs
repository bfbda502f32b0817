//! Facts read from the running kernel's BTF: which tracepoints exist, and enum names (drop
//! reasons…) so that no kernel enum value is ever hard-coded.

use std::collections::HashSet;

use anyhow::{Context, Result};
use libbpf_rs::btf::types::{DataSec, Enum, Typedef, Var};
use libbpf_rs::btf::Btf;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The parts of vmlinux BTF the framework needs, extracted once (libbpf's `Btf` is not `Sync`).
pub struct KernelBtf {
    tracepoints: HashSet<String>,
}

impl KernelBtf {
    pub fn load() -> Result<KernelBtf> {
        let btf = Btf::from_vmlinux().context("reading /sys/kernel/btf/vmlinux")?;
        let tracepoints = btf
            .type_by_kind::<Typedef>()
            .filter_map(|t| {
                t.name()?
                    .to_str()?
                    .strip_prefix("btf_trace_")
                    .map(str::to_string)
            })
            .collect();
        Ok(KernelBtf { tracepoints })
    }

    /// A tracepoint that `tp_btf`/`raw_tp` programs can attach to.
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.tracepoints.contains(name)
    }
}

/// `(value, name)` of every member of a kernel enum, with `strip_prefix` removed from names.
pub fn enum_members(enum_name: &str, strip_prefix: &str) -> Result<Vec<(i64, String)>> {
    let btf = Btf::from_vmlinux().context("reading /sys/kernel/btf/vmlinux")?;
    let e = btf
        .type_by_name::<Enum>(enum_name)
        .with_context(|| format!("enum {enum_name} not in kernel BTF"))?;
    Ok(e.iter()
        .filter_map(|m| {
            let name = m.name?.to_str()?;
            Some((
                m.value,
                name.strip_prefix(strip_prefix).unwrap_or(name).to_string(),
            ))
        })
        .collect())
}

/// Members of the (possibly anonymous) kernel enum that has a member named `member`.
pub fn enum_members_with(member: &str, strip_prefix: &str) -> Result<Vec<(i64, String)>> {
    let btf = Btf::from_vmlinux().context("reading /sys/kernel/btf/vmlinux")?;
    let e = btf
        .type_by_kind::<Enum>()
        .find(|e| {
            e.iter()
                .any(|m| m.name.and_then(|n| n.to_str()) == Some(member))
        })
        .with_context(|| format!("no kernel enum has a member {member}"))?;
    Ok(e.iter()
        .filter_map(|m| {
            let name = m.name?.to_str()?;
            Some((
                m.value,
                name.strip_prefix(strip_prefix).unwrap_or(name).to_string(),
            ))
        })
        .collect())
}

/// Offsets of the named per-CPU variables within the kernel's per-CPU section (`.data..percpu`
/// in vmlinux BTF), in the order asked. A CPU's copy of one is at its copy of another plus the
/// difference of their offsets: how BPF reaches per-CPU data that kallsyms does not list.
pub fn percpu_offsets(names: &[&str]) -> Result<Vec<u64>> {
    let btf = Btf::from_vmlinux().context("reading /sys/kernel/btf/vmlinux")?;
    let sec = btf
        .type_by_name::<DataSec>(".data..percpu")
        .context("no .data..percpu section in kernel BTF")?;
    let mut found = vec![None; names.len()];
    for info in sec.iter() {
        let Some(name) = btf
            .type_by_id::<Var>(info.ty)
            .and_then(|v| v.name())
            .and_then(|n| n.to_str())
        else {
            continue;
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            found[i] = Some(u64::from(info.offset));
        }
    }
    names
        .iter()
        .zip(found)
        .map(|(n, off)| off.with_context(|| format!("per-CPU variable {n} not in kernel BTF")))
        .collect()
}

/// Symbolic values from a tracepoint's `print fmt` (`__print_symbolic(REC->x, { 2, "NAME" }, …)`),
/// the fallback when BTF lacks the enum.
pub fn parse_print_symbolic(format: &str) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let mut rest = format;
    while let Some(open) = rest.find('{') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find('}') else { break };
        let item = &rest[..close];
        if let Some((num, name)) = item.split_once(',') {
            let name = name.trim().trim_matches('"');
            if let Ok(v) = num.trim().parse::<i64>() {
                if !name.is_empty() {
                    out.push((v, name.to_string()));
                }
            }
        }
        rest = &rest[close + 1..];
    }
    out
}

/// A dense value → name table (values past the end or unnamed print as numbers).
#[derive(Debug, Clone, Default)]
pub struct EnumNames {
    names: Vec<Option<String>>,
}

impl EnumNames {
    pub fn from_members(members: &[(i64, String)]) -> EnumNames {
        let max = members
            .iter()
            .map(|(v, _)| *v)
            .filter(|v| (0..4096).contains(v))
            .max()
            .unwrap_or(-1);
        let mut names = vec![None; (max + 1) as usize];
        for (v, n) in members {
            if (0..=max).contains(v) {
                names[*v as usize] = Some(n.clone());
            }
        }
        EnumNames { names }
    }

    pub fn name(&self, value: u32) -> std::borrow::Cow<'_, str> {
        match self.names.get(value as usize) {
            Some(Some(n)) => std::borrow::Cow::Borrowed(n.as_str()),
            _ => std::borrow::Cow::Owned(value.to_string()),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percpu_offsets_are_found_in_kernel_btf() {
        let offs = percpu_offsets(&["tick_cpu_sched", "kstat"]).unwrap();
        assert_ne!(offs[0], offs[1]);
        let err = percpu_offsets(&["no_such_percpu_variable"]).unwrap_err();
        assert!(
            format!("{err:#}").contains("no_such_percpu_variable"),
            "{err:#}"
        );
    }

    #[test]
    fn print_symbolic_is_parsed() {
        let fmt = r#"print fmt: "reason: %s", __print_symbolic(REC->reason, { 2, "NOT_SPECIFIED" }, { 3, "NO_SOCKET" }, { 12, "NETFILTER_DROP" })"#;
        let m = parse_print_symbolic(fmt);
        assert_eq!(
            m,
            vec![
                (2, "NOT_SPECIFIED".into()),
                (3, "NO_SOCKET".into()),
                (12, "NETFILTER_DROP".into())
            ]
        );
        let names = EnumNames::from_members(&m);
        assert_eq!(names.name(3), "NO_SOCKET");
        assert_eq!(names.name(5), "5");
        assert_eq!(names.name(9999), "9999");
    }

    #[test]
    fn drop_reasons_come_from_kernel_btf() {
        let m = enum_members("skb_drop_reason", "SKB_DROP_REASON_").unwrap();
        let names = EnumNames::from_members(&m);
        assert!(m.iter().any(|(_, n)| n == "NO_SOCKET"));
        assert!(m.iter().any(|(_, n)| n == "NETFILTER_DROP"));
        let no_socket = m.iter().find(|(_, n)| n == "NO_SOCKET").unwrap().0;
        assert_eq!(names.name(no_socket as u32), "NO_SOCKET");
    }

    #[test]
    fn kernel_btf_lists_tracepoints() {
        let k = KernelBtf::load().unwrap();
        assert!(k.has_tracepoint("kfree_skb"));
        assert!(k.has_tracepoint("sched_switch"));
        assert!(!k.has_tracepoint("definitely_not_a_tracepoint"));
    }
}
