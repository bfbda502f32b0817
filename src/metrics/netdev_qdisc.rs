//! `netdev_qdisc`: statistics of each device's root queueing discipline from rtnetlink
//! (`RTM_GETQDISC` dump, HuaTuo's source and names): bytes, packets, drops, requeues,
//! overlimits, queue length and backlog, labelled `{device, kind}`. Host only: the socket lives
//! in the network namespace of the host root's pid 1 (our own where pid 1 is out of reach on
//! the real root; nothing on a host root without one, e.g. a fixture tree). `noqueue` qdiscs
//! are skipped (HuaTuo).

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use netlink_packet_route::tc::{TcAttribute, TcHandle, TcMessage, TcStats2};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::config::filter::Filter;
use crate::config::ConfigResult;
use crate::exposition::{Kind, MetricSink};
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
    conn: Mutex<Option<Conn>>,
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

/// A route netlink socket in the host's network namespace.
struct Conn {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn set_recv_timeout(socket: &Socket, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on a socket we own, with a valid timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const libc::timeval as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setting SO_RCVTIMEO");
    }
    Ok(())
}

/// The file is a namespace (on nsfs), not a plain file standing in for one.
fn is_nsfs(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: statfs with a NUL-terminated path and a buffer of the right type; read only on
    // success, when the kernel filled it.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: rc == 0: the kernel wrote the whole struct. (`f_type`'s width varies by arch.)
    #[allow(clippy::unnecessary_cast)]
    let nsfs = rc == 0 && unsafe { st.assume_init() }.f_type as i64 == NSFS_MAGIC;
    nsfs
}

fn new_socket() -> Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE).context("opening a route netlink socket")?;
    socket.bind_auto().context("binding the netlink socket")?;
    socket
        .connect(&SocketAddr::new(0, 0))
        .context("connecting the netlink socket")?;
    set_recv_timeout(&socket, Duration::from_secs(1))?;
    Ok(socket)
}

impl Conn {
    /// A socket in the network namespace of `host`'s pid 1: ours if it is the same (or pid 1
    /// is out of reach on the real root), else created by a short-lived thread that first
    /// enters it (a socket keeps its namespace). None: a host root with no pid 1 to ask.
    fn open(host: &HostRoot) -> Result<Option<Conn>> {
        use std::os::unix::fs::MetadataExt;
        let target = host.proc("1/ns/net");
        let theirs = match std::fs::metadata(&target) {
            Ok(m) if is_nsfs(&target) => Some(m),
            // A fixture tree's stand-in file is no namespace.
            Ok(_) if !host.is_real_root() => return Ok(None),
            Ok(_) => None,
            Err(_) if host.is_real_root() => None,
            Err(_) => return Ok(None),
        };
        let ours = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?;
        let socket = if theirs.is_none_or(|t| t.ino() == ours.ino() && t.dev() == ours.dev()) {
            new_socket()?
        } else {
            let ns =
                File::open(&target).with_context(|| format!("opening {}", target.display()))?;
            std::thread::spawn(move || -> Result<Socket> {
                // SAFETY: setns(CLONE_NEWNET) moves only this short-lived thread, which ends
                // right after creating the socket; `ns` is an open namespace file.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .context("entering the host network namespace");
                }
                new_socket()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the netns thread panicked"))??
        };
        Ok(Some(Conn {
            socket,
            seq: 0,
            buf: Vec::with_capacity(32 * 1024),
        }))
    }

    /// Sends a dump request and hands every reply message to `each`.
    fn dump(
        &mut self,
        req: RouteNetlinkMessage,
        mut each: impl FnMut(RouteNetlinkMessage),
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let mut msg = NetlinkMessage::from(req);
        msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        msg.header.sequence_number = self.seq;
        msg.finalize();
        self.buf.clear();
        self.buf.resize(msg.buffer_len(), 0);
        msg.serialize(&mut self.buf);
        self.socket
            .send(&self.buf, 0)
            .context("sending the dump request")?;
        // A dump of a few thousand devices fits in far fewer datagrams than this.
        for _ in 0..10_000 {
            self.buf.clear();
            self.buf.reserve(32 * 1024);
            let n = self
                .socket
                .recv(&mut self.buf, 0)
                .context("receiving the dump")?;
            let mut off = 0;
            while off < n.min(self.buf.len()) {
                let m = match NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..]) {
                    Ok(m) => m,
                    Err(e) => bail!("decoding a netlink message: {e}"),
                };
                let len = m.header.length as usize;
                if m.header.sequence_number == self.seq {
                    match m.payload {
                        NetlinkPayload::Done(_) => return Ok(()),
                        NetlinkPayload::Error(e) => {
                            return Err(e.to_io()).context("the kernel refused the dump")
                        }
                        NetlinkPayload::InnerMessage(inner) => each(inner),
                        _ => {}
                    }
                }
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
            }
        }
        bail!("netlink dump did not end")
    }

    fn links(&mut self) -> Result<HashMap<u32, String>> {
        let mut names = HashMap::new();
        self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), |m| {
            if let RouteNetlinkMessage::NewLink(l) = m {
                for a in &l.attributes {
                    if let LinkAttribute::IfName(n) = a {
                        names.insert(l.header.index, n.clone());
                    }
                }
            }
        })?;
        Ok(names)
    }

    fn qdiscs(&mut self) -> Result<Vec<QdiscRow>> {
        let mut rows = Vec::new();
        self.dump(
            RouteNetlinkMessage::GetQueueDiscipline(TcMessage::default()),
            |m| {
                if let RouteNetlinkMessage::NewQueueDiscipline(t) = m {
                    rows.extend(root_qdisc(&t));
                }
            },
        )?;
        Ok(rows)
    }
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
                *guard = Conn::open(&self.host)?;
            }
            let Some(conn) = guard.as_mut() else {
                return Ok(());
            };
            let got = conn.links().and_then(|n| Ok((n, conn.qdiscs()?)));
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
