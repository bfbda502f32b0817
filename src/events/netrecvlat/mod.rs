//! `netrecvlat`: received packets that were slow to get through the stack: from their receive
//! timestamp to entering the stack (`netif`), to TCP processing (`tcp`), or to the copy into
//! the reading process (`usercopy`), each stage with its own threshold.
//!
//! Hooks: `tp_btf/netif_receive_skb`, `tp_btf/tcp_probe` (HuaTuo uses a kprobe on
//! `tcp_v4_rcv`) and `tp_btf/skb_copy_datagram_iovec`. Latency is measured against
//! `skb->tstamp`, so the tracer keeps a socket with `SO_TIMESTAMPNS` open while it runs: that
//! turns the kernel's software RX timestamps on for every packet. Packets sent by a local TCP
//! socket carry their departure time (monotonic clock) instead, which the BPF side reads as such.
//! Past the local delivery the stack restamps such packets, so for them `tcp` and `usercopy`
//! count from the local delivery.

use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

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
    crate::bpf_skeleton!("netrecvlat", OpenNetrecvlatSkel);
}
use skel::types::{counter_slot as Slot, netrecv_event, recv_stage, tstamp_clock};
use skel::NetrecvlatSkelBuilder;

// SAFETY: generated from netrecvlat.h: integers and arrays of integers only.
unsafe impl Plain for netrecv_event {}

const STAGE_COUNT: usize = recv_stage::STAGES.0 as usize;
/// The label of each stage.
const STAGE_NAMES: [(recv_stage, &str); STAGE_COUNT] = [
    (recv_stage::STAGE_NETIF, "netif"),
    (recv_stage::STAGE_TCP, "tcp"),
    (recv_stage::STAGE_USERCOPY, "usercopy"),
];

fn stage_name(stage: u32) -> &'static str {
    STAGE_NAMES
        .iter()
        .find(|(s, _)| s.0 == stage)
        .map_or("unknown", |(_, name)| name)
}

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netrecvlat",
    mode: Mode::Event,
    description: "slow packet receive per stage (tp_btf/netif_receive_skb, tcp_probe, skb_copy_datagram_iovec): latency, 5-tuple, netdev, netns, reader",
    requires: &[
        Requirement::BPF,
        Requirement::Btf,
        Requirement::BtfTracepoint("netif_receive_skb"),
        Requirement::BtfTracepoint("tcp_probe"),
        Requirement::BtfTracepoint("skb_copy_datagram_iovec"),
    ],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetrecvlatConfig {
    /// Receive timestamp → entering the stack.
    pub netif_threshold_ms: u64,
    /// Receive timestamp → TCP processing.
    pub tcp_threshold_ms: u64,
    /// Receive timestamp → copied to the reading process.
    pub usercopy_threshold_ms: u64,
    /// Records per second at most (0 = no limit); the rest are counted as suppressed.
    pub max_events_per_second: u32,
    /// Leave out packets in the host's network namespace (containers only).
    pub exclude_host_netns: bool,
}

impl Default for NetrecvlatConfig {
    fn default() -> Self {
        NetrecvlatConfig {
            netif_threshold_ms: 5,
            tcp_threshold_ms: 10,
            usercopy_threshold_ms: 115,
            max_events_per_second: 100,
            exclude_host_netns: false,
        }
    }
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetrecvlatConfig = parse_section(ctx.section, table)?;
    for (key, v) in [
        ("netif_threshold_ms", cfg.netif_threshold_ms),
        ("tcp_threshold_ms", cfg.tcp_threshold_ms),
        ("usercopy_threshold_ms", cfg.usercopy_threshold_ms),
    ] {
        check_range(&format!("{}.{key}", ctx.section), v, 1, 60_000)?;
    }
    check_range(
        &format!("{}.max_events_per_second", ctx.section),
        cfg.max_events_per_second,
        0,
        100_000,
    )?;
    Ok(Tracer::Event(Box::new(Netrecvlat {
        cfg,
        counters: Default::default(),
    })))
}

pub struct Netrecvlat {
    cfg: NetrecvlatConfig,
    counters: crate::bpf::counters::CountersCell,
}

impl Netrecvlat {
    /// Each stage's threshold, indexed by stage (the layout of the `threshold_ns` rodata).
    fn thresholds_ns(&self) -> [u64; STAGE_COUNT] {
        let mut ns = [0; STAGE_COUNT];
        for (stage, ms) in [
            (recv_stage::STAGE_NETIF, self.cfg.netif_threshold_ms),
            (recv_stage::STAGE_TCP, self.cfg.tcp_threshold_ms),
            (recv_stage::STAGE_USERCOPY, self.cfg.usercopy_threshold_ms),
        ] {
            ns[stage.0 as usize] = ms * 1_000_000;
        }
        ns
    }
}

