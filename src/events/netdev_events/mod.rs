//! `netdev_events`: network interface link changes — administratively up/down (`IFF_UP`) and
//! carrier up/down (`IFF_LOWER_UP`) — from an rtnetlink subscription (no BPF).
//!
//! (The name follows HuaTuo's `netdev_events`; `netdev` is the interface-statistics collector.)
//! The tracer dumps the links once to learn their state (not recorded), then records every
//! RTM_NEWLINK that flips the admin or carrier state of a link matching `devices`. The driver
//! name comes from the ethtool GDRVINFO ioctl. Links in the agent's network namespace only.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use netlink_packet_core::{
    Emitable, ErrorBuffer, NetlinkBuffer, NetlinkMessage, NlasIterator, ParseableParametrized,
    NLMSG_ALIGNTO, NLMSG_DONE, NLMSG_ERROR, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkHeader, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;
use serde::{Deserialize, Serialize};

use crate::config::{parse_section, ConfigError, ConfigResult};
use crate::exposition::{Kind, MetricSink};
use crate::tracer::{
    BuildContext, EventTracer, Mode, RunContext, Tracer, TracerError, TracerSpec, TRACERS,
};

// Message types netlink-packet-route keeps private (include/uapi/linux/rtnetlink.h), the
// link multicast group, and the ethtool ioctl (include/uapi/linux/{sockios,ethtool}.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTMGRP_LINK: u32 = 1;
const ETHTOOL_GDRVINFO: u32 = 3;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

const CHANGES: [&str; 4] = ["admin_up", "admin_down", "carrier_up", "carrier_down"];

#[linkme::distributed_slice(TRACERS)]
static SPEC: TracerSpec = TracerSpec {
    name: "netdev_events",
    mode: Mode::Event,
    description:
        "network link changes (rtnetlink): admin and carrier up/down, with ifname, index, driver",
    requires: &[],
    default_enabled: true,
    build,
};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetdevEventsConfig {
    /// Interface names to watch: exact names, or a prefix ending in `*` (`eth*`); empty = all.
    pub devices: Vec<String>,
}

fn build(ctx: &BuildContext, table: &toml::Table) -> ConfigResult<Tracer> {
    let cfg: NetdevEventsConfig = parse_section(ctx.section, table)?;
    for d in &cfg.devices {
        let body = d.strip_suffix('*').unwrap_or(d);
        if body.is_empty() && !d.is_empty() {
            continue; // "*" matches everything
        }
        if body.is_empty() || body.len() > 15 || body.contains(['/', '*', ' ']) {
            return Err(ConfigError(format!(
                "{}.devices: `{d}` is not an interface name or a name prefix ending in `*`",
                ctx.section
            )));
        }
    }
    Ok(Tracer::Event(Box::new(NetdevEvents {
        cfg,
        changes: Default::default(),
        by_device: Default::default(),
        lost: AtomicU64::new(0),
    })))
}

pub struct NetdevEvents {
    cfg: NetdevEventsConfig,
    /// Per entry of CHANGES.
    changes: [AtomicU64; 4],
    /// Per device (name, driver, driver version, firmware version) that changed, per entry of
    /// CHANGES: HuaTuo's `linkstatus_*_total{device,driver,…}` (devices are few: bounded).
    by_device: std::sync::Mutex<std::collections::BTreeMap<[String; 4], [u64; 4]>>,
    /// Times the kernel dropped notifications (socket overrun); states are re-read then.
    lost: AtomicU64,
}

/// One link as an RTM_NEWLINK/RTM_DELLINK message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMsg {
    /// False for RTM_DELLINK.
    pub new: bool,
    pub index: u32,
    pub flags: LinkFlags,
    pub ifname: String,
    pub mac: Option<String>,
}

/// What a buffer of netlink messages held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub links: Vec<LinkMsg>,
    pub done: bool,
    /// errno of an NLMSG_ERROR (0 is an ACK).
    pub error: Option<i32>,
}

/// Parses the netlink messages in one datagram; a truncated message ends it.
pub fn parse_messages(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut off = 0;
    while off < buf.len() {
        let Ok(msg) = NetlinkBuffer::new_checked(&buf[off..]) else {
            break;
        };
        let payload = msg.payload();
        match msg.message_type() {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR => {
                if let Ok(e) = ErrorBuffer::new_checked(payload) {
                    out.error = Some(e.code().map_or(0, |c| -c.get()));
                }
            }
            ty @ (RTM_NEWLINK | RTM_DELLINK) => {
                out.links.extend(parse_link(ty == RTM_NEWLINK, payload))
            }
            _ => {}
        }
        let align = usize::from(NLMSG_ALIGNTO);
        off += (msg.length() as usize).next_multiple_of(align);
    }
    out
}

