//! `tcp_retransmit`: TCP retransmissions, with the connection phase (connect, data, close) and
//! the reason (RTO, fast retransmit, SYN-ACK).
//!
//! Hooks: `tp_btf/tcp_retransmit_skb` and `tp_btf/tcp_retransmit_synack`. Every retransmission
//! is counted in BPF; records pass a rate limit first. TCP and congestion-avoidance state names
//! come from kernel BTF; the phase follows from the socket state and the segment's SYN/FIN
//! flags, the reason from the congestion-avoidance state (Loss: the retransmission timer fired;
//! Recovery: duplicate ACKs/SACK started a fast retransmit).

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::RwLock;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::bpf::btf::{self, EnumNames};
use crate::bpf::{self as bq_bpf, BootClock, Plain};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::program::{self, BpfProgram, Refused};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("tcp_retransmit", OpenTcpRetransmitSkel);
}
use skel::types::{counter_slot as Slot, retrans_event, retrans_kind};
use skel::TcpRetransmitSkelBuilder;

// SAFETY: generated from tcp_retransmit.h: integers and arrays of integers only.
unsafe impl Plain for retrans_event {}

const AF_INET6: u16 = 10;
// TCP header flag bits (wire format, as in tcp_skb_cb::tcp_flags).
const TCPHDR_FIN: u8 = 0x01;
const TCPHDR_SYN: u8 = 0x02;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "tcp_retransmit",
    mode: Mode::Event,
    description: "TCP retransmissions (tp_btf/tcp_retransmit_skb, tcp_retransmit_synack): 4-tuple, state, phase, reason, netns",
    requires: &[
        Requirement::BPF,
        Requirement::Btf,
        Requirement::BtfTracepoint("tcp_retransmit_skb"),
        Requirement::BtfTracepoint("tcp_retransmit_synack"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpRetransmitConfig {
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
}

impl Default for TcpRetransmitConfig {
    fn default() -> Self {
        TcpRetransmitConfig {
            max_events_per_second: 100,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: TcpRetransmitConfig = parse_section(ctx.section, table)?;
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        1_000_000,
    )?;
    Ok(Tracer::Event(Box::new(TcpRetransmit {
        cfg,
        names: RwLock::new(Names::default()),
        counters: Default::default(),
    })))
}

#[derive(Default)]
struct Names {
    tcp_states: EnumNames,
    ca_states: EnumNames,
}

pub struct TcpRetransmit {
    cfg: TcpRetransmitConfig,
    names: RwLock<Names>,
    counters: crate::bpf::counters::CountersCell,
}

fn load_names() -> Result<Names> {
    Ok(Names {
        tcp_states: EnumNames::from_members(&btf::enum_members_with("TCP_ESTABLISHED", "TCP_")?),
        ca_states: EnumNames::from_members(&btf::enum_members("tcp_ca_state", "TCP_CA_")?),
    })
}

impl EventTracer for TcpRetransmit {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        match load_names() {
            Ok(n) => *self.names.write().unwrap_or_else(|e| e.into_inner()) = n,
            Err(e) => {
                tracing::warn!(tracer = "tcp_retransmit", error = %format!("{e:#}"), "TCP states will be numbers")
            }
        }
        let mut storage = MaybeUninit::uninit();
        BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .ring_buffer::<retrans_event>(self.cfg.max_events_per_second)
            .load(TcpRetransmitSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                Ok(())
            })?
            .attach(&[])?
            .poll(|e: &retrans_event, clock| self.save(ctx, e, clock))?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "TCP retransmissions, by tracepoint (segment or SYN-ACK), before the rate limit.",
            Kind::Counter,
        )
        .sample(
            &[("event", "tcp_retransmit_skb")],
            c.get(Slot::SLOT_SKB.0 as usize) as f64,
        )
        .sample(
            &[("event", "tcp_retransmit_synack")],
            c.get(Slot::SLOT_SYNACK.0 as usize) as f64,
        );
        Refused::new(
            "TCP retransmissions",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .write(&c, out);
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct RetransData {
    phase: &'static str,
    tcp_reason: &'static str,
    tcp_state: String,
    ca_state: String,
    l3_protocol: &'static str,
    tcp_saddr: String,
    tcp_sport: u16,
    tcp_daddr: String,
    tcp_dport: u16,
    tcp_seq: u32,
    tcp_end_seq: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_snd_una: Option<u32>,
    tcp_flags: String,
    /// Retransmissions of this segment (icsk_retransmits) or SYN-ACK (num_retrans) so far.
    retransmits: u8,
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    err: Option<i32>,
    net_namespace_inum: u32,
    /// The task running when it happened (a timer or softirq runs on top of anything).
    comm: String,
    pid: u32,
}

/// `connect`, `data` or `close`, from the TCP state name and the segment's flags.
pub fn phase(synack: bool, state: &str, flags: u8) -> &'static str {
    if synack
        || flags & TCPHDR_SYN != 0
        || matches!(state, "SYN_SENT" | "SYN_RECV" | "NEW_SYN_RECV")
    {
        "connect"
    } else if flags & TCPHDR_FIN != 0
        || matches!(
            state,
            "FIN_WAIT1" | "FIN_WAIT2" | "CLOSING" | "LAST_ACK" | "TIME_WAIT" | "CLOSE"
        )
    {
        "close"
    } else {
        "data"
    }
}

/// `RTO`, `fast_retransmit`, `synack` or `unknown`, from the congestion-avoidance state name.
pub fn reason(synack: bool, ca_state: &str) -> &'static str {
    if synack {
        "synack"
    } else {
        match ca_state {
            "Loss" => "RTO",
            "Recovery" => "fast_retransmit",
            _ => "unknown",
        }
    }
}

fn flags_text(flags: u8) -> String {
    const NAMES: [&str; 8] = ["FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"];
    NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| flags & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect::<Vec<_>>()
        .join("|")
}

/// One retransmission as the kernel reported it, with names (no lookups: what the record says
/// alone).
fn decode(e: &retrans_event, names: &Names) -> RetransData {
    let synack = u32::from(e.event) == retrans_kind::EVENT_SYNACK.0;
    let state = names.tcp_states.name(e.state as u32);
    let ca_state = names.ca_states.name(e.ca_state as u32);
    let v6 = e.family == AF_INET6;
    let addr = |b: &[u8; 16]| -> String {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(*b)).to_string()
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])).to_string()
        }
    };
    RetransData {
        phase: phase(synack, &state, e.tcp_flags),
        tcp_reason: reason(synack, &ca_state),
        tcp_state: state.into_owned(),
        ca_state: if synack {
            String::new()
        } else {
            ca_state.into_owned()
        },
        l3_protocol: if v6 { "ipv6" } else { "ipv4" },
        tcp_saddr: addr(&e.saddr),
        tcp_sport: e.sport,
        tcp_daddr: addr(&e.daddr),
        tcp_dport: e.dport,
        tcp_seq: e.seq,
        tcp_end_seq: e.end_seq,
        tcp_snd_una: (!synack).then_some(e.snd_una),
        tcp_flags: flags_text(e.tcp_flags),
        retransmits: e.retransmits,
        event_type: if synack {
            "tcp_retransmit_synack"
        } else {
            "tcp_retransmit_skb"
        },
        err: (!synack).then_some(e.err),
        net_namespace_inum: e.netns_inum,
        comm: bq_bpf::c_str(&e.comm.map(|c| c as u8)),
        pid: e.pid,
    }
}

