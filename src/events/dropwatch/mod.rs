//! `dropwatch`: packets the kernel dropped, with the kernel's drop reason, where it happened,
//! the packet's addresses and ports, and who was running.
//!
//! Hook: `tp_btf/kfree_skb` (no kprobes needed). In BPF every drop is counted by reason; drops
//! that match the protocol/port filter pass a per-source limit (a source is the memory cgroup
//! and uid of the running task; default 25/s) and a global one (default 100/s) before their
//! headers are read and sent up, so one flooding source cannot hide the others' drops.
//! Suppressed (by each limit), filtered and ring-buffer-lost drops are counted.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::RwLock;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, Capability, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError,
    TracerSpec, TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("dropwatch", OpenDropwatchSkel);
}
use skel::types::{counter_slot as Slot, drop_event, filter_limit, proto_bit};
use skel::DropwatchSkelBuilder;

// SAFETY: generated from dropwatch.h: integers and arrays of integers only.
unsafe impl Plain for drop_event {}

const MAX_FILTER_PORTS: usize = filter_limit::MAX_FILTER_PORTS.0 as usize;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "dropwatch",
    mode: Mode::Event,
    description:
        "packet drops (tp_btf/kfree_skb): reason, location, addresses, ports, task, cgroup",
    requires: &[
        Requirement::BPF,
        Requirement::Degrades(
            Capability::Syslog,
            "drop locations unnamed (/proc/kallsyms shows no addresses)",
        ),
        Requirement::Btf,
        Requirement::BtfTracepoint("kfree_skb"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DropwatchConfig {
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
    /// Records per second at most from one source (memory cgroup and uid of the running task);
    /// 0 = no per-source limit. Default: a quarter of `max_events_per_second`.
    pub max_events_per_second_per_source: Option<u32>,
    /// Only these L4 protocols (`tcp`, `udp`, `icmp`, `other`); empty = all.
    pub protocols: Vec<String>,
    /// Only TCP/UDP packets with one of these source or destination ports; empty = all.
    pub ports: Vec<u16>,
    /// Leave out the agent's own traffic: drops in its own process (its probes, its sockets'
    /// teardown) and TCP drops to or from its listen port. Counted, not recorded.
    pub ignore_agent_traffic: bool,
    /// Record drops whose reason is one of `teardown_reasons` too (they are always counted).
    pub record_teardown: bool,
    /// Drop reasons of a normal connection teardown (kernel names without `SKB_DROP_REASON_`).
    pub teardown_reasons: Vec<String>,
}

impl Default for DropwatchConfig {
    fn default() -> Self {
        DropwatchConfig {
            max_events_per_second: 100,
            max_events_per_second_per_source: None,
            protocols: Vec::new(),
            ports: Vec::new(),
            ignore_agent_traffic: true,
            record_teardown: false,
            // A closing socket's queues purged (the peer's FIN still queued: every HTTP
            // connection), a segment for a socket already closed, the receive queue at close.
            teardown_reasons: ["QUEUE_PURGE", "SOCKET_CLOSE", "TCP_CLOSE"]
                .map(String::from)
                .to_vec(),
        }
    }
}

impl DropwatchConfig {
    /// The per-source limit in force: the configured one, else a quarter of the global one
    /// (at least 1; none without a global limit).
    fn per_source_limit(&self) -> u32 {
        self.max_events_per_second_per_source
            .unwrap_or(match self.max_events_per_second {
                0 => 0,
                n => (n / 4).max(1),
            })
    }

    fn protocol_mask(&self, section: &str) -> ConfigResult<u32> {
        let mut mask = 0;
        for p in &self.protocols {
            mask |= match p.as_str() {
                "tcp" => proto_bit::PROTO_BIT_TCP.0,
                "udp" => proto_bit::PROTO_BIT_UDP.0,
                "icmp" => proto_bit::PROTO_BIT_ICMP.0,
                "other" => proto_bit::PROTO_BIT_OTHER.0,
                other => {
                    return Err(ConfigError(format!(
                        "{section}.protocols: unknown protocol `{other}`, allowed tcp, udp, icmp, other"
                    )))
                }
            };
        }
        Ok(mask)
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: DropwatchConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        1_000_000,
    )?;
    let per_source = format!("{}.max_events_per_second_per_source", ctx.section);
    if let Some(n) = cfg.max_events_per_second_per_source {
        check_range(&per_source, n, 0, 1_000_000)?;
        if cfg.max_events_per_second > 0 && n > cfg.max_events_per_second {
            return Err(ConfigError(format!(
                "{per_source} = {n} is above max_events_per_second = {}: one source could use the whole limit",
                cfg.max_events_per_second
            )));
        }
    }
    let protocol_mask = cfg.protocol_mask(ctx.section)?;
    if let Some(bad) = cfg.teardown_reasons.iter().find(|r| {
        r.is_empty()
            || !r
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    }) {
        return Err(ConfigError(format!(
            "{}.teardown_reasons: `{bad}` is not a drop reason name (like QUEUE_PURGE)",
            ctx.section
        )));
    }
    if cfg.ports.len() > MAX_FILTER_PORTS {
        return Err(ConfigError(format!(
            "{}.ports: at most {MAX_FILTER_PORTS} ports, found {}",
            ctx.section,
            cfg.ports.len()
        )));
    }
    Ok(Tracer::Event(Box::new(Dropwatch {
        cfg,
        protocol_mask,
        reasons: RwLock::new(EnumNames::default()),
        counters: Default::default(),
    })))
}

pub struct Dropwatch {
    cfg: DropwatchConfig,
    protocol_mask: u32,
    reasons: RwLock<EnumNames>,
    /// Outlives a run: the next run reuses the map, so counters never go back.
    counters: crate::bpf::counters::CountersCell,
}

/// Drop-reason names of the running kernel: BTF first, the tracepoint format as fallback.
fn load_reason_names() -> Result<EnumNames> {
    match btf::enum_members("skb_drop_reason", "SKB_DROP_REASON_") {
        Ok(m) => Ok(EnumNames::from_members(&m)),
        Err(btf_err) => {
            let dir = bq_bpf::tracefs_dir().map_err(|e| anyhow!("{btf_err:#}; and {e}"))?;
            let fmt = std::fs::read_to_string(dir.join("events/skb/kfree_skb/format"))
                .with_context(|| format!("{btf_err:#}; reading the kfree_skb tracepoint format"))?;
            Ok(EnumNames::from_members(&btf::parse_print_symbolic(&fmt)))
        }
    }
}

const TEARDOWN_MASK_WORDS: usize = filter_limit::TEARDOWN_MASK_WORDS.0 as usize;

/// One bit per drop reason of `wanted` that this kernel has (names without the prefix); a name
/// it does not have is left out (kernels add and rename reasons).
fn teardown_mask(names: &EnumNames, wanted: &[String]) -> [u64; TEARDOWN_MASK_WORDS] {
    let mut mask = [0u64; TEARDOWN_MASK_WORDS];
    for reason in 0..Slot::REASON_SLOTS.0 {
        if wanted.iter().any(|w| *w == names.name(reason)) {
            mask[reason as usize / 64] |= 1 << (reason % 64);
        }
    }
    mask
}

/// The agent's tgid as BPF sees it (the host's pid namespace): `<host root>/proc/self` names
/// it when the host's /proc is mounted there; else this namespace's pid.
fn agent_tgid(ctx: &RunContext) -> u32 {
    std::fs::read_link(ctx.host().proc("self"))
        .ok()
        .and_then(|p| p.to_str()?.parse().ok())
        .unwrap_or_else(std::process::id)
}

impl EventTracer for Dropwatch {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        match load_reason_names() {
            Ok(names) => *self.reasons.write().unwrap_or_else(|e| e.into_inner()) = names,
            Err(e) => {
                tracing::warn!(tracer = "dropwatch", error = %format!("{e:#}"), "drop reasons will be numbers")
            }
        }
        let mut storage = MaybeUninit::uninit();
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .ring_buffer::<drop_event>(self.cfg.max_events_per_second)
            .load(DropwatchSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                rodata.max_events_per_second_per_source = self.cfg.per_source_limit();
                rodata.filter_protocols = self.protocol_mask;
                rodata.filter_port_count = self.cfg.ports.len() as u32;
                for (slot, port) in rodata.filter_ports.iter_mut().zip(&self.cfg.ports) {
                    *slot = *port;
                }
                if !self.cfg.record_teardown {
                    let names = self.reasons.read().unwrap_or_else(|e| e.into_inner());
                    rodata.teardown_reasons = teardown_mask(&names, &self.cfg.teardown_reasons);
                }
                if self.cfg.ignore_agent_traffic {
                    rodata.agent_tgid = agent_tgid(ctx);
                    rodata.agent_port = ctx.agent_port();
                }
                Ok(())
            })?
            .attach(&[])?
            .poll(|e: &drop_event, clock| self.save(ctx, e, clock))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        let names = self.reasons.read().unwrap_or_else(|e| e.into_inner());
        out.family(
            "events_total",
            "Packets the kernel dropped, by drop reason (all drops, before filter and rate limit).",
            Kind::Counter,
        );
        for reason in 0..Slot::REASON_SLOTS.0 {
            let n = c.get(reason as usize);
            if n > 0 {
                out.sample(&[("reason", &names.name(reason))], n as f64);
            }
        }
        let by_source = c.get(Slot::SLOT_SOURCE_SUPPRESSED.0 as usize);
        Refused::new("Drops", Slot::SLOT_SUPPRESSED.0, Slot::SLOT_RINGBUF_FULL.0)
            .also_suppressed(by_source, "the per-source limit")
            .filtered(Slot::SLOT_FILTERED.0, "protocol/port")
            .write(&c, out);
        out.family(
            "not_recorded_total",
            "Drops counted but not recorded: `teardown` (a normal-teardown reason, see events_total by reason; record_teardown = true records them) or `agent` (the agent's own traffic; ignore_agent_traffic = false records it).",
            Kind::Counter,
        );
        out.sample(
            &[("why", "teardown")],
            c.get(Slot::SLOT_TEARDOWN.0 as usize) as f64,
        );
        out.sample(
            &[("why", "agent")],
            c.get(Slot::SLOT_AGENT_TRAFFIC.0 as usize) as f64,
        );
        out.family(
            "suppressed_by_limit_total",
            "Drops not recorded, by the limit that refused them: `source` (one memory cgroup and uid over max_events_per_second_per_source) or `global` (max_events_per_second).",
            Kind::Counter,
        );
        out.sample(&[("limit", "source")], by_source as f64);
        out.sample(
            &[("limit", "global")],
            c.get(Slot::SLOT_SUPPRESSED.0 as usize) as f64,
        );
        Ok(())
    }
}