/// A UDP socket with SO_TIMESTAMPNS: while it is open, the kernel stamps every received packet.
fn rx_timestamps_on() -> Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket for RX timestamps");
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let on: libc::c_int = 1;
    // SAFETY: valid fd, pointer and length of a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("SO_TIMESTAMPNS");
    }
    Ok(fd)
}

fn realtime_minus_monotonic_ns() -> i64 {
    let mut rt = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let mut mono = rt;
    // SAFETY: valid, writable timespecs.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut mono);
        libc::clock_gettime(libc::CLOCK_REALTIME, &mut rt);
    }
    (rt.tv_sec - mono.tv_sec) * 1_000_000_000 + (rt.tv_nsec - mono.tv_nsec)
}

fn host_netns_inum(ctx: &RunContext) -> u32 {
    crate::procfs::pid_ns::net_inum(&ctx.host().proc(""), 1) as u32
}

impl EventTracer for Netrecvlat {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let _timestamps = rx_timestamps_on()?;
        let thresholds = self.thresholds_ns();
        let mut storage = MaybeUninit::uninit();
        let mut loaded = BpfProgram::new(ctx)
            .counters(&self.counters, Slot::COUNTER_SLOTS.0)
            .ring_buffer::<netrecv_event>(self.cfg.max_events_per_second)
            .load(NetrecvlatSkelBuilder::default(), &mut storage, |open| {
                let rodata = program::rodata(open.maps.rodata_data.as_deref_mut())?;
                rodata.threshold_ns = thresholds;
                rodata.max_events_per_second = self.cfg.max_events_per_second;
                rodata.exclude_netns_inum = if self.cfg.exclude_host_netns {
                    host_netns_inum(ctx)
                } else {
                    0
                };
                Ok(())
            })?;
        // The BPF side reads the realtime clock's offset from .bss; the wall clock may be
        // stepped or slewed, so every poll round refreshes it.
        let bss = loaded
            .skel
            .maps
            .bss_data
            .take()
            .context("BPF object has no .bss")?;
        bss.realtime_offset_ns = realtime_minus_monotonic_ns();
        loaded.attach(&[])?.poll_with_tick(
            |e: &netrecv_event, clock| save(ctx, e, clock, &thresholds),
            || bss.realtime_offset_ns = realtime_minus_monotonic_ns(),
        )?;
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Received packets at or over their stage's latency threshold, by stage.",
            Kind::Counter,
        );
        for (stage, name) in STAGE_NAMES {
            let slot = Slot::SLOT_SLOW.0 + stage.0;
            out.sample(&[("stage", name)], c.get(slot as usize) as f64);
        }
        Refused::new(
            "Slow packets",
            Slot::SLOT_SUPPRESSED.0,
            Slot::SLOT_RINGBUF_FULL.0,
        )
        .write(&c, out);
        out.single(
            "excluded_total",
            "Slow packets in the host network namespace, left out by exclude_host_netns.",
            Kind::Counter,
            c.get(Slot::SLOT_EXCLUDED.0 as usize) as f64,
        );
        Ok(())
    }
}

#[derive(Debug, Serialize)]
struct RecvData {
    latency_stage: &'static str,
    latency_ns: u64,
    latency_threshold_ns: u64,
    protocol: String,
    l3_protocol: &'static str,
    /// The packet's source (the sender) and destination (this host).
    saddr: String,
    daddr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_seq: Option<u32>,
    #[serde(skip_serializing_if = "String::is_empty")]
    netdev_name: String,
    netdev_ifindex: u32,
    net_namespace_inum: u32,
    /// The reading process (usercopy stage only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm: Option<String>,
    packet_len_bytes: u32,
    /// Clock of the packet's timestamp: `realtime` (stamped on receive) or `monotonic`
    /// (departure time of a local sender).
    timestamp_clock: &'static str,
}