impl TcpRetransmit {
    /// Saves one retransmission, attributed to the container of the socket's network namespace.
    fn save(&self, ctx: &RunContext, e: &retrans_event, clock: &BootClock) {
        let data = decode(e, &self.names.read().unwrap_or_else(|e| e.into_inner()));
        let container = ctx.container_of_netns(e.netns_inum);
        ctx.save_data_at(clock.wall_ns(e.time_ns), container, &data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs) from tests/tcp_retransmit.rs:
    /// a 1000-byte data segment that iptables dropped once, then a dropped SYN.
    const RECORDS: &str = include_str!("records.hex");

    fn decoded(n: usize) -> RetransData {
        let e: retrans_event = program::captured_record(RECORDS, n);
        // The values of the kernel this was captured on (its BTF).
        let names = Names {
            tcp_states: EnumNames::from_members(&[
                (1, "ESTABLISHED".into()),
                (2, "SYN_SENT".into()),
            ]),
            ca_states: EnumNames::from_members(&[
                (0, "Open".into()),
                (3, "Recovery".into()),
                (4, "Loss".into()),
            ]),
        };
        decode(&e, &names)
    }

    #[test]
    fn decodes_a_captured_data_retransmission() {
        let d = decoded(0);
        assert_eq!((d.phase, d.tcp_reason), ("data", "fast_retransmit"));
        assert_eq!(
            (d.tcp_state.as_str(), d.ca_state.as_str()),
            ("ESTABLISHED", "Recovery")
        );
        assert_eq!(d.event_type, "tcp_retransmit_skb");
        assert_eq!(
            (d.tcp_saddr.as_str(), d.tcp_daddr.as_str()),
            ("10.129.64.1", "10.129.64.2")
        );
        assert_eq!(d.tcp_end_seq.wrapping_sub(d.tcp_seq), 1000);
        assert_eq!(d.tcp_flags, "PSH|ACK");
        assert_eq!((d.err, d.l3_protocol), (Some(0), "ipv4"));
    }

    #[test]
    fn decodes_a_captured_syn_retransmission() {
        let d = decoded(1);
        assert_eq!((d.phase, d.tcp_reason), ("connect", "RTO"));
        assert_eq!(
            (d.tcp_state.as_str(), d.ca_state.as_str()),
            ("SYN_SENT", "Loss")
        );
        assert_eq!(d.tcp_flags, "SYN");
        assert_eq!(
            d.tcp_end_seq.wrapping_sub(d.tcp_seq),
            1,
            "a SYN takes one sequence number"
        );
        assert_eq!(d.retransmits, 1);
    }

    #[test]
    fn phases_and_reasons() {
        assert_eq!(phase(false, "SYN_SENT", TCPHDR_SYN), "connect");
        assert_eq!(phase(true, "NEW_SYN_RECV", 0), "connect");
        assert_eq!(phase(false, "ESTABLISHED", 0x18), "data");
        assert_eq!(phase(false, "CLOSE_WAIT", 0x10), "data");
        assert_eq!(phase(false, "ESTABLISHED", TCPHDR_FIN | 0x10), "close");
        assert_eq!(phase(false, "LAST_ACK", 0x10), "close");
        assert_eq!(reason(false, "Loss"), "RTO");
        assert_eq!(reason(false, "Recovery"), "fast_retransmit");
        assert_eq!(reason(false, "Open"), "unknown");
        assert_eq!(reason(true, ""), "synack");
        assert_eq!(flags_text(0x18), "PSH|ACK");
    }

    #[test]
    fn state_names_come_from_btf() {
        let n = load_names().unwrap();
        let states: Vec<String> = (0..16).map(|v| n.tcp_states.name(v).into_owned()).collect();
        assert!(states.contains(&"SYN_SENT".to_string()), "{states:?}");
        assert!(states.contains(&"ESTABLISHED".to_string()));
        let ca: Vec<String> = (0..5).map(|v| n.ca_states.name(v).into_owned()).collect();
        assert!(ca.contains(&"Loss".to_string()), "{ca:?}");
        assert!(ca.contains(&"Recovery".to_string()), "{ca:?}");
    }
}