/// The link of an RTM_NEWLINK/RTM_DELLINK payload. Attributes are decoded one by one and only
/// the name and the address are kept, so one this crate cannot decode does not lose the link.
fn parse_link(new: bool, payload: &[u8]) -> Option<LinkMsg> {
    let header = LinkHeader::parse(payload).ok()?;
    let mut link = LinkMsg {
        new,
        index: header.index,
        flags: header.flags,
        ifname: String::new(),
        mac: None,
    };
    let attributes = payload.get(header.buffer_len()..).unwrap_or_default();
    for nla in NlasIterator::new(attributes) {
        let Ok(nla) = nla else { break };
        match LinkAttribute::parse_with_param(&nla, header.interface_family) {
            Ok(LinkAttribute::IfName(name)) => link.ifname = name,
            Ok(LinkAttribute::Address(a)) if !a.is_empty() => {
                link.mac = Some(
                    a.iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                );
            }
            _ => {}
        }
    }
    Some(link)
}

/// The admin and carrier changes between two flag words, in CHANGES order.
pub fn link_changes(old: LinkFlags, new: LinkFlags) -> Vec<&'static str> {
    let mut out = Vec::new();
    let changed = old ^ new;
    if changed.contains(LinkFlags::Up) {
        out.push(if new.contains(LinkFlags::Up) {
            CHANGES[0]
        } else {
            CHANGES[1]
        });
    }
    if changed.contains(LinkFlags::LowerUp) {
        out.push(if new.contains(LinkFlags::LowerUp) {
            CHANGES[2]
        } else {
            CHANGES[3]
        });
    }
    out
}

fn device_matches(patterns: &[String], name: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => p == name,
        })
}

fn up_down(on: bool) -> &'static str {
    if on {
        "up"
    } else {
        "down"
    }
}

#[derive(Debug, Serialize)]
struct LinkState {
    admin: &'static str,
    carrier: &'static str,
}

impl LinkState {
    fn of(flags: LinkFlags) -> LinkState {
        LinkState {
            admin: up_down(flags.contains(LinkFlags::Up)),
            carrier: up_down(flags.contains(LinkFlags::LowerUp)),
        }
    }
}

#[derive(Debug, Serialize)]
struct NetdevData {
    ifname: String,
    index: u32,
    /// What changed: `admin_up`, `admin_down`, `carrier_up`, `carrier_down`.
    linkstatus: Vec<&'static str>,
    old_state: LinkState,
    new_state: LinkState,
    #[serde(skip_serializing_if = "Option::is_none")]
    mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    driver_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firmware_version: Option<String>,
}

/// struct ethtool_drvinfo (uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

fn cstr(b: &[u8]) -> Option<String> {
    let s = crate::bpf::c_str(b);
    (!s.is_empty()).then_some(s)
}

/// Driver, driver version and firmware version of an interface (ethtool GDRVINFO).
fn driver_info(ifname: &str) -> (Option<String>, Option<String>, Option<String>) {
    let none = (None, None, None);
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return none;
    }
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return none;
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: both are plain-old-data C structs; all-zero is a valid value.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(ifname.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with an ifreq whose data points to a live ethtool_drvinfo, as the
    // ioctl expects; both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc != 0 {
        return none;
    }
    (
        cstr(&info.driver),
        cstr(&info.version),
        cstr(&info.fw_version),
    )
}

/// A NETLINK_ROUTE socket subscribed to link notifications.
fn open_rtnetlink() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: fd is fresh and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-zero is a valid sockaddr_nl.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    addr.nl_groups = RTMGRP_LINK;
    // SAFETY: addr is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("binding the netlink socket");
    }
    // A larger buffer rides out bursts (container churn); overruns are still handled.
    let size: libc::c_int = 1 << 20;
    // SAFETY: valid fd and a c_int option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    Ok(sock)
}

fn request_dump(sock: &OwnedFd, seq: u32) -> Result<()> {
    // A zero link header: AF_UNSPEC, every link.
    let mut msg = NetlinkMessage::from(RouteNetlinkMessage::GetLink(LinkMessage::default()));
    msg.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    msg.header.sequence_number = seq;
    msg.finalize();
    let mut req = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut req);
    // SAFETY: send(2) of a valid buffer on our socket (the kernel is the default destination).
    let rc = unsafe { libc::send(sock.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error()).context("requesting the link dump");
    }
    Ok(())
}

enum Recv {
    Data(usize),
    Empty,
    Overrun,
}

fn recv(sock: &OwnedFd, buf: &mut [u8]) -> Result<Recv> {
    loop {
        // SAFETY: recv(2) into a buffer we own, within its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Recv::Data(n as usize));
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return Ok(Recv::Empty),
            Some(libc::ENOBUFS) => return Ok(Recv::Overrun),
            _ => return Err(err).context("reading the netlink socket"),
        }
    }
}