/// The record's `tracer_data`; the most telling fields first (the CLI table shows them).
#[derive(Debug, Serialize)]
struct DropData {
    drop_reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    saddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    daddr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    /// `echo-request`, `destination-unreachable`… (IANA names; ICMPv6 has its own table).
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code_name: Option<&'static str>,
    comm: String,
    pid: u32,
    drop_location: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    netdev_name: String,
    netdev_ifindex: u32,
    net_namespace_inum: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory_cgroup_path: Option<String>,
    packet_len_bytes: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    l3_protocol: Option<&'static str>,
    drop_reason_code: u32,
    tid: u32,
    cpu: u32,
}

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMPV6: u8 = 58;

fn tcp_flags_text(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// ICMP / ICMPv6 message type names (IANA registries; wire values, not kernel enums).
fn icmp_type_name(v6: bool, t: u8) -> Option<&'static str> {
    Some(match (v6, t) {
        (false, 0) => "echo-reply",
        (false, 3) => "destination-unreachable",
        (false, 4) => "source-quench",
        (false, 5) => "redirect",
        (false, 8) => "echo-request",
        (false, 9) => "router-advertisement",
        (false, 10) => "router-solicitation",
        (false, 11) => "time-exceeded",
        (false, 12) => "parameter-problem",
        (false, 13) => "timestamp-request",
        (false, 14) => "timestamp-reply",
        (true, 1) => "destination-unreachable",
        (true, 2) => "packet-too-big",
        (true, 3) => "time-exceeded",
        (true, 4) => "parameter-problem",
        (true, 128) => "echo-request",
        (true, 129) => "echo-reply",
        (true, 130) => "mld-listener-query",
        (true, 131) => "mld-listener-report",
        (true, 133) => "router-solicitation",
        (true, 134) => "router-advertisement",
        (true, 135) => "neighbor-solicitation",
        (true, 136) => "neighbor-advertisement",
        (true, 137) => "redirect",
        (true, 143) => "mld2-listener-report",
        _ => return None,
    })
}

