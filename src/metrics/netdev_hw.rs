//! `netdev_hw`: a device's hardware receive drops and error counters from rtnetlink
//! (`RTM_GETLINK` dump, `IFLA_STATS64`), labelled `{device, driver}`. HuaTuo's
//! `netdev_hw_rx_dropped_total` is the NIC's `rx_missed_errors` (frames the hardware had no
//! buffer for); the other families are the driver's error counters under their kernel names.
//! Host only, in the network namespace of the host root's pid 1 (see `host::rtnetlink`).
//! Off by default, as in HuaTuo's shipped configuration.

use std::sync::Mutex;

use anyhow::Result;
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, Stats64};
use netlink_packet_route::RouteNetlinkMessage;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::rtnetlink::RouteConn;
use crate::host::HostRoot;
use crate::tracer::{BuildContext, Collector, Mode, ScrapeContext, Tracer, TracerSpec, TRACERS};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netdev_hw",
    mode: Mode::Metric,
    description: "NIC hardware drops and errors per device (rtnetlink IFLA_STATS64), host",
    requires: &[],
    default_enabled: false,
    build,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct NetdevHwConfig {
    device_include: Option<String>,
    device_exclude: Option<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetdevHwConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(NetdevHw {
        host: ctx.host.clone(),
        filter: Filter::new(
            ctx.section,
            "device_include",
            cfg.device_include.as_deref(),
            "device_exclude",
            cfg.device_exclude.as_deref(),
        )?,
        conn: Mutex::new(None),
    })))
}

struct NetdevHw {
    host: HostRoot,
    filter: Filter,
    conn: Mutex<Option<RouteConn>>,
}

