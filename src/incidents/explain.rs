//! The rules (docs/incidents.md): which chain each tracer belongs to, how severe its records
//! are, one line per record, and the paragraph that tells an incident's story in causal order.

use std::collections::BTreeMap;

use super::{Item, Target};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Chain {
    Memory,
    Cpu,
    Io,
    Network,
    Lockup,
}

impl Chain {
    pub fn as_str(self) -> &'static str {
        match self {
            Chain::Memory => "memory",
            Chain::Cpu => "cpu",
            Chain::Io => "io",
            Chain::Network => "network",
            Chain::Lockup => "lockup",
        }
    }
}

/// The chain a tracer's records belong to; None for context-only tracers.
pub fn chain_of(tracer: &str) -> Option<Chain> {
    Some(match tracer {
        "memburst" | "memreclaim" | "oom" => Chain::Memory,
        "cpu_pressure" | "cpusys" | "cpuidle" | "waitrate" | "softirq" => Chain::Cpu,
        "iotracer" | "dload" | "hungtask" => Chain::Io,
        "dropwatch" | "tcp_retransmit" | "netrecvlat" | "netdev_events" => Chain::Network,
        "softlockup" => Chain::Lockup,
        _ => return None,
    })
}

/// 2 critical, 1 warning, 0 info: for one record of a tracer.
fn severity_of(tracer: &str) -> u8 {
    match tracer {
        "oom" | "softlockup" | "hungtask" => 2,
        "dropwatch" | "tcp_retransmit" | "netrecvlat" | "softirq" => 0,
        _ if chain_of(tracer).is_some() => 1,
        _ => 0,
    }
}

/// A string at a dotted path inside a JSON object.
pub(crate) fn str_at<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a str> {
    at(v, path)?.as_str()
}

fn at<'a>(v: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

fn u64_at(v: &serde_json::Value, path: &str) -> Option<u64> {
    at(v, path)?.as_u64()
}

fn f64_at(v: &serde_json::Value, path: &str) -> Option<f64> {
    at(v, path)?.as_f64()
}