/// One slow packet as the kernel reported it (no lookups: what the record says alone).
fn decode(e: &netrecv_event, thresholds: &[u64; STAGE_COUNT]) -> RecvData {
    let v6 = e.l3_proto == 0x86dd;
    let addr = |b: &[u8; 16]| -> String {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(*b)).to_string()
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])).to_string()
        }
    };
    let ports = matches!(e.l4_proto, 6 | 17);
    let usercopy = e.stage == recv_stage::STAGE_USERCOPY.0;
    RecvData {
        latency_stage: stage_name(e.stage),
        latency_ns: e.latency_ns,
        latency_threshold_ns: thresholds.get(e.stage as usize).copied().unwrap_or(0),
        protocol: match e.l4_proto {
            6 => "tcp".into(),
            17 => "udp".into(),
            n => n.to_string(),
        },
        l3_protocol: if v6 { "ipv6" } else { "ipv4" },
        saddr: addr(&e.saddr),
        daddr: addr(&e.daddr),
        sport: ports.then_some(e.sport),
        dport: ports.then_some(e.dport),
        tcp_seq: (e.l4_proto == 6).then_some(e.tcp_seq),
        netdev_name: bq_bpf::c_str(&e.ifname.map(|c| c as u8)),
        netdev_ifindex: e.ifindex,
        net_namespace_inum: e.netns_inum,
        pid: usercopy.then_some(e.pid),
        tid: usercopy.then_some(e.tid),
        comm: usercopy.then(|| bq_bpf::c_str(&e.comm.map(|c| c as u8))),
        packet_len_bytes: e.len,
        timestamp_clock: match tstamp_clock(e.clock.into()) {
            tstamp_clock::TSTAMP_MONOTONIC => "monotonic",
            tstamp_clock::TSTAMP_TAI => "tai",
            _ => "realtime",
        },
    }
}

/// Saves one slow packet, attributed to the container of its network namespace.
fn save(ctx: &RunContext, e: &netrecv_event, clock: &BootClock, thresholds: &[u64; STAGE_COUNT]) {
    let container = ctx.container_of_netns(e.netns_inum);
    ctx.save_data_at(clock.wall_ns(e.time_ns), container, &decode(e, thresholds));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured with `BIANQUE_CAPTURE_DIR` (tracer/program.rs) from tests/netrecvlat.rs: data
    /// that waited in the socket of a receiver (`bq-nrl-rx`) sleeping before its first read
    /// (thresholds at 1 ms), then the same past 115 ms at the default thresholds.
    const RECORDS: &str = include_str!("records.hex");

    fn captured(n: usize) -> netrecv_event {
        program::captured_record(RECORDS, n)
    }

    #[test]
    fn decodes_a_captured_late_read() {
        let d = decode(&captured(0), &[1_000_000; STAGE_COUNT]);
        assert_eq!(d.latency_stage, "usercopy");
        assert_eq!(d.latency_threshold_ns, 1_000_000);
        assert!(d.latency_ns >= d.latency_threshold_ns);
        assert_eq!((d.protocol.as_str(), d.l3_protocol), ("tcp", "ipv4"));
        // The packet's source is the sender, outside the receiver's namespace.
        assert_eq!(
            (d.saddr.as_str(), d.daddr.as_str()),
            ("10.39.134.1", "10.39.134.2")
        );
        assert_eq!((d.sport, d.dport), (Some(48780), Some(43453)));
        assert_eq!(d.comm.as_deref(), Some("bq-nrl-rx"));
        assert!(d.pid.is_some() && d.tid.is_some());
        assert_eq!(d.timestamp_clock, "realtime");
        // The copy stage has no device (skb->dev is scratch there): only the input ifindex.
        assert!(d.netdev_name.is_empty() && d.netdev_ifindex > 0);
    }

    #[test]
    fn decodes_a_captured_read_past_the_default_threshold() {
        let netrecvlat = Netrecvlat {
            cfg: NetrecvlatConfig::default(),
            counters: Default::default(),
        };
        let d = decode(&captured(1), &netrecvlat.thresholds_ns());
        assert_eq!(d.latency_stage, "usercopy");
        assert_eq!(d.latency_threshold_ns, 115_000_000);
        assert!(d.latency_ns >= 115_000_000, "{}", d.latency_ns);
        assert_eq!(d.comm.as_deref(), Some("bq-nrl-late"));
        assert_eq!(stage_name(recv_stage::STAGES.0), "unknown");
    }

    #[test]
    fn config_names_the_key() {
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.netrecvlat",
        };
        let t: toml::Table = toml::from_str("tcp_threshold_ms = 0").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(
            err.0.contains("events.netrecvlat.tcp_threshold_ms"),
            "{err}"
        );
        let t: toml::Table = toml::from_str(
            "netif_threshold_ms = 1\ntcp_threshold_ms = 1\nusercopy_threshold_ms = 1",
        )
        .unwrap();
        assert!(build(&bctx, &t).is_ok());
    }

    #[test]
    fn offset_is_near_the_epoch_distance() {
        let off = realtime_minus_monotonic_ns();
        assert!(off > 1_600_000_000_000_000_000 - 10i64.pow(18), "{off}");
    }
}