/// One device's counters, as the kernel reported them.
#[derive(Debug, Clone)]
pub struct LinkRow {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_INFO_KIND` of a virtual device (veth, bridge…), the driver of one without sysfs.
    pub kind: Option<String>,
    pub stats: Stats64,
}

/// The row of a `RTM_NEWLINK` message: None without a name or 64-bit statistics.
pub fn link_row(msg: &LinkMessage) -> Option<LinkRow> {
    let mut name = None;
    let mut stats = None;
    let mut kind = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Stats64(s) => stats = Some(*s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        kind = Some(match k {
                            InfoKind::Other(s) => s.clone(),
                            k => k.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    Some(LinkRow {
        ifindex: msg.header.index,
        name: name?,
        kind,
        stats: stats?,
    })
}

type Family = (&'static str, &'static str, fn(&Stats64) -> u64);

const FAMILIES: [Family; 12] = [
    (
        "rx_dropped_total",
        "Frames the NIC dropped for lack of receive buffers (rx_missed_errors; HuaTuo's name).",
        |s| s.rx_missed_errors,
    ),
    (
        "rx_missed_errors_total",
        "Frames the NIC missed for lack of receive buffers.",
        |s| s.rx_missed_errors,
    ),
    ("rx_fifo_errors_total", "Receive FIFO overruns.", |s| {
        s.rx_fifo_errors
    }),
    (
        "rx_over_errors_total",
        "Receive ring buffer overflows.",
        |s| s.rx_over_errors,
    ),
    (
        "rx_crc_errors_total",
        "Frames received with a CRC error.",
        |s| s.rx_crc_errors,
    ),
    (
        "rx_frame_errors_total",
        "Frames received with an alignment error.",
        |s| s.rx_frame_errors,
    ),
    (
        "rx_length_errors_total",
        "Frames received with a bad length.",
        |s| s.rx_length_errors,
    ),
    (
        "rx_errors_total",
        "Receive errors in total, as the driver counts them.",
        |s| s.rx_errors,
    ),
    (
        "rx_device_dropped_total",
        "Received packets the driver and the core dropped (the device's rx_dropped).",
        |s| s.rx_dropped,
    ),
    (
        "tx_errors_total",
        "Transmit errors in total, as the driver counts them.",
        |s| s.tx_errors,
    ),
    ("tx_fifo_errors_total", "Transmit FIFO underruns.", |s| {
        s.tx_fifo_errors
    }),
    ("tx_carrier_errors_total", "Transmit carrier errors.", |s| {
        s.tx_carrier_errors
    }),
];

impl NetdevHw {
    /// The driver bound to the device in sysfs, else its link kind, else "".
    fn driver(&self, row: &LinkRow) -> String {
        let link = self
            .host
            .sys(&format!("class/net/{}/device/driver", row.name));
        std::fs::read_link(link)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .or_else(|| row.kind.clone())
            .unwrap_or_default()
    }
}

impl Collector for NetdevHw {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let mut rows = Vec::new();
        {
            let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = RouteConn::open(&self.host)?;
            }
            let Some(conn) = guard.as_mut() else {
                return Ok(());
            };
            let got = conn.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), |m| {
                if let RouteNetlinkMessage::NewLink(l) = m {
                    rows.extend(link_row(&l));
                }
            });
            if got.is_err() {
                // Reopen next time: the socket may hold stale replies.
                *guard = None;
            }
            got?;
        }
        rows.retain(|r| self.filter.matches(&r.name));
        rows.sort_by_key(|r| r.ifindex);
        let drivers: Vec<String> = rows.iter().map(|r| self.driver(r)).collect();
        for (name, help, get) in FAMILIES {
            out.family(name, help, Kind::Counter);
            for (r, driver) in rows.iter().zip(&drivers) {
                out.sample(
                    &[("device", r.name.as_str()), ("driver", driver.as_str())],
                    get(&r.stats) as f64,
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(index: u32, attrs: Vec<LinkAttribute>) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes = attrs;
        m
    }

    #[test]
    fn rows_take_name_kind_and_stats64() {
        let mut s = Stats64::default();
        s.rx_missed_errors = 7;
        s.rx_fifo_errors = 3;
        s.rx_dropped = 11;
        let m = msg(
            4,
            vec![
                LinkAttribute::IfName("veth0".into()),
                LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
                LinkAttribute::Stats64(s),
            ],
        );
        let r = link_row(&m).unwrap();
        assert_eq!((r.ifindex, r.name.as_str()), (4, "veth0"));
        assert_eq!(r.kind.as_deref(), Some("veth"));
        let got: Vec<(&str, u64)> = FAMILIES.iter().map(|(n, _, g)| (*n, g(&r.stats))).collect();
        assert_eq!(got[0], ("rx_dropped_total", 7));
        assert!(got.contains(&("rx_fifo_errors_total", 3)));
        assert!(got.contains(&("rx_device_dropped_total", 11)));
    }

    /// The link dump a 6.x kernel sent in a fresh network namespace with lo and a veth pair
    /// (the capture netdev_events' tests also read).
    #[test]
    fn captured_link_dump_gives_every_device_with_stats() {
        use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
        let path = format!(
            "{}/tests/fixtures/netlink/link_dump.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        let buf = std::fs::read(&path).unwrap();
        let mut rows = Vec::new();
        let mut off = 0;
        while off < buf.len() {
            let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]).unwrap();
            if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = &m.payload {
                rows.extend(link_row(l));
            }
            off += (m.header.length as usize + 3) & !3;
        }
        let got: Vec<(u32, &str, Option<&str>, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.ifindex,
                    r.name.as_str(),
                    r.kind.as_deref(),
                    r.stats.rx_missed_errors,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (1, "lo", None, 0),
                (2, "veth1", Some("veth"), 0),
                (3, "veth0", Some("veth"), 0)
            ]
        );
    }

    #[test]
    fn rows_need_a_name_and_stats() {
        let no_stats = msg(1, vec![LinkAttribute::IfName("lo".into())]);
        assert!(link_row(&no_stats).is_none());
        let no_name = msg(1, vec![LinkAttribute::Stats64(Stats64::default())]);
        assert!(link_row(&no_name).is_none());
        let lo = msg(
            1,
            vec![
                LinkAttribute::IfName("lo".into()),
                LinkAttribute::Stats64(Stats64::default()),
            ],
        );
        assert_eq!(link_row(&lo).unwrap().kind, None);
    }
}