/// Code names of the destination-unreachable and time-exceeded types.
fn icmp_code_name(v6: bool, t: u8, c: u8) -> Option<&'static str> {
    Some(match (v6, t, c) {
        (false, 3, 0) => "net-unreachable",
        (false, 3, 1) => "host-unreachable",
        (false, 3, 2) => "protocol-unreachable",
        (false, 3, 3) => "port-unreachable",
        (false, 3, 4) => "fragmentation-needed",
        (false, 3, 9) => "net-prohibited",
        (false, 3, 10) => "host-prohibited",
        (false, 3, 13) => "admin-prohibited",
        (false, 11, 0) => "ttl-exceeded",
        (false, 11, 1) => "reassembly-time-exceeded",
        (true, 1, 0) => "no-route",
        (true, 1, 1) => "admin-prohibited",
        (true, 1, 3) => "address-unreachable",
        (true, 1, 4) => "port-unreachable",
        (true, 3, 0) => "hop-limit-exceeded",
        (true, 3, 1) => "reassembly-time-exceeded",
        _ => return None,
    })
}

fn ip_addr(l3: u16, bytes: &[u8; 16]) -> Option<IpAddr> {
    match l3 {
        0x0800 => Some(IpAddr::V4(Ipv4Addr::new(
            bytes[0], bytes[1], bytes[2], bytes[3],
        ))),
        0x86dd => Some(IpAddr::V6(Ipv6Addr::from(*bytes))),
        _ => None,
    }
}

