//! `netdev_qdisc`: statistics of each device's root queueing discipline from rtnetlink
//! (`RTM_GETQDISC` dump, HuaTuo's source and names): bytes, packets, drops, requeues,
//! overlimits, queue length and backlog, labelled `{device, kind}`. Host only: the socket lives
//! in the network namespace of the host root's pid 1 (our own where pid 1 is out of reach on
//! the real root; nothing on a host root without one, e.g. a fixture tree). `noqueue` qdiscs
//! are skipped (HuaTuo).

use std::sync::Mutex;

use anyhow::Result;
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};
use netlink_packet_route::RouteNetlinkMessage;

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
use crate::host::rtnetlink::RouteConn;
use crate::host::HostRoot;
use crate::tracer::{BuildContext, Collector, Mode, ScrapeContext, Tracer, TracerSpec, TRACERS};

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netdev_qdisc",
    mode: Mode::Metric,
    description: "root qdisc statistics per device (rtnetlink RTM_GETQDISC), host",
    requires: &[],
    default_enabled: true,
    build,
};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
struct QdiscConfig {
    device_include: Option<String>,
    device_exclude: Option<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: QdiscConfig = crate::config::parse_section(ctx.section, table)?;
    Ok(Tracer::Metric(Box::new(Qdisc {
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

struct Qdisc {
    host: HostRoot,
    filter: Filter,
    conn: Mutex<Option<RouteConn>>,
}

/// One root qdisc's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QdiscRow {
    pub ifindex: u32,
    pub kind: String,
    pub bytes: u64,
    pub packets: u64,
    pub drops: u64,
    pub requeues: u64,
    pub overlimits: u64,
    pub qlen: u64,
    pub backlog: u64,
}

/// The root qdisc of a message, if it is one worth reporting (root, not `noqueue`). Numbers
/// come from `TCA_STATS2` (basic + queue) where present, else the older `TCA_STATS`.
pub fn root_qdisc(msg: &TcMessage) -> Option<QdiscRow> {
    if msg.header.parent != TcHandle::ROOT || msg.header.index <= 0 {
        return None;
    }
    let mut row = QdiscRow {
        ifindex: msg.header.index as u32,
        ..Default::default()
    };
    let mut stats2 = false;
    for a in &msg.attributes {
        match a {
            TcAttribute::Kind(k) => row.kind = k.clone(),
            TcAttribute::Stats2(s) => {
                for s in s {
                    match s {
                        TcStats2::Basic(b) => {
                            stats2 = true;
                            row.bytes = b.bytes;
                            row.packets = b.packets as u64;
                        }
                        TcStats2::Queue(q) => {
                            stats2 = true;
                            row.qlen = q.qlen as u64;
                            row.backlog = q.backlog as u64;
                            row.drops = q.drops as u64;
                            row.requeues = q.requeues as u64;
                            row.overlimits = q.overlimits as u64;
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !stats2 {
        for a in &msg.attributes {
            if let TcAttribute::Stats(s) = a {
                row.bytes = s.bytes;
                row.packets = s.packets as u64;
                row.drops = s.drops as u64;
                row.overlimits = s.overlimits as u64;
                row.qlen = s.qlen as u64;
                row.backlog = s.backlog as u64;
            }
        }
    }
    (!row.kind.is_empty() && row.kind != "noqueue").then_some(row)
}

/// The root qdiscs the kernel reports.
fn qdiscs(conn: &mut RouteConn) -> Result<Vec<QdiscRow>> {
    let mut rows = Vec::new();
    conn.dump(
        RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
        |m| {
            if let RouteNetlinkMessage::NewQueueDiscipline(t) = m {
                rows.extend(root_qdisc(&t));
            }
        },
    )?;
    Ok(rows)
}

type Family = (&'static str, &'static str, Kind, fn(&QdiscRow) -> u64);

const FAMILIES: [Family; 7] = [
    (
        "bytes_total",
        "Bytes sent through the device's root qdisc.",
        Kind::Counter,
        |r| r.bytes,
    ),
    (
        "packets_total",
        "Packets sent through the device's root qdisc.",
        Kind::Counter,
        |r| r.packets,
    ),
    (
        "drops_total",
        "Packets the root qdisc dropped.",
        Kind::Counter,
        |r| r.drops,
    ),
    (
        "requeues_total",
        "Packets the root qdisc requeued (the driver could not take them).",
        Kind::Counter,
        |r| r.requeues,
    ),
    (
        "overlimits_total",
        "Times the root qdisc throttled or rejected a packet over its limits.",
        Kind::Counter,
        |r| r.overlimits,
    ),
    (
        "current_queue_length",
        "Packets queued in the root qdisc now.",
        Kind::Gauge,
        |r| r.qlen,
    ),
    (
        "backlog",
        "Bytes queued in the root qdisc now.",
        Kind::Gauge,
        |r| r.backlog,
    ),
];

impl Collector for Qdisc {
    fn collect(&self, _ctx: &ScrapeContext, out: &mut MetricSink) -> Result<()> {
        let (names, mut rows) = {
            let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
            if guard.is_none() {
                *guard = RouteConn::open(&self.host)?;
            }
            let Some(conn) = guard.as_mut() else {
                return Ok(());
            };
            let got = conn.links().and_then(|n| Ok((n, qdiscs(conn)?)));
            if got.is_err() {
                // Reopen next time: the socket may hold stale replies.
                *guard = None;
            }
            got?
        };
        rows.retain(|r| {
            names
                .get(&r.ifindex)
                .is_some_and(|n| self.filter.matches(n))
        });
        rows.sort_by_key(|r| r.ifindex);
        for (name, help, kind, get) in FAMILIES {
            out.family(name, help, kind);
            for r in &rows {
                let dev = names.get(&r.ifindex).map(String::as_str).unwrap_or("");
                out.sample(&[("device", dev), ("kind", &r.kind)], get(r) as f64);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_route::tc::{TcStats, TcStatsBasic, TcStatsQueue};

    fn msg(index: i32, parent: TcHandle, attrs: Vec<TcAttribute>) -> TcMessage {
        let mut m = TcMessage::default();
        m.header.index = index;
        m.header.parent = parent;
        m.attributes = attrs;
        m
    }

    #[test]
    fn root_qdiscs_from_stats2_else_stats() {
        let mut basic = TcStatsBasic::default();
        basic.bytes = 1000;
        basic.packets = 10;
        let mut queue = TcStatsQueue::default();
        queue.qlen = 1;
        queue.backlog = 100;
        queue.drops = 2;
        queue.requeues = 3;
        queue.overlimits = 4;
        let mut stats = TcStats::default();
        stats.bytes = 1;
        let mut old_stats = TcStats::default();
        old_stats.bytes = 7;
        old_stats.packets = 1;
        old_stats.drops = 5;
        let m = msg(
            2,
            TcHandle::ROOT,
            vec![
                TcAttribute::Kind("tbf".into()),
                TcAttribute::Stats(stats),
                TcAttribute::Stats2(vec![TcStats2::Basic(basic), TcStats2::Queue(queue)]),
            ],
        );
        assert_eq!(
            root_qdisc(&m),
            Some(QdiscRow {
                ifindex: 2,
                kind: "tbf".into(),
                bytes: 1000,
                packets: 10,
                drops: 2,
                requeues: 3,
                overlimits: 4,
                qlen: 1,
                backlog: 100
            })
        );
        let old = msg(
            3,
            TcHandle::ROOT,
            vec![
                TcAttribute::Kind("pfifo".into()),
                TcAttribute::Stats(old_stats),
            ],
        );
        let r = root_qdisc(&old).unwrap();
        assert_eq!((r.bytes, r.packets, r.drops, r.requeues), (7, 1, 5, 0));
    }

    #[test]
    fn skips_children_noqueue_and_nameless() {
        let child = msg(
            2,
            TcHandle { major: 1, minor: 0 },
            vec![TcAttribute::Kind("pfifo".into())],
        );
        assert_eq!(root_qdisc(&child), None);
        let noq = msg(1, TcHandle::ROOT, vec![TcAttribute::Kind("noqueue".into())]);
        assert_eq!(root_qdisc(&noq), None);
        assert_eq!(root_qdisc(&msg(1, TcHandle::ROOT, vec![])), None);
        let no_dev = msg(0, TcHandle::ROOT, vec![TcAttribute::Kind("mq".into())]);
        assert_eq!(root_qdisc(&no_dev), None);
    }
}
