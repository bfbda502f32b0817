//! `netstat`: protocol counters from `/proc/net/netstat` and `/proc/net/snmp` (Tcp, TcpExt, Ip,
//! Udp, Icmp…), host and per container network namespace. Fields are filtered on
//! `<Proto>_<Field>` (e.g. `TcpExt_ListenDrops`) with include/exclude regexes.
//!
//! Under the `huatuo_bamai` prefix the names are HuaTuo's (`netstat_TcpExt_ListenDrops`, a
//! gauge). Otherwise names are lower-case (`netstat_tcpext_listendrops_total`, a counter;
//! the few current values such as `Tcp_CurrEstab` stay gauges without `_total`).

use anyhow::Result;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::file::{read_optional, ProcFile};
use crate::host::HostRoot;
use crate::procfs::netstat;
use crate::tracer::{
    BuildContext, Collector, Mode, Requirement, ScrapeContext, Tracer, TracerSpec, TRACERS,
};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netstat",
    mode: Mode::Metric,
    description: "protocol counters from /proc/net/netstat and /proc/net/snmp, host and containers",
    requires: &[Requirement::HostFile("proc/1/net/snmp")],
    default_enabled: true,
    build,
};

/// Per container only the TCP health signals by default (cardinality budget).
pub const DEFAULT_CONTAINER_INCLUDE: &str = "^Tcp_(ActiveOpens|PassiveOpens|AttemptFails|EstabResets|CurrEstab|InSegs|OutSegs|RetransSegs|InErrs|OutRsts)$|^TcpExt_(ListenOverflows|ListenDrops|TCPTimeouts|TCPLostRetransmit|TCPBacklogDrop|TCPRcvQDrop|TCPAbortOnData|TCPAbortOnTimeout|TCPAbortOnMemory|TCPMemoryPressures|SyncookiesSent|TCPSynRetrans)$|^Udp_(InErrors|RcvbufErrors|SndbufErrors|NoPorts)$";

/// Fields that hold a current value or a setting, not a count.
const GAUGE_FIELDS: &[&str] = &[
    "Ip_Forwarding",
    "Ip_DefaultTTL",
    "Tcp_RtoAlgorithm",
    "Tcp_RtoMin",
    "Tcp_RtoMax",
    "Tcp_MaxConn",
    "Tcp_CurrEstab",
];

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NetstatConfig {
    include: Option<String>,
    exclude: Option<String>,
    container_include: Option<String>,
    container_exclude: Option<String>,
    containers: bool,
}

impl Default for NetstatConfig {
    fn default() -> Self {
        NetstatConfig {
            include: None,
            exclude: None,
            container_include: Some(DEFAULT_CONTAINER_INCLUDE.into()),
            container_exclude: None,
            containers: true,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetstatConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Netstat {
        host: ctx.host.clone(),
        netstat: ProcFile::new(ctx.host.net_file("netstat")),
        snmp: ProcFile::new(ctx.host.net_file("snmp")),
        filter: Filter::new(
            ctx.section,
            "include",
            cfg.include.as_deref(),
            "exclude",
            cfg.exclude.as_deref(),
        )?,
        container_filter: Filter::new(
            ctx.section,
            "container_include",
            cfg.container_include.as_deref(),
            "container_exclude",
            cfg.container_exclude.as_deref(),
        )?,
        containers: cfg.containers,
        buf: std::sync::Mutex::new(String::new()),
    })))
}

struct Netstat {
    host: HostRoot,
    netstat: ProcFile,
    snmp: ProcFile,
    filter: Filter,
    container_filter: Filter,
    containers: bool,
    buf: std::sync::Mutex<String>,
}

/// (`Proto_Field`, value) in file order: HuaTuo's names (`TcpExt_ListenDrops`).
fn named(text: &str) -> Result<Vec<(String, i64)>> {
    Ok(netstat::parse(text)?
        .iter()
        .map(|e| (format!("{}_{}", e.proto, e.name), e.value))
        .collect())
}

/// Field → samples (container index or host, value).
type Rows = Vec<(String, Vec<(Option<usize>, i64)>)>;