/// One drop as the kernel reported it, with names (no lookups: what the record says alone);
/// `symbolize` names the kernel address that freed the packet.
fn decode(e: &drop_event, reasons: &EnumNames, symbolize: impl Fn(u64) -> String) -> DropData {
    let l3_protocol = match e.l3_proto {
        0x0800 => Some("ipv4"),
        0x86dd => Some("ipv6"),
        _ => None,
    };
    let has_l3 = e.has_l3 != 0;
    let has_l4 = e.has_l4 != 0;
    let protocol = has_l3.then(|| match e.l4_proto {
        IPPROTO_TCP => "tcp".to_string(),
        IPPROTO_UDP => "udp".to_string(),
        IPPROTO_ICMP => "icmp".to_string(),
        IPPROTO_ICMPV6 => "icmpv6".to_string(),
        n => n.to_string(),
    });
    let is_icmp = matches!(e.l4_proto, IPPROTO_ICMP | IPPROTO_ICMPV6);
    let ports = has_l4 && matches!(e.l4_proto, IPPROTO_TCP | IPPROTO_UDP);
    DropData {
        drop_reason: reasons.name(e.reason).into_owned(),
        drop_reason_code: e.reason,
        drop_location: symbolize(e.location),
        l3_protocol,
        protocol,
        saddr: if has_l3 {
            ip_addr(e.l3_proto, &e.saddr).map(|a| a.to_string())
        } else {
            None
        },
        daddr: if has_l3 {
            ip_addr(e.l3_proto, &e.daddr).map(|a| a.to_string())
        } else {
            None
        },
        sport: ports.then_some(e.sport),
        dport: ports.then_some(e.dport),
        tcp_flags: (has_l4 && e.l4_proto == IPPROTO_TCP).then(|| tcp_flags_text(e.tcp_flags)),
        icmp_type: (has_l4 && is_icmp).then_some(e.icmp_type),
        icmp_code: (has_l4 && is_icmp).then_some(e.icmp_code),
        icmp_type_name: (has_l4 && is_icmp)
            .then(|| icmp_type_name(e.l4_proto == IPPROTO_ICMPV6, e.icmp_type))
            .flatten(),
        icmp_code_name: (has_l4 && is_icmp)
            .then(|| icmp_code_name(e.l4_proto == IPPROTO_ICMPV6, e.icmp_type, e.icmp_code))
            .flatten(),
        packet_len_bytes: e.len,
        netdev_name: bq_bpf::c_str(&e.ifname.map(|c| c as u8)),
        netdev_ifindex: e.ifindex,
        net_namespace_inum: e.netns_inum,
        pid: e.pid,
        tid: e.tid,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        cpu: e.cpu,
        memory_cgroup_path: None,
    }
}