/// How long the reader sleeps with no notification before it looks again (a bound: a
/// notification or the stop wakes it at once).
const IDLE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn wait_readable(sock: &OwnedFd, timeout_ms: i32) {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
}

impl NetdevEvents {
    /// Dumps all links into `states` (no records); notifications that interleave update too.
    fn load_states(
        &self,
        ctx: &RunContext,
        sock: &OwnedFd,
        buf: &mut [u8],
        seq: u32,
        states: &mut HashMap<u32, LinkFlags>,
    ) -> Result<()> {
        request_dump(sock, seq)?;
        states.clear();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if std::time::Instant::now() > deadline || ctx.stopping() {
                anyhow::bail!("the link dump did not finish");
            }
            match recv(sock, buf)? {
                Recv::Data(n) => {
                    let p = parse_messages(&buf[..n]);
                    for l in p.links {
                        if l.new {
                            states.insert(l.index, l.flags);
                        } else {
                            states.remove(&l.index);
                        }
                    }
                    if let Some(e) = p.error.filter(|&e| e != 0) {
                        return Err(std::io::Error::from_raw_os_error(e))
                            .context("the link dump failed");
                    }
                    if p.done {
                        return Ok(());
                    }
                }
                Recv::Empty => wait_readable(sock, 100),
                // Lost notifications while dumping: start the dump over.
                Recv::Overrun => {
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    request_dump(sock, seq.wrapping_add(1))?;
                    states.clear();
                }
            }
        }
    }

    fn handle(&self, ctx: &RunContext, link: LinkMsg, states: &mut HashMap<u32, LinkFlags>) {
        if !link.new {
            states.remove(&link.index);
            return;
        }
        let old = states.insert(link.index, link.flags);
        // A new link: its state is learned, not reported.
        let Some(old) = old else { return };
        let changes = link_changes(old, link.flags);
        if changes.is_empty() || !device_matches(&self.cfg.devices, &link.ifname) {
            return;
        }
        for c in &changes {
            if let Some(i) = CHANGES.iter().position(|x| x == c) {
                self.changes[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        let (driver, driver_version, firmware_version) = driver_info(&link.ifname);
        {
            let key = [
                link.ifname.clone(),
                driver.clone().unwrap_or_default(),
                driver_version.clone().unwrap_or_default(),
                firmware_version.clone().unwrap_or_default(),
            ];
            let mut by_device = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
            let counts = by_device.entry(key).or_default();
            for c in &changes {
                if let Some(i) = CHANGES.iter().position(|x| x == c) {
                    counts[i] += 1;
                }
            }
        }
        let data = NetdevData {
            ifname: link.ifname,
            index: link.index,
            linkstatus: changes,
            old_state: LinkState::of(old),
            new_state: LinkState::of(link.flags),
            mac: link.mac,
            driver,
            driver_version,
            firmware_version,
        };
        ctx.save_data_at(crate::record::now_ns(), None, &data);
    }
}

impl EventTracer for NetdevEvents {
    fn run(&self, ctx: &RunContext) -> Result<(), TracerError> {
        let sock = open_rtnetlink()?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut states: HashMap<u32, LinkFlags> = HashMap::new();
        let mut seq: u32 = 1;
        self.load_states(ctx, &sock, &mut buf, seq, &mut states)?;
        ctx.attached();
        while !ctx.stopping() {
            match recv(&sock, &mut buf)? {
                Recv::Data(n) => {
                    for link in parse_messages(&buf[..n]).links {
                        self.handle(ctx, link, &mut states);
                    }
                }
                Recv::Empty => ctx.wait_readable(sock.as_fd(), IDLE_WAIT),
                Recv::Overrun => {
                    // Changes in the lost notifications cannot be told; re-learn the states.
                    self.lost.fetch_add(1, Ordering::Relaxed);
                    seq = seq.wrapping_add(2);
                    self.load_states(ctx, &sock, &mut buf, seq, &mut states)?;
                }
            }
        }
        Ok(())
    }

    fn collect(&self, _ctx: &crate::tracer::ScrapeContext, out: &mut MetricSink) -> Result<()> {
        out.family(
            "events_total",
            "Link state changes recorded, by change (admin_up, admin_down, carrier_up, carrier_down).",
            Kind::Counter,
        );
        for (i, c) in CHANGES.iter().enumerate() {
            out.sample(
                &[("change", c)],
                self.changes[i].load(Ordering::Relaxed) as f64,
            );
        }
        // HuaTuo's per-device counters, one family per change.
        let by_device = self.by_device.lock().unwrap_or_else(|e| e.into_inner());
        if !by_device.is_empty() {
            for (i, name) in [
                "linkstatus_adminup_total",
                "linkstatus_admindown_total",
                "linkstatus_carrierup_total",
                "linkstatus_carrierdown_total",
            ]
            .iter()
            .enumerate()
            {
                out.family(
                    name,
                    "Link state changes recorded on a device.",
                    Kind::Counter,
                );
                for (key, counts) in by_device.iter() {
                    out.sample(
                        &[
                            ("device", key[0].as_str()),
                            ("driver", key[1].as_str()),
                            ("driver_version", key[2].as_str()),
                            ("firmware_version", key[3].as_str()),
                        ],
                        counts[i] as f64,
                    );
                }
            }
        }
        drop(by_device);
        out.single(
            "lost_total",
            "Times link notifications were lost (socket overrun) and link states were re-read.",
            Kind::Counter,
            self.lost.load(Ordering::Relaxed) as f64,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams a 6.x kernel sent to an RTMGRP_LINK socket in a fresh network namespace
    /// holding lo and a veth pair (veth1 02:00:00:00:00:2b, index 2; veth0 02:00:00:00:00:2a,
    /// index 3): the link dump, then `ip link set veth0 up`, `ip link set veth1 up` and
    /// `ip link del veth0`.
    fn captured(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/tests/fixtures/netlink/{name}.bin",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn link(new: bool, index: u32, flags: LinkFlags, ifname: &str, mac: &str) -> LinkMsg {
        LinkMsg {
            new,
            index,
            flags,
            ifname: ifname.into(),
            mac: Some(mac.into()),
        }
    }

    #[test]
    fn captured_messages_parse() {
        use LinkFlags as F;
        let dump = parse_messages(&captured("link_dump"));
        assert!(dump.done);
        assert_eq!(dump.error, None);
        assert_eq!(
            dump.links,
            [
                link(true, 1, F::Loopback, "lo", "00:00:00:00:00:00"),
                link(
                    true,
                    2,
                    F::Broadcast | F::Multicast,
                    "veth1",
                    "02:00:00:00:00:2b"
                ),
                link(
                    true,
                    3,
                    F::Broadcast | F::Multicast,
                    "veth0",
                    "02:00:00:00:00:2a"
                ),
            ]
        );

        let up = parse_messages(&captured("admin_up"));
        assert!(!up.done);
        let [veth0] = &up.links[..] else {
            panic!("{up:?}")
        };
        assert_eq!((veth0.index, veth0.ifname.as_str()), (3, "veth0"));
        assert_eq!(veth0.flags, F::Up | F::Broadcast | F::Multicast);

        let carrier = parse_messages(&captured("carrier_up"));
        let last = carrier.links.last().unwrap();
        assert_eq!((carrier.links.len(), last.index), (3, 3));
        assert_eq!(
            link_changes(veth0.flags, last.flags),
            ["carrier_up"],
            "{last:?}"
        );

        let deleted = parse_messages(&captured("deleted"));
        let gone: Vec<(bool, u32)> = deleted.links.iter().map(|l| (l.new, l.index)).collect();
        assert_eq!(gone, [(true, 3), (true, 2), (false, 3), (false, 2)]);

        // Truncated input stops cleanly at the last whole message.
        let buf = captured("link_dump");
        assert_eq!(parse_messages(&buf[..30]).links.len(), 0);
        assert_eq!(parse_messages(&buf[..2000]).links.len(), 1);
    }

    #[test]
    fn errors_and_acks_are_told_apart() {
        let mut msg = vec![0u8; 36];
        msg[0..4].copy_from_slice(&36u32.to_ne_bytes());
        msg[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        msg[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert_eq!(parse_messages(&msg).error, Some(libc::EPERM));
        msg[16..20].copy_from_slice(&0i32.to_ne_bytes());
        assert_eq!(parse_messages(&msg).error, Some(0));
    }

    #[test]
    fn changes_are_named() {
        use LinkFlags as F;
        assert_eq!(link_changes(F::Up, F::empty()), vec!["admin_down"]);
        assert_eq!(
            link_changes(F::empty(), F::Up | F::LowerUp),
            vec!["admin_up", "carrier_up"]
        );
        assert_eq!(
            link_changes(F::Up | F::LowerUp, F::Up),
            vec!["carrier_down"]
        );
        assert!(link_changes(F::Up, F::Up | F::Multicast).is_empty());
    }

    #[test]
    fn device_patterns() {
        let p = vec!["eth*".to_string(), "bond0".to_string()];
        assert!(device_matches(&p, "eth0"));
        assert!(device_matches(&p, "bond0"));
        assert!(!device_matches(&p, "bond1"));
        assert!(device_matches(&[], "anything"));
        let host = crate::host::HostRoot::default();
        let bctx = BuildContext {
            host: &host,
            section: "events.netdev_events",
        };
        let t: toml::Table = toml::from_str("devices = [\"a/b\"]").unwrap();
        let err = build(&bctx, &t).err().unwrap();
        assert!(err.0.contains("events.netdev_events.devices"), "{err}");
    }
}
