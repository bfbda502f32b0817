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
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use serde::{Deserialize, Serialize};

use crate::bpf::{self as bq_bpf};
use crate::config::{check_range, parse_section, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, Requirement, RunContext, Tracer, TracerError, TracerSpec,
    TRACERS,
};

mod skel {
    #![allow(clippy::all, non_camel_case_types, dead_code, unused_imports)]
    crate::bpf_skeleton!("netrecvlat");
}
use skel::types::netrecv_event;
use skel::NetrecvlatSkelBuilder;

// Mirrors netrecvlat.h.
const STAGES: [&str; 3] = ["netif", "tcp", "usercopy"];
const STAGE_USERCOPY: u32 = 2;
const SLOT_SUPPRESSED: usize = 3;
const SLOT_RINGBUF_FULL: usize = 4;
const SLOT_EXCLUDED: usize = 5;
const COUNTER_SLOTS: u32 = 6;

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netrecvlat",
    mode: Mode::Event,
    description: "slow packet receive per stage (tp_btf/netif_receive_skb, tcp_probe, skb_copy_datagram_iovec): latency, 5-tuple, netdev, netns, reader",
    requires: &[
        Requirement::Root,
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
    fn thresholds_ns(&self) -> [u64; 3] {
        [
            self.cfg.netif_threshold_ms * 1_000_000,
            self.cfg.tcp_threshold_ms * 1_000_000,
            self.cfg.usercopy_threshold_ms * 1_000_000,
        ]
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
    crate::container::netns_inum(ctx.host(), 1) as u32
}

impl EventTracer for Netrecvlat {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let _timestamps = rx_timestamps_on()?;
        let mut storage = MaybeUninit::uninit();
        let mut open = NetrecvlatSkelBuilder::default()
            .open(&mut storage)
            .context("opening the BPF object")?;
        let rodata = open
            .maps
            .rodata_data
            .as_deref_mut()
            .context("BPF object has no .rodata")?;
        rodata.threshold_ns = self.thresholds_ns();
        rodata.max_events_per_second = self.cfg.max_events_per_second;
        rodata.exclude_netns_inum = if self.cfg.exclude_host_netns {
            host_netns_inum(ctx)
        } else {
            0
        };
        rodata.counter_slots = COUNTER_SLOTS;
        bq_bpf::size_ring_buffer(
            &mut open.maps.events,
            self.cfg.max_events_per_second,
            std::mem::size_of::<netrecv_event>(),
        )?;
        self.counters
            .prepare(&mut open.maps.counters, COUNTER_SLOTS)?;
        let mut skel = open.load().context("loading the BPF program")?;
        self.counters.adopt(&skel.maps.counters, COUNTER_SLOTS)?;
        let data = skel
            .maps
            .bss_data
            .as_deref_mut()
            .context("BPF object has no .bss")?;
        data.realtime_offset_ns = realtime_minus_monotonic_ns();
        let _links = [
            skel.progs.bq_netif_receive_skb.attach(),
            skel.progs.bq_tcp_probe.attach(),
            skel.progs.bq_skb_copy_datagram_iovec.attach(),
        ]
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("attaching to the receive tracepoints")?;
        ctx.attached();

        let clock_offset = bq_bpf::boottime_to_wall_offset_ns();
        let thresholds = self.thresholds_ns();
        let mut data = skel.maps.bss_data.as_deref_mut();
        bq_bpf::poll_ring_buffer_with_tick(
            &|| ctx.stopping(),
            &skel.maps.events,
            |raw| {
                if let Some(e) = bq_bpf::read_record::<netrecv_event>(raw) {
                    record(ctx, &e, clock_offset, &thresholds);
                }
                0
            },
            // The wall clock may be stepped or slewed: keep the offset current.
            || {
                if let Some(d) = data.as_deref_mut() {
                    d.realtime_offset_ns = realtime_minus_monotonic_ns();
                }
            },
        )?;
        Ok(())
    }

    fn collect(&self, out: &mut MetricSink) -> Result<()> {
        let Some(c) = self.counters.get() else {
            return Ok(());
        };
        out.family(
            "events_total",
            "Received packets at or over their stage's latency threshold, by stage.",
            Kind::Counter,
        );
        for (i, stage) in STAGES.iter().enumerate() {
            out.sample(&[("stage", stage)], c.get(i) as f64);
        }
        out.single(
            "suppressed_total",
            "Slow packets not recorded because of the rate limit.",
            Kind::Counter,
            c.get(SLOT_SUPPRESSED) as f64,
        );
        out.single(
            "ringbuf_lost_total",
            "Slow packets that passed the rate limit but found the ring buffer full.",
            Kind::Counter,
            c.get(SLOT_RINGBUF_FULL) as f64,
        );
        out.single(
            "excluded_total",
            "Slow packets in the host network namespace, left out by exclude_host_netns.",
            Kind::Counter,
            c.get(SLOT_EXCLUDED) as f64,
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

fn record(ctx: &RunContext, e: &netrecv_event, clock_offset: i64, thresholds: &[u64; 3]) {
    let v6 = e.l3_proto == 0x86dd;
    let addr = |b: &[u8; 16]| -> String {
        if v6 {
            IpAddr::V6(Ipv6Addr::from(*b)).to_string()
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])).to_string()
        }
    };
    let ports = matches!(e.l4_proto, 6 | 17);
    let usercopy = e.stage == STAGE_USERCOPY;
    let data = RecvData {
        latency_stage: STAGES.get(e.stage as usize).copied().unwrap_or("unknown"),
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
        timestamp_clock: match e.clock {
            1 => "monotonic",
            2 => "tai",
            _ => "realtime",
        },
    };
    let container = ctx.container_of_netns(e.netns_inum);
    ctx.save_data_at(e.time_ns as i64 + clock_offset, container, &data);
}

// SAFETY: generated from the tracer's C header: integers and arrays of integers only.
unsafe impl crate::bpf::Plain for netrecv_event {}

#[cfg(test)]
mod tests {
    use super::*;

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