impl Dropwatch {
    /// Saves one drop, attributed to the running task's container or else the packet's.
    fn save(&self, ctx: &RunContext, e: &drop_event, clock: &BootClock) {
        let (memcg_path, mut container) = ctx.containers().attribute_memcg(e.memcg_id);
        // A drop in softirq context runs on behalf of whoever was interrupted; the packet's
        // network namespace names its container better then.
        if container.is_none() {
            if let Some(c) = ctx.containers().by_netns(e.netns_inum as u64) {
                // The BPF side filtered by the running task's cgroup; apply the container
                // filter to this attribution too.
                if !ctx.containers().filter().allows(&c) {
                    return;
                }
                container = Some(c.fields());
            }
        }
        let reasons = self.reasons.read().unwrap_or_else(|e| e.into_inner());
        let mut data = decode(e, &reasons, |addr| ctx.symbolizer().symbolize(addr));
        drop(reasons);
        data.memory_cgroup_path = memcg_path;
        ctx.save_data_at(clock.wall_ns(e.time_ns), container, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs) from tests/dropwatch.rs: a UDP
    /// datagram `bq-udp-sender` sent to a closed port on lo, then the ICMP port-unreachable
    /// answer to another one that an nftables rule dropped.
    const RECORDS: &str = include_str!("records.hex");

    fn reasons() -> EnumNames {
        EnumNames::from_members(&[(3, "NO_SOCKET".into()), (12, "NETFILTER_DROP".into())])
    }

    #[test]
    fn decodes_a_captured_udp_drop_to_a_closed_port() {
        let e: drop_event = program::captured_record(RECORDS, 0);
        let d = serde_json::to_value(decode(&e, &reasons(), |a| format!("at {a:#x}"))).unwrap();
        assert_eq!(d["drop_reason"], "NO_SOCKET");
        assert_eq!(d["drop_reason_code"], 3);
        assert_eq!(d["drop_location"], format!("at {:#x}", e.location));
        assert_eq!(
            (&d["protocol"], &d["l3_protocol"]),
            (&"udp".into(), &"ipv4".into())
        );
        assert_eq!(
            (&d["saddr"], &d["daddr"]),
            (&"127.0.0.1".into(), &"127.0.0.1".into())
        );
        assert_eq!(d["dport"], 52032);
        assert!(d["sport"].as_u64().unwrap() > 0);
        assert_eq!(d["comm"], "bq-udp-sender");
        assert_eq!(d["netdev_name"], "lo");
        assert_eq!(
            d["packet_len_bytes"], 9,
            "8 bytes of UDP header and one of payload"
        );
        assert!(d.get("tcp_flags").is_none() && d.get("icmp_type").is_none());
        // The registry's path is added by save(), not read from the record.
        assert!(d.get("memory_cgroup_path").is_none());
    }

    #[test]
    fn decodes_a_captured_icmp_port_unreachable() {
        let d = serde_json::to_value(decode(
            &program::captured_record(RECORDS, 1),
            &reasons(),
            |_| String::new(),
        ))
        .unwrap();
        assert_eq!(d["drop_reason"], "NETFILTER_DROP");
        assert_eq!(d["protocol"], "icmp");
        assert_eq!((&d["icmp_type"], &d["icmp_code"]), (&3.into(), &3.into()));
        assert_eq!(d["icmp_type_name"], "destination-unreachable");
        assert_eq!(d["icmp_code_name"], "port-unreachable");
        assert!(d.get("dport").is_none() && d.get("sport").is_none());
    }

    #[test]
    fn flags_text() {
        assert_eq!(tcp_flags_text(0x12), "SYN|ACK");
        assert_eq!(tcp_flags_text(0x04), "RST");
        assert_eq!(tcp_flags_text(0), "");
    }

    #[test]
    fn icmp_names() {
        assert_eq!(icmp_type_name(false, 8), Some("echo-request"));
        assert_eq!(icmp_type_name(true, 128), Some("echo-request"));
        assert_eq!(icmp_type_name(false, 3), Some("destination-unreachable"));
        assert_eq!(icmp_code_name(false, 3, 3), Some("port-unreachable"));
        assert_eq!(icmp_code_name(true, 1, 4), Some("port-unreachable"));
        assert_eq!(icmp_type_name(false, 200), None);
        assert_eq!(icmp_code_name(false, 8, 0), None);
    }

    #[test]
    fn config_validation_names_keys() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.dropwatch",
        };
        let t: toml::Table = toml::from_str("protocols = [\"sctp\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0.contains("events.dropwatch.protocols") && err.0.contains("sctp"),
            "{err}"
        );
        let t: toml::Table = toml::from_str("max_events_per_second = 2000000").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0.contains("events.dropwatch.max_events_per_second"),
            "{err}"
        );
        let t: toml::Table = toml::from_str("ports = [1,2,3,4,5,6,7,8,9]").unwrap();
        assert!(build(&bctx, &t).is_err());
        let t: toml::Table =
            toml::from_str("max_events_per_second = 10\nmax_events_per_second_per_source = 11")
                .unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0
                .contains("events.dropwatch.max_events_per_second_per_source = 11"),
            "{err}"
        );
        let t: toml::Table = toml::from_str("teardown_reasons = [\"queue purge\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.dropwatch.teardown_reasons"), "{err}");
        let t: toml::Table = toml::from_str("max_events = 5").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("max_events"), "{err}");
    }

    #[test]
    fn the_per_source_limit_defaults_to_a_quarter_of_the_global_one() {
        let cfg = |global, per_source| DropwatchConfig {
            max_events_per_second: global,
            max_events_per_second_per_source: per_source,
            ..Default::default()
        };
        assert_eq!(cfg(100, None).per_source_limit(), 25);
        assert_eq!(cfg(3, None).per_source_limit(), 1);
        assert_eq!(cfg(0, None).per_source_limit(), 0, "no limit, no share");
        assert_eq!(cfg(100, Some(0)).per_source_limit(), 0);
        assert_eq!(cfg(100, Some(60)).per_source_limit(), 60);
    }

    #[test]
    fn teardown_reasons_become_bits_of_the_kernels_reason_numbers() {
        let names = EnumNames::from_members(&[
            (3, "NO_SOCKET".into()),
            (4, "SOCKET_CLOSE".into()),
            (104, "QUEUE_PURGE".into()),
        ]);
        let mask = teardown_mask(
            &names,
            &DropwatchConfig::default().teardown_reasons, // TCP_CLOSE is not on this kernel
        );
        assert_eq!(mask[0], 1 << 4);
        assert_eq!(mask[1], 1 << (104 - 64));
        assert!(mask[2..].iter().all(|w| *w == 0));
        assert_eq!(teardown_mask(&names, &[]), [0; TEARDOWN_MASK_WORDS]);
    }

    #[test]
    fn event_struct_matches_c_layout() {
        // 3×u64 + 7×u32 + u16 + 2×u8 + 2×u16 + 4×u8 + 16+16 (addresses) + 16+16 (names).
        assert_eq!(std::mem::size_of::<drop_event>(), 128);
    }
}