fn ms(ns: u64) -> String {
    let ms = ns as f64 / 1e6;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// `comm (pid N)` from the fields `comm`/`pid` under `prefix` (`""` or `victim.`).
fn task(d: &serde_json::Value, prefix: &str) -> String {
    let comm = str_at(d, &format!("{prefix}comm")).unwrap_or("?");
    match u64_at(d, &format!("{prefix}pid")) {
        Some(pid) => format!("{comm} (pid {pid})"),
        None => comm.to_string(),
    }
}

/// One line about one record.
pub fn summary(item: &Item) -> String {
    let d = &item.data;
    match item.tracer.as_str() {
        "oom" => {
            let mut s = format!("OOM kill of {}", task(d, "victim."));
            if let Some(p) = str_at(d, "victim.memory_cgroup.path") {
                s.push_str(&format!(" in memory cgroup {p}"));
            }
            if let (Some(u), Some(l)) = (
                u64_at(d, "victim.memory_cgroup.usage_bytes"),
                u64_at(d, "victim.memory_cgroup.limit_bytes"),
            ) {
                s.push_str(&format!(" ({} used of a {} limit)", mib(u), mib(l)));
            }
            s
        }
        "memreclaim" => format!(
            "{} direct reclaim stalled {} for {}",
            str_at(d, "kind").unwrap_or("a"),
            task(d, ""),
            ms(u64_at(d, "duration_ns").unwrap_or(0))
        ),
        "memburst" => format!(
            "anonymous memory burst to {}% of RAM",
            f64_at(d, "anon_percent").unwrap_or(0.0)
        ),
        "cpusys" => {
            let mut s = format!(
                "system CPU time at {}%",
                f64_at(d, "system_percent").unwrap_or(0.0)
            );
            if let Some(p) = at(d, "profile.top_processes.0") {
                s.push_str(&format!("; busiest {}", task(p, "")));
            }
            s
        }
        "cpuidle" => format!(
            "CPU usage at {}% (user {}%, system {}%)",
            f64_at(d, "total_percent").unwrap_or(0.0),
            f64_at(d, "user_percent").unwrap_or(0.0),
            f64_at(d, "system_percent").unwrap_or(0.0)
        ),
        "cpu_pressure" => format!(
            "CPU pressure (some, avg10) at {}%",
            f64_at(d, "cpu_some_avg10_percent").unwrap_or(0.0)
        ),
        "waitrate" => format!(
            "run-queue wait {}%, CFS throttled {}%",
            f64_at(d, "wait_percent").unwrap_or(0.0),
            f64_at(d, "throttled_percent").unwrap_or(0.0)
        ),
        "softirq" => format!(
            "{} {} on CPU {} for {}",
            str_at(d, "event").unwrap_or("softirq"),
            str_at(d, "kind").unwrap_or(""),
            u64_at(d, "cpu").unwrap_or(0),
            ms(u64_at(d, "duration_ns").unwrap_or(0))
        ),
        "iotracer" => format!(
            "IO saturation ({}) on {}",
            str_at(d, "reason_snapshot.type").unwrap_or("?"),
            str_at(d, "reason_snapshot.device").unwrap_or("?")
        ),
        "dload" => format!(
            "D-state load {} ({} uninterruptible tasks)",
            f64_at(d, "dload_avg").unwrap_or(0.0),
            u64_at(d, "nr_uninterruptible").unwrap_or(0)
        ),
        "hungtask" => format!(
            "hung task {} blocked{}",
            task(d, ""),
            u64_at(d, "blocked_ns")
                .map(|ns| format!(" for {} s", ns / 1_000_000_000))
                .unwrap_or_default()
        ),
        "dropwatch" => format!(
            "{} drop ({}) at {}{}",
            str_at(d, "protocol").unwrap_or("packet"),
            str_at(d, "drop_reason").unwrap_or("?"),
            str_at(d, "drop_location").unwrap_or("?"),
            match (str_at(d, "daddr"), u64_at(d, "dport")) {
                (Some(a), Some(p)) => format!(" to {a}:{p}"),
                _ => String::new(),
            }
        ),
        "tcp_retransmit" => format!(
            "TCP retransmit to {}:{} ({})",
            str_at(d, "tcp_daddr").unwrap_or("?"),
            u64_at(d, "tcp_dport").unwrap_or(0),
            str_at(d, "tcp_state").unwrap_or("?")
        ),
        "netrecvlat" => format!(
            "slow receive at {}: {}",
            str_at(d, "latency_stage").unwrap_or("?"),
            ms(u64_at(d, "latency_ns").unwrap_or(0))
        ),
        "netdev_events" => format!(
            "link {} changed: {}",
            str_at(d, "ifname").unwrap_or("?"),
            at(d, "linkstatus")
                .and_then(|v| v.as_array())
                .map(|a| a
                    .iter()
                    .filter_map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        ),
        "softlockup" => format!(
            "soft lockup on CPU {}: {} stuck for {} s",
            u64_at(d, "cpu").unwrap_or(0),
            task(d, ""),
            u64_at(d, "stuck_seconds").unwrap_or(0)
        ),
        "signal" => format!(
            "{} from {} (pid {}) to {} (pid {})",
            str_at(d, "signal").unwrap_or("signal"),
            str_at(d, "sender_comm").unwrap_or("?"),
            u64_at(d, "sender_pid").unwrap_or(0),
            str_at(d, "target_comm").unwrap_or("?"),
            u64_at(d, "target_pid").unwrap_or(0)
        ),
        other => format!("{other} record"),
    }
}

pub struct Verdict {
    pub chain: Chain,
    pub severity: &'static str,
    pub text: String,
}

/// The most frequent values of `f(record)` as `value ×n`, most first (at most `n`).
fn top(items: &[&Item], n: usize, f: impl Fn(&Item) -> Option<String>) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for i in items {
        if let Some(k) = f(i) {
            *counts.entry(k).or_default() += 1;
        }
    }
    let mut v: Vec<(String, usize)> = counts.into_iter().collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter()
        .take(n)
        .map(|(k, c)| format!("{k} ×{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn clock(ns: i64) -> String {
    crate::record::format_time_ns(ns)
        .get(11..19)
        .unwrap_or("")
        .to_string()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// The incident's kind, severity and paragraph. Sentences follow the causal order of each
/// chain (memory: burst → reclaim → OOM kill; then what the network saw afterwards).
pub fn explain(target: &Target, members: &[&Item]) -> Verdict {
    let of = |name: &str| -> Vec<&Item> {
        members
            .iter()
            .copied()
            .filter(|i| i.tracer == name)
            .collect()
    };
    // Kind: the chain of the most severe records, then of the most records.
    let mut per_chain: BTreeMap<Chain, (u8, usize)> = BTreeMap::new();
    for m in members {
        if let Some(c) = chain_of(&m.tracer) {
            let e = per_chain.entry(c).or_default();
            e.0 = e.0.max(severity_of(&m.tracer));
            e.1 += 1;
        }
    }
    let chain = per_chain
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
        .map(|(c, _)| *c)
        .unwrap_or(Chain::Network);
    let mut sev = members
        .iter()
        .map(|m| severity_of(&m.tracer))
        .max()
        .unwrap_or(0);
    let drops = of("dropwatch");
    let retrans = of("tcp_retransmit");
    if sev == 0 && (drops.len() >= 100 || retrans.len() >= 10) {
        sev = 1;
    }
    let severity = ["info", "warning", "critical"][sev as usize];

    let who = match target.kind {
        "container" => format!("Container {}", target.name),
        "cgroup" => format!("Memory cgroup {}", target.name),
        _ => "The host".to_string(),
    };
    let (first, last) = (members[0].time_ns, members[members.len() - 1].time_ns);
    let mut s = vec![format!(
        "{who}: {} {} incident from {} to {} UTC ({}).",
        severity,
        chain.as_str(),
        clock(first),
        clock(last),
        plural(members.len(), "record", "records")
    )];

    // Memory chain.
    let bursts = of("memburst");
    if let Some(b) = bursts.first() {
        s.push(format!("Anonymous memory grew fast ({}).", summary(b)));
    }
    let reclaims = of("memreclaim");
    if !reclaims.is_empty() {
        let longest = reclaims
            .iter()
            .filter_map(|r| u64_at(&r.data, "duration_ns"))
            .max()
            .unwrap_or(0);
        s.push(format!(
            "Direct reclaim stalled tasks {} (longest {}; {}) — memory was short and the kernel had to free pages while allocating.",
            plural(reclaims.len(), "time", "times"),
            ms(longest),
            top(&reclaims, 3, |r| str_at(&r.data, "comm").map(str::to_string))
        ));
    }
    let ooms = of("oom");
    for o in ooms.iter().take(3) {
        let victim = task(&o.data, "victim.");
        let mut t = format!("At {} the OOM killer killed {victim}", clock(o.time_ns));
        if let Some(p) = str_at(&o.data, "victim.memory_cgroup.path") {
            t.push_str(&format!(" in memory cgroup {p}"));
        }
        if let (Some(u), Some(l)) = (
            u64_at(&o.data, "victim.memory_cgroup.usage_bytes"),
            u64_at(&o.data, "victim.memory_cgroup.limit_bytes"),
        ) {
            t.push_str(&format!(
                ", which had used {} of its {} limit",
                mib(u),
                mib(l)
            ));
        }
        if str_at(&o.data, "constraint") == Some("memcg") {
            t.push_str(" (the cgroup's limit, not the host, ran out)");
        }
        t.push('.');
        s.push(t);
    }
    if ooms.len() > 3 {
        s.push(format!("{} more OOM kills followed.", ooms.len() - 3));
    }
    if !ooms.is_empty() && !reclaims.is_empty() {
        s.push("Reclaim could not free enough before the limit was hit, so the kernel killed a process: raise the limit or find what grew.".into());
    } else if !ooms.is_empty() {
        s.push(
            "The kernel killed a process to free memory: raise the limit or find what grew.".into(),
        );
    }

    // CPU chain.
    for name in ["cpusys", "cpuidle", "cpu_pressure", "waitrate"] {
        let rs = of(name);
        if let Some(r) = rs.first() {
            s.push(format!(
                "CPU: {}{}.",
                summary(r),
                if rs.len() > 1 {
                    format!(" ({} detections)", rs.len())
                } else {
                    String::new()
                }
            ));
        }
    }
    let softirqs = of("softirq");
    if !softirqs.is_empty() {
        let longest = softirqs
            .iter()
            .filter_map(|r| u64_at(&r.data, "duration_ns"))
            .max()
            .unwrap_or(0);
        s.push(format!(
            "{} kept CPUs from running tasks (longest {}; {}).",
            plural(
                softirqs.len(),
                "long softirq or tick gap",
                "long softirqs or tick gaps"
            ),
            ms(longest),
            top(&softirqs, 3, |r| {
                Some(format!(
                    "{} {}",
                    str_at(&r.data, "event").unwrap_or("softirq"),
                    str_at(&r.data, "kind").unwrap_or("")
                ))
            })
        ));
    }

    // IO chain.
    for name in ["iotracer", "dload"] {
        if let Some(r) = of(name).first() {
            s.push(format!("IO: {}.", summary(r)));
        }
    }
    let hung = of("hungtask");
    if !hung.is_empty() {
        s.push(format!(
            "{} ({}): tasks waited on IO or a lock longer than the hung-task timeout.",
            plural(hung.len(), "hung task", "hung tasks"),
            top(&hung, 3, |r| Some(task(&r.data, "")))
        ));
    }

    // Network chain.
    if !drops.is_empty() {
        s.push(format!(
            "The network dropped {} ({}; at {}).",
            plural(drops.len(), "packet", "packets"),
            top(&drops, 3, |r| str_at(&r.data, "drop_reason")
                .map(str::to_string)),
            top(&drops, 2, |r| str_at(&r.data, "drop_location")
                .map(str::to_string))
        ));
    }
    if !retrans.is_empty() {
        s.push(format!(
            "TCP retransmitted {} (to {}).",
            plural(retrans.len(), "time", "times"),
            top(&retrans, 3, |r| {
                Some(format!(
                    "{}:{}",
                    str_at(&r.data, "tcp_daddr")?,
                    u64_at(&r.data, "tcp_dport")?
                ))
            })
        ));
    }
    let slow = of("netrecvlat");
    if !slow.is_empty() {
        let worst = slow
            .iter()
            .filter_map(|r| u64_at(&r.data, "latency_ns"))
            .max()
            .unwrap_or(0);
        s.push(format!(
            "{} (worst {}).",
            plural(
                slow.len(),
                "packet was received slowly",
                "packets were received slowly"
            ),
            ms(worst)
        ));
    }
    for r in of("netdev_events").iter().take(3) {
        s.push(format!("The {}.", summary(r)));
    }
    if !ooms.is_empty() && (!drops.is_empty() || !retrans.is_empty()) {
        s.push(
            "Drops and retransmits in the same window are likely the killed process's connections."
                .into(),
        );
    }

    // Lockups.
    for r in of("softlockup").iter().take(3) {
        s.push(format!(
            "A {} — the CPU ran kernel code without scheduling.",
            summary(r)
        ));
    }
    Verdict {
        chain,
        severity,
        text: s.join(" "),
    }
}