fn emit(out: &mut MetricSink, rows: &Rows, labels: &[[(&str, &str); 5]], container: bool) {
    let huatuo = out.huatuo_names();
    let mut name = String::with_capacity(64);
    let mut help = String::with_capacity(64);
    for (key, samples) in rows {
        name.clear();
        if container {
            name.push_str("container_");
        }
        help.clear();
        help.push_str("statistic ");
        help.push_str(&key.replace('_', ""));
        help.push('.');
        let kind = if huatuo {
            name.push_str(key);
            Kind::Gauge
        } else {
            name.push_str(&key.to_ascii_lowercase());
            if GAUGE_FIELDS.contains(&key.as_str()) {
                Kind::Gauge
            } else {
                name.push_str("_total");
                Kind::Counter
            }
        };
        out.family(&name, &help, kind);
        for (i, v) in samples {
            match i {
                Some(i) => out.sample(&labels[*i], *v as f64),
                None => out.sample(&[], *v as f64),
            };
        }
    }
}

impl Netstat {
    fn read_host(&self) -> Result<Vec<(String, i64)>> {
        let mut all = Vec::new();
        for f in [&self.netstat, &self.snmp] {
            if let Some(mut v) = f.with(named)? {
                all.append(&mut v);
            }
        }
        Ok(all)
    }
}

impl Collector for Netstat {
    fn collect(&self, ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let host: Rows = self
            .read_host()?
            .into_iter()
            .filter(|(k, _)| self.filter.matches(k) && seen.insert(k.to_ascii_lowercase()))
            .map(|(k, v)| (k, vec![(None, v)]))
            .collect();
        emit(out, &host, &[], false);
        if !self.containers {
            return Ok(());
        }
        let snap = ctx.cgroups();
        if snap.containers.is_empty() {
            return Ok(());
        }
        let mut buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let mut labels = Vec::new();
        let mut rows: Rows = Vec::new();
        for c in &snap.containers {
            let Some(pid) = snap.netns_pid(&self.host, c, &mut buf) else {
                continue;
            };
            let idx = labels.len();
            labels.push(c.labels());
            for f in ["netstat", "snmp"] {
                if !read_optional(&self.host.proc(&format!("{pid}/net/{f}")), &mut buf)? {
                    continue;
                }
                for (k, v) in named(&buf)? {
                    if !self.container_filter.matches(&k) {
                        continue;
                    }
                    match rows.iter_mut().find(|(key, _)| *key == k) {
                        Some((_, s)) => s.push((Some(idx), v)),
                        None => rows.push((k, vec![(Some(idx), v)])),
                    }
                }
            }
        }
        emit(out, &rows, &labels, true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_proto_and_field() {
        let t = "Tcp: RtoAlgorithm MaxConn ActiveOpens\nTcp: 1 -1 31\nUdp: InDatagrams\nUdp: 5\n";
        assert_eq!(
            named(t).unwrap(),
            vec![
                ("Tcp_RtoAlgorithm".to_string(), 1),
                ("Tcp_MaxConn".to_string(), -1),
                ("Tcp_ActiveOpens".to_string(), 31),
                ("Udp_InDatagrams".to_string(), 5)
            ]
        );
        assert!(named("Tcp: A\nTcp: x\n").is_err());
    }

    #[test]
    fn names_by_prefix() {
        let rows = vec![
            ("TcpExt_ListenDrops".to_string(), vec![(None, 2)]),
            ("Tcp_CurrEstab".to_string(), vec![(None, 3)]),
        ];
        let mut s = MetricSink::new("bianque", "netstat");
        emit(&mut s, &rows, &[], false);
        assert!(s
            .as_str()
            .contains("bianque_netstat_tcpext_listendrops_total 2\n"));
        assert!(s
            .as_str()
            .contains("# TYPE bianque_netstat_tcp_currestab gauge\n"));
        let mut s = MetricSink::new("huatuo_bamai", "netstat");
        emit(&mut s, &rows, &[], false);
        assert!(s.as_str().contains("# HELP huatuo_bamai_netstat_TcpExt_ListenDrops statistic TcpExtListenDrops.\n# TYPE huatuo_bamai_netstat_TcpExt_ListenDrops gauge\nhuatuo_bamai_netstat_TcpExt_ListenDrops 2\n"));
    }
}
